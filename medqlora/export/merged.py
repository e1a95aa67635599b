"""export.formats merged: the adapter merged into the *dequantized 4-bit base* it was trained on, saved in 16 bits
with the training tokenizer and stop tokens, and checked against the trained model (and, on a GPU, the original
16-bit weights + adapter measured too)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from .. import backends
from ..adapter_loading import load_checked
from ..config import KitConfig
from ..errors import MedQLoRAError
from .base_model import ExportBase
from .checks import compare, folder_gb, free_memory, trained_reference


def export_merged(cfg: KitConfig, adapter: Path, dest: Path, say: Any, base: ExportBase) -> dict[str, Any]:
    runtime = backends.activate(backends.detect(cfg), cfg)
    dtype = _merged_dtype(cfg, runtime)
    say(f"export: scoring {cfg.export.compare_prompts} sample prompts with the base model + adapter "
        f"({'4-bit' if _quantized(cfg, runtime) else runtime.dtype} base, as in training)")
    reference = trained_reference(cfg, runtime, adapter, base.source)
    began = time.perf_counter()
    tokenizer = base.tokenizer
    merged = merge_into_dequantized_base(cfg, runtime, adapter, dtype, base.source)
    _set_stop_tokens(merged, tokenizer)
    _check_disk(dest.parent, merged)
    merged.save_pretrained(dest, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(dest)
    merge_s = round(time.perf_counter() - began, 2)
    del merged
    free_memory()
    say(f"export: merged {dtype} model saved in {merge_s}s; checking it against the base model + adapter")
    figures = {"merged_dtype": dtype, "merge_and_save_s": merge_s, "merged_gb": folder_gb(dest),
               "reference": reference.figures}
    figures["merged_vs_trained"] = compare(reference, _load_plain(dest, runtime, dtype), tokenizer)
    say(f"export: merged vs base+adapter: {figures['merged_vs_trained']}")
    if cfg.export.compare_original and _quantized(cfg, runtime) and not _prequantized(cfg, base.source):
        original = _original_plus_adapter(cfg, runtime, adapter, dtype, base.source)
        figures["original_16bit_plus_adapter_vs_trained"] = compare(reference, original, tokenizer)
        say(f"export: original 16-bit weights + adapter vs base+adapter (why the kit merges into the dequantized "
            f"base): {figures['original_16bit_plus_adapter_vs_trained']}")
    return figures


def _merged_dtype(cfg: KitConfig, runtime: backends.Runtime) -> str:
    return runtime.dtype if cfg.export.merged_dtype == "auto" else cfg.export.merged_dtype


def _quantized(cfg: KitConfig, runtime: backends.Runtime) -> bool:
    return runtime.device == "cuda" and cfg.model.load_in_4bit


def merge_into_dequantized_base(cfg: KitConfig, runtime: backends.Runtime, adapter: Path, dtype: str,
                                source: str) -> Any:
    """Base weights as training saw them (4-bit, dequantized to ``dtype`` on the CPU) with the adapter merged in."""
    # the 4-bit storage is bitsandbytes NF4 with either backend; Unsloth adds nothing to merging
    plain = dataclasses.replace(runtime, backend="hf")
    base, _ = backends.hf_base(cfg, plain, source)
    if getattr(base, "is_loaded_in_4bit", False):
        dequantize_to_cpu(base, backends.torch_dtype(dtype))
    else:
        base.to(device="cpu", dtype=backends.torch_dtype(dtype))
    merged = load_checked(base, adapter).merge_and_unload()
    merged.eval()
    return merged


def dequantize_to_cpu(model: Any, dtype: Any) -> None:
    """Replace every bitsandbytes 4-bit linear layer by a plain one holding its dequantized weights, on the CPU.

    Layer by layer, so the GPU never holds more than the 4-bit model plus one 16-bit matrix (a T4 can merge an 8B).
    """
    import bitsandbytes as bnb
    import torch

    for name, module in list(model.named_modules()):
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                dtype=dtype, device="cpu")
        plain.weight.data = weight.to(device="cpu", dtype=dtype)
        if module.bias is not None:
            plain.bias.data = module.bias.data.to(device="cpu", dtype=dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
        del module, weight
    backends.mark_unquantized(model)  # before moving it: transformers refuses to cast a bitsandbytes model
    model.to(device="cpu", dtype=dtype)
    free_memory()


def _set_stop_tokens(model: Any, tokenizer: Any) -> None:
    """transformers, vLLM and llama.cpp stop where training taught the model to stop."""
    stops = backends.stop_token_ids(tokenizer)
    model.config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = stops
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _load_plain(folder: Path, runtime: backends.Runtime, dtype: str) -> Any:
    from transformers import AutoModelForCausalLM

    device = {"": 0} if runtime.device == "cuda" and _fits_on_gpu(folder) else None
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=backends.torch_dtype(dtype), device_map=device)
    return model.eval()


def _original_plus_adapter(cfg: KitConfig, runtime: backends.Runtime, adapter: Path, dtype: str, source: str) -> Any:
    return load_checked(_load_plain(Path(source), runtime, dtype), adapter).eval()


def _prequantized(cfg: KitConfig, source: str) -> bool:
    """Checkpoints such as unsloth/...-bnb-4bit hold no 16-bit weights to compare with."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    return getattr(config, "quantization_config", None) is not None


def _fits_on_gpu(folder: Path) -> bool:
    import torch

    free, _ = torch.cuda.mem_get_info()
    return folder_gb(folder) * 1e9 * 1.2 < free if folder.is_dir() else True


def _check_disk(folder: Path, model: Any) -> None:
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(folder).free
    if needed * 1.05 > free:
        raise MedQLoRAError(
            f"Exporting the merged model needs about {needed / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB "
            "free. Free some space, or export the adapter alone: --set export.formats=[adapter]."
        )
