"""export.formats gguf_lora: the adapter alone as a llama.cpp LoRA file (llama-cli --lora), read back and checked
against the adapter: every LoRA pair under llama.cpp's tensor name, with the adapter's shapes and scale."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .. import backends, hub, json_text
from ..config import KitConfig
from ..errors import ConfigError, ModelError
from ..secrets import printable
from .adapter import published_config
from .base_model import ExportBase
from .llama_cpp import LLAMA_CPP_HINT, LORA_CONVERTER, gguf_field, llama_cpp_dir, read_gguf, run_tool


def lora_gguf_refusal(adapter: Path) -> None:
    """Adapters llama.cpp cannot apply as they are: DoRA (magnitude vectors) and per-layer ranks or alphas (llama.cpp
    scales every layer by one alpha / rank)."""
    config = json_text.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    found = [key for key in ("use_dora", "rank_pattern", "alpha_pattern") if config.get(key)]
    if found:
        raise ConfigError(f"export.formats gguf_lora: the adapter in {printable(adapter)} uses {', '.join(found)}, "
                          "which a llama.cpp LoRA file cannot express. Export it as gguf (merged into the base model) "
                          "instead: --set export.formats=[adapter,gguf].")


def export_gguf_lora(cfg: KitConfig, adapter: Path, partial: Path, say: Any, base: ExportBase) -> dict[str, Any]:
    """gguf_lora/adapter-<type>.gguf with llama.cpp's convert_lora_to_gguf.py, read back and checked against the
    adapter: every LoRA pair present under llama.cpp's tensor name, with the adapter's shapes, and the same scale."""
    folder = llama_cpp_dir(LORA_CONVERTER)
    if folder is None:
        hint = LLAMA_CPP_HINT.replace(" The merged model is exported meanwhile.", "")
        say(f"export: no GGUF LoRA file ({LORA_CONVERTER} not found). {hint}")
        return {"skipped": f"{LORA_CONVERTER} not found. {hint}"}
    kind = cfg.export.gguf_lora_type
    out = partial / "gguf_lora" / f"adapter-{kind}.gguf"
    out.parent.mkdir()
    staging = partial / ".gguf_lora-input"
    began = time.perf_counter()
    try:
        base_config, lora_input = _lora_converter_inputs(cfg, adapter, staging, base.source)
        run_tool([sys.executable, str(folder / LORA_CONVERTER), "--outfile", str(out), "--outtype", kind,
              "--base", str(base_config), str(lora_input)], LORA_CONVERTER, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    figures = {"file": str(out.relative_to(partial)), "type": kind, "converter": folder.name,
               "convert_s": round(time.perf_counter() - began, 2), "mb": round(out.stat().st_size / 1e6, 3),
               "base_model": backends.public_model_name(cfg.model.name)}
    figures.update(check_gguf_lora(out, adapter))
    say(f"export: GGUF LoRA {figures} (llama.cpp: llama-cli -m BASE.gguf --lora {out.parent.name}/{out.name})")
    return figures


def _lora_converter_inputs(cfg: KitConfig, adapter: Path, staging: Path, source: str) -> tuple[Path, Path]:
    """The base model's config.json alone (all the converter reads of the base) and a copy of the adapter as the
    export publishes it: its adapter_config.json naming the base by its hub id or folder name (the converter writes
    that name, and the base_model of a README.md beside it, into the GGUF file's metadata: never this machine's
    path), a model card naming only a hub id, and for an rsLoRA adapter the lora_alpha that gives llama.cpp's
    alpha / r the scale rsLoRA trained with (alpha / sqrt r)."""
    from transformers import AutoConfig

    staging.mkdir()
    base_config = staging / "base"
    AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code).save_pretrained(base_config)
    config = published_config(adapter / "adapter_config.json", cfg.model.name)
    if config.get("use_rslora"):
        config["lora_alpha"] = _llama_cpp_alpha(adapter)
    lora_input = staging / "adapter"
    lora_input.mkdir()
    (lora_input / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copyfile(adapter / "adapter_model.safetensors", lora_input / "adapter_model.safetensors")
    base = backends.published_base_name(cfg.model.name)
    if hub.is_hub_id(base):
        (lora_input / "README.md").write_text(f"---\nbase_model: {base}\n---\n", encoding="utf-8")
    return base_config, lora_input


def check_gguf_lora(gguf_file: Path, adapter: Path) -> dict[str, Any]:
    """The written file read back with gguf's reader: a LoRA adapter file whose tensors are the adapter's pairs under
    llama.cpp's names (blk.N.attn_q.weight.lora_a ...), each shaped as the adapter's lora_A / lora_B."""
    from safetensors import safe_open

    reader = read_gguf(gguf_file)
    written = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}  # GGUF lists dims reversed
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    names = _llama_cpp_names(gguf_field(reader, "general.architecture"), shapes)
    expected = {}
    for key, shape in shapes.items():
        stem, _, part = key.rpartition(".lora_")
        if stem in names and part in ("A.weight", "B.weight"):
            expected[f"{names[stem]}.lora_{part[0].lower()}"] = shape
        elif stem in names and part in ("embedding_A", "embedding_B"):  # llama.cpp stores token_embd's lora_a [in, r]
            expected[f"{names[stem]}.lora_{part[-1].lower()}"] = shape[::-1] if part == "embedding_A" else shape
    problems = [f"{name}: {written.get(name, 'missing')} (adapter: {shape})" for name, shape in expected.items()
                if written.get(name) != shape]
    problems += [f"unexpected tensor {name}" for name in written.keys() - expected.keys()]
    problems += [f"adapter tensor {key} has no llama.cpp name" for key in shapes  # base_layer: PEFT's copy of the
                 if key.rpartition(".lora_")[0] not in names and not key.endswith(".base_layer.weight")]  # embedding
    alpha = gguf_field(reader, "adapter.lora.alpha")
    if alpha is None or abs(alpha - _llama_cpp_alpha(adapter)) > 1e-4 * abs(_llama_cpp_alpha(adapter)):
        problems.append(f"alpha {alpha}, expected {_llama_cpp_alpha(adapter)}")
    kind = (gguf_field(reader, "general.type"), gguf_field(reader, "adapter.type"))
    if problems or kind != ("adapter", "lora"):
        raise ModelError(f"The GGUF LoRA file {printable(gguf_file)} does not hold the adapter as trained "
                         f"(type {kind}, alpha {alpha}; {printable('; '.join(problems[:5]), 600)}). Report this with "
                         "the adapter's adapter_config.json.")
    return {"tensors": len(written), "lora_alpha": round(float(alpha), 4), "names_and_shapes_match": True}


def _llama_cpp_alpha(adapter: Path) -> float:
    """The alpha that makes llama.cpp's scale (alpha / r) the adapter's: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    config = json_text.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    return config["lora_alpha"] * (config["r"] ** 0.5 if config.get("use_rslora") else 1)


def _llama_cpp_names(architecture: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """adapter module path (base_model.model.model.layers.0.self_attn.q_proj) -> llama.cpp tensor (blk.0.attn_q.weight)."""
    import re

    import gguf

    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    blocks = 1 + max((int(n) for n in re.findall(r"\.layers\.(\d+)\.", " ".join(shapes))), default=0)
    if arch is None:
        return {}
    table = gguf.get_tensor_name_map(arch, blocks)
    names = {}
    for key in shapes:
        stem = key.rpartition(".lora_")[0]
        mapped = table.get_name(stem.removeprefix("base_model.model.") + ".weight", try_suffixes=(".weight",))
        if mapped:
            names[stem] = mapped
    return names
