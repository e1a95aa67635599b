"""--mode export: the adapter alone, a merged 16-bit model, and GGUF, each checked against training.

The merged model is built from the *dequantized 4-bit base* the adapter was trained on, not from a
separate 16-bit download: QLoRA learned a correction to the quantized weights, so merging it into
the original weights gives a slightly different model. Both differences are measured and reported.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import adapters, backends, hub
from .config import KitConfig
from .progress import bar
from .data import query_prompt, render_prompt
from .errors import ConfigError, MedQLoRAError, ModelError
from .generate import load_queries
from .messages import log
from .runs import RunDir
from .secrets import printable

LLAMA_CPP_HINT = (
    "GGUF export uses llama.cpp's converter. Get it with: git clone https://github.com/ggml-org/llama.cpp "
    "and set LLAMA_CPP_DIR to that folder (or run: python -m medqlora.export --fetch-llama-cpp, which takes "
    "the converter from the llama-cpp-python source package on PyPI). The merged model is exported meanwhile."
)


@dataclass
class Reference:
    """What the trained model (base + adapter, as in training) answers: the yardstick of every export."""

    prompts: list[str]
    logits: list[Any]  # float32 CPU tensors, one [tokens, vocab] per prompt
    greedy: list[list[int]]
    figures: dict[str, Any] = field(default_factory=dict)


def run_export(cfg: KitConfig, adapter: Path, say: Any, run: RunDir | None = None) -> dict[str, Any]:
    """Write <run>/export/ (a new export-N folder if one exists) from an adapter. run: where to write (the
    adapter's own run folder, or a new one for a foreign adapter); by default the adapter's parent."""
    run = run or RunDir(adapter.parent)
    sources = check_before_export(cfg, adapter)
    partial = run.fresh_dir(".export.partial")  # a leftover of an export that was killed is removed first
    try:
        return _export_into(cfg, adapter, say, run, set(cfg.export.formats), sources, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a half-written export is worth nothing
        raise


def check_before_export(cfg: KitConfig, adapter: Path) -> list[Path]:
    """What an export refuses before it writes or loads anything (its --dry-run runs these same checks): a link in
    the adapter folder, a LLAMA_CPP_DIR without the converter a GGUF format runs, an adapter llama.cpp cannot apply,
    export.push_to_hub without a token. Returns the adapter's files an adapter export copies."""
    formats = set(cfg.export.formats)
    sources = adapter_files(adapter) if "adapter" in formats else []
    if formats & {"gguf", "gguf_lora"}:
        found = llama_cpp_dir(*converters_for(formats))  # a LLAMA_CPP_DIR without the converter stops here
        if formats == {"gguf_lora"} and found is None:
            hint = LLAMA_CPP_HINT.replace(" The merged model is exported meanwhile.", "")
            raise ConfigError(f"export.formats [gguf_lora]: nothing would be exported, as {LORA_CONVERTER} is not "
                              f"found (LLAMA_CPP_DIR, ./llama.cpp, ~/llama.cpp, the kit's cache). {hint} Or export "
                              "another format beside it: --set export.formats=[adapter,gguf_lora].")
    if "gguf_lora" in formats:
        lora_gguf_refusal(adapter)
    if cfg.export.push_to_hub:
        hub.token()  # no token: stopped before the work, not after it
    return sources


def _export_into(cfg: KitConfig, adapter: Path, say: Any, run: RunDir, formats: set[str], sources: list[Path],
                 partial: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"adapter": str(adapter), "base_model": cfg.model.name, "formats": sorted(formats)}
    if "adapter" in formats:
        said = _export_adapter(cfg, adapter, sources, run, ".export.partial/adapter")
        say(f"export: adapter with {said} and model card -> {partial.name}/adapter")
    if formats & {"merged", "gguf"}:
        report.update(_export_merged(cfg, adapter, run.inside(".export.partial/merged"), say))
    if "gguf" in formats:
        report["gguf"] = _export_gguf(cfg, partial, say)
        if "file" in report["gguf"]:
            report["gguf"]["modelfile"] = _write_modelfile(cfg, run, partial, report["gguf"]["file"], say)
    if "gguf_lora" in formats:
        report["gguf_lora"] = export_gguf_lora(cfg, adapter, partial, say)
    if cfg.export.push_to_hub:
        run.write_text(".export.partial/README.md", hub.model_card(cfg, run, report))
    run.write_json(".export.partial/export_report.json", report)
    run.write_text(".export.partial/export_report.md", report_markdown(report))
    final = run.inside(run.unique("export"))
    partial.rename(final)
    say(f"export written: {printable(final)}")
    summary = {"run_dir": str(run.path), "export_dir": str(final), "export": _summary_line(report)}
    if cfg.export.push_to_hub:
        summary["hub"] = hub.push(cfg.export.push_to_hub, final, cfg.export.hub_private, say)
    return summary


# ---------------------------------------------------------------- adapter


def adapter_files(adapter: Path) -> list[Path]:
    """The files an adapter export copies: regular files directly in the adapter folder. A link, or anything whose
    real path is elsewhere, stops the export (it could copy a file from outside into a shared folder)."""
    folder = adapter.resolve()
    files, refused = [], []
    for entry in sorted(adapter.iterdir()):
        if entry.is_symlink() or not entry.resolve().is_relative_to(folder):
            refused.append(entry.name)
        elif entry.is_file():
            files.append(entry)
    if refused:
        raise MedQLoRAError(
            f"The adapter folder {printable(adapter)} holds {printable(', '.join(refused), 120)}, a symbolic link "
            "(or a file that lives elsewhere); an export copies only the adapter's own files. Remove the link, or "
            "copy the adapter with its files into a new folder (cp -rL), and export that."
        )
    return files


def _export_adapter(cfg: KitConfig, adapter: Path, sources: list[Path], run: RunDir, dest: str) -> str:
    """The adapter's files and a model card; where the adapter folder lacks a tokenizer with its chat template, the
    base model's (the one training used) is saved with it, and the returned description says so."""
    for source in sources:
        if source.name == "adapter_config.json":  # names the base as another machine finds it
            config = json.loads(source.read_text())
            config["base_model_name_or_path"] = backends.portable_base_name(cfg.model.name)
            run.write_json(f"{dest}/{source.name}", config)
        else:
            run.copy_in(source, f"{dest}/{source.name}")
    said = "its tokenizer and chat template"
    if not has_tokenizer(adapter):
        _adapter_tokenizer(cfg, adapter).save_pretrained(str(run.inside(dest)))
        said = (f"the tokenizer and chat template of the base model {printable(cfg.model.name)} (the adapter folder "
                "has none)")
    run.write_text(
        f"{dest}/README.md",
        f"# LoRA adapter for {printable(cfg.model.name)}\n\nTrained with medqlora (QLoRA r={cfg.lora.r}, "
        f"alpha={cfg.lora.alpha}, on {printable(', '.join(cfg.lora.target_modules))}). Load it on the base model it "
        "was trained on:\n\n"
        "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(\"<this folder>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")  # chat template used in training\n```\n\n"
        "Research use only; not medical advice.\n",
    )
    return said


# ---------------------------------------------------------------- merged


def _export_merged(cfg: KitConfig, adapter: Path, dest: Path, say: Any) -> dict[str, Any]:
    runtime = backends.activate(backends.detect(cfg), cfg)
    dtype = _merged_dtype(cfg, runtime)
    say(f"export: scoring {cfg.export.compare_prompts} sample prompts with the base model + adapter "
        f"({'4-bit' if _quantized(cfg, runtime) else dtype} base, as in training)")
    reference = trained_reference(cfg, runtime, adapter)
    began = time.perf_counter()
    tokenizer = _adapter_tokenizer(cfg, adapter)
    merged = merge_into_dequantized_base(cfg, runtime, adapter, dtype)
    _set_stop_tokens(merged, tokenizer)
    _check_disk(dest.parent, merged)
    merged.save_pretrained(dest, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(dest)
    merge_s = round(time.perf_counter() - began, 2)
    del merged
    _free()
    say(f"export: merged {dtype} model saved in {merge_s}s; checking it against the base model + adapter")
    figures = {"merged_dtype": dtype, "merge_and_save_s": merge_s, "merged_gb": _folder_gb(dest),
               "reference": reference.figures}
    figures["merged_vs_trained"] = compare(reference, _load_plain(dest, runtime, dtype), tokenizer)
    say(f"export: merged vs base+adapter: {figures['merged_vs_trained']}")
    if cfg.export.compare_original and _quantized(cfg, runtime) and not _prequantized(cfg):
        original = _original_plus_adapter(cfg, runtime, adapter, dtype)
        figures["original_16bit_plus_adapter_vs_trained"] = compare(reference, original, tokenizer)
        say(f"export: original 16-bit weights + adapter vs base+adapter (why the kit merges into the dequantized "
            f"base): {figures['original_16bit_plus_adapter_vs_trained']}")
    return figures


def _merged_dtype(cfg: KitConfig, runtime: backends.Runtime) -> str:
    return runtime.dtype if cfg.export.merged_dtype == "auto" else cfg.export.merged_dtype


def _quantized(cfg: KitConfig, runtime: backends.Runtime) -> bool:
    return runtime.device == "cuda" and cfg.model.load_in_4bit


def trained_reference(cfg: KitConfig, runtime: backends.Runtime, adapter: Path) -> Reference:
    """Logits and greedy tokens of the model exactly as trained (4-bit base + adapter on a GPU)."""
    began = time.perf_counter()
    model, tokenizer = backends.load_for_inference(cfg, runtime, adapter)
    questions = load_queries(cfg.generation.queries_file)[: cfg.export.compare_prompts]
    prompts = [render_prompt(tokenizer, *query_prompt(cfg.data, q["question"])) for q in questions]
    logits, greedy = _score(model, tokenizer, prompts, cfg.export.compare_tokens)
    figures = {"load_and_score_s": round(time.perf_counter() - began, 2), "prompts": len(prompts)}
    del model
    _free()
    return Reference(prompts, logits, greedy, figures)


def _score(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> tuple[list[Any], list[list[int]]]:
    """Per prompt: the logits over the prompt and the greedy continuation (one at a time: no padding effects)."""
    import torch

    stops = backends.stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    logits, greedy = [], []
    with bar(len(prompts), "checking the export") as progress:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            with torch.inference_mode():
                logits.append(model(input_ids=ids).logits[0].float().cpu())
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            greedy.append(out[0, ids.shape[1]:].tolist())
            progress.update(1)
    return logits, greedy


def compare(reference: Reference, model: Any, tokenizer: Any) -> dict[str, Any]:
    """How far a model is from the trained one: logit differences, top-1 agreement, identical greedy replies."""
    import torch

    logits, greedy = _score(model, tokenizer, reference.prompts, max(len(g) for g in reference.greedy))
    del model
    _free()
    diffs = [(a - b).abs() for a, b in zip(logits, reference.logits, strict=True)]
    top1 = [(a.argmax(-1) == b.argmax(-1)).float().mean().item() for a, b in zip(logits, reference.logits, strict=True)]
    same = sum(g[: len(r)] == r for g, r in zip(greedy, reference.greedy, strict=True))
    scale = max(r.abs().max().item() for r in reference.logits)
    return {
        "max_abs_logit_diff": round(max(d.max().item() for d in diffs), 5),
        "mean_abs_logit_diff": round(torch.cat([d.flatten() for d in diffs]).mean().item(), 6),
        "largest_logit": round(scale, 3),
        "top1_agreement_percent": round(100 * sum(top1) / len(top1), 2),
        "identical_greedy_replies": f"{same}/{len(greedy)}",
        "first_divergence": _first_divergence(greedy, reference.greedy),
    }


def _first_divergence(greedy: list[list[int]], expected: list[list[int]]) -> list[int | None]:
    found: list[int | None] = []
    for g, r in zip(greedy, expected, strict=True):
        found.append(next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), None if g[: len(r)] == r else len(g)))
    return found


def merge_into_dequantized_base(cfg: KitConfig, runtime: backends.Runtime, adapter: Path, dtype: str) -> Any:
    """Base weights as training saw them (4-bit, dequantized to ``dtype`` on the CPU) with the adapter merged in."""
    from peft import PeftModel

    # the 4-bit storage is bitsandbytes NF4 with either backend; Unsloth adds nothing to merging
    plain = dataclasses.replace(runtime, backend="hf")
    base, _ = backends.hf_base(cfg, plain, backends.resolve_model_source(cfg.model.name))
    if getattr(base, "is_loaded_in_4bit", False):
        dequantize_to_cpu(base, backends.torch_dtype(dtype))
    else:
        base.to(device="cpu", dtype=backends.torch_dtype(dtype))
    loaded = PeftModel.from_pretrained(base, str(adapter))
    adapters.check_loaded(loaded, adapter)
    merged = loaded.merge_and_unload()
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
    _free()


def has_tokenizer(adapter: Path) -> bool:
    """Whether the adapter folder holds a tokenizer with its chat template (as training saves it)."""
    config = adapter / "tokenizer_config.json"
    if not config.is_file():
        return False
    if (adapter / "chat_template.jinja").is_file() or (adapter / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _adapter_tokenizer(cfg: KitConfig, adapter: Path) -> Any:
    """The tokenizer saved with the adapter (the chat template and eos used in training); the base model's, which
    training used, when the adapter folder has none or lacks its chat template."""
    source = adapter if has_tokenizer(adapter) else backends.resolve_model_source(cfg.model.name)
    return backends.load_tokenizer(cfg, str(source))


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


def _original_plus_adapter(cfg: KitConfig, runtime: backends.Runtime, adapter: Path, dtype: str) -> Any:
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(_load_plain(Path(backends.resolve_model_source(cfg.model.name)), runtime, dtype),
                                       str(adapter))
    adapters.check_loaded(loaded, adapter)
    return loaded.eval()


def _prequantized(cfg: KitConfig) -> bool:
    """Checkpoints such as unsloth/...-bnb-4bit hold no 16-bit weights to compare with."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backends.resolve_model_source(cfg.model.name))
    return getattr(config, "quantization_config", None) is not None


def _fits_on_gpu(folder: Path) -> bool:
    import torch

    free, _ = torch.cuda.mem_get_info()
    return _folder_gb(folder) * 1e9 * 1.2 < free if folder.is_dir() else True


def _check_disk(folder: Path, model: Any) -> None:
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(folder).free
    if needed * 1.05 > free:
        raise MedQLoRAError(
            f"Exporting the merged model needs about {needed / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB "
            "free. Free some space, or export the adapter alone: --set export.formats=[adapter]."
        )


def _folder_gb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9, 3)


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- GGUF


GGUF_CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"


def converters_for(formats: set[str]) -> tuple[str, ...]:
    """llama.cpp's scripts the GGUF formats among ``formats`` run (gguf: the model's, gguf_lora: the adapter's)."""
    return tuple(script for fmt, script in (("gguf", GGUF_CONVERTER), ("gguf_lora", LORA_CONVERTER)) if fmt in formats)


def llama_cpp_dir(*converters: str) -> Path | None:
    """A llama.cpp checkout (or its converters alone) holding ``converters`` (by default convert_hf_to_gguf.py):
    LLAMA_CPP_DIR, ./llama.cpp, ~/llama.cpp, Unsloth's copy. A LLAMA_CPP_DIR that is set is the one used: one that
    is no folder with the converters is refused, not passed over."""
    converters = converters or (GGUF_CONVERTER,)
    named = os.environ.get("LLAMA_CPP_DIR")
    if named:
        folder = Path(named).expanduser()
        missing = [script for script in converters if not (folder / script).is_file()]
        if missing:
            older = (folder / GGUF_CONVERTER).is_file()  # a checkout from before the LoRA converter
            what = ("is a file, not a folder" if folder.is_file() else "does not exist" if not folder.exists()
                    else f"holds no {' and no '.join(missing)}" + (" (an older llama.cpp checkout: update it with "
                                                                   "git pull)" if older else ""))
            raise ConfigError(f"LLAMA_CPP_DIR={printable(named, 200)} {what}: it must name a llama.cpp checkout "
                              f"(the folder with {' and '.join(converters)}). Fix it, or unset LLAMA_CPP_DIR to use "
                              "the converter the kit finds itself.")
        return folder
    candidates = ["llama.cpp", "~/llama.cpp", "~/.unsloth/llama.cpp", str(backends.CACHE_DIR / "llama.cpp")]
    for candidate in filter(None, candidates):
        folder = Path(candidate).expanduser()
        if all((folder / script).is_file() for script in converters):
            return folder
    return None


def _export_gguf(cfg: KitConfig, partial: Path, say: Any) -> dict[str, Any]:
    folder = llama_cpp_dir()
    if folder is None:
        say(f"export: no GGUF file. {LLAMA_CPP_HINT}")
        return {"skipped": LLAMA_CPP_HINT}
    say(f"export: GGUF with llama.cpp's converter in {printable(folder)}")
    kind = cfg.export.gguf_type
    direct = kind in ("q8_0", "f16", "bf16", "f32")
    out = partial / "gguf" / f"model-{kind}.gguf"
    out.parent.mkdir()
    began = time.perf_counter()
    first = out if direct else out.with_name("model-f16.gguf")
    _run([sys.executable, str(folder / "convert_hf_to_gguf.py"), str(partial / "merged"), "--outfile", str(first),
          "--outtype", kind if direct else "f16"], "convert_hf_to_gguf.py")
    if not direct:
        quantize = _llama_quantize(folder)
        if quantize is None:
            say(f"export: {kind} needs llama.cpp's llama-quantize (build llama.cpp); kept the f16 GGUF.")
            out = first
        else:
            _run([str(quantize), str(first), str(out), kind.upper()], "llama-quantize")
            first.unlink()
    figures = {"file": str(out.relative_to(partial)), "type": kind if out.name.endswith(f"{kind}.gguf") else "f16",
               "converter": str(folder), "convert_s": round(time.perf_counter() - began, 2),
               "gb": round(out.stat().st_size / 1e9, 3)}
    figures.update(check_gguf_metadata(out, partial / "merged"))
    say(f"export: GGUF {figures}")
    return figures


def _write_modelfile(cfg: KitConfig, run: RunDir, partial: Path, gguf_file: str, say: Any) -> str:
    """An Ollama Modelfile beside the GGUF file, whose TEMPLATE renders the training chat template."""
    from transformers import AutoTokenizer

    from . import ollama

    tokenizer = AutoTokenizer.from_pretrained(str(partial / "merged"))
    gguf = Path(gguf_file)
    try:
        text = ollama.modelfile(gguf.name, tokenizer, query_prompt(cfg.data, "")[0])
    except ollama.TemplateNotPortable as err:
        reason = (f"not written: {err}; Ollama reads the chat template stored in the GGUF file instead "
                  "(check it with a test conversation)")
        say(f"export: no Ollama Modelfile, {reason}")
        return reason
    if ollama.trims_messages(tokenizer):
        say("export: note: the chat template strips spaces around each message and the Modelfile's TEMPLATE "
            "cannot; a message that starts or ends with spaces keeps them under Ollama")
    run.write_text(f".export.partial/{gguf.parent}/Modelfile", text)
    say(f"export: Ollama Modelfile -> {gguf.parent}/Modelfile (ollama create NAME -f {gguf.parent}/Modelfile)")
    return str(gguf.parent / "Modelfile")


def _llama_quantize(folder: Path) -> Path | None:
    for candidate in (folder / "build" / "bin" / "llama-quantize", folder / "llama-quantize"):
        if candidate.is_file():
            return candidate
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def _run(command: list[str], name: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.error("%s failed: %s", name, done.stderr[-4000:])
        raise ModelError(f"{name} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}\n{LLAMA_CPP_HINT}")


def check_gguf_metadata(gguf_file: Path, merged: Path) -> dict[str, Any]:
    """The GGUF must carry the training chat template and end-of-turn token, or llama.cpp output is garbled."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    reader = GGUFReader(str(gguf_file))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    template = _gguf_field(reader, "tokenizer.chat_template")
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    checks = {"chat_template_matches": template == tokenizer.chat_template,
              "eos_matches": eos in backends.stop_token_ids(tokenizer)}
    if not all(checks.values()):
        raise ModelError(f"The GGUF file {gguf_file} does not carry the training chat template or eos token "
                         f"({checks}); llama.cpp would produce garbled replies. Report this with the run's files.")
    return checks


def _gguf_field(reader: Any, key: str) -> Any:
    item = reader.fields.get(key)
    return None if item is None else item.contents()


# ---------------------------------------------------------------- GGUF LoRA (the adapter alone, for llama.cpp --lora)

def lora_gguf_refusal(adapter: Path) -> None:
    """Adapters llama.cpp cannot apply as they are: DoRA (magnitude vectors) and per-layer ranks or alphas (llama.cpp
    scales every layer by one alpha / rank)."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    found = [key for key in ("use_dora", "rank_pattern", "alpha_pattern") if config.get(key)]
    if found:
        raise ConfigError(f"export.formats gguf_lora: the adapter in {printable(adapter)} uses {', '.join(found)}, "
                          "which a llama.cpp LoRA file cannot express. Export it as gguf (merged into the base model) "
                          "instead: --set export.formats=[adapter,gguf].")


def export_gguf_lora(cfg: KitConfig, adapter: Path, partial: Path, say: Any) -> dict[str, Any]:
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
        base_config, lora_input = _lora_converter_inputs(cfg, adapter, staging)
        _run([sys.executable, str(folder / LORA_CONVERTER), "--outfile", str(out), "--outtype", kind,
              "--base", str(base_config), str(lora_input)], LORA_CONVERTER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    figures = {"file": str(out.relative_to(partial)), "type": kind, "converter": str(folder),
               "convert_s": round(time.perf_counter() - began, 2), "mb": round(out.stat().st_size / 1e6, 3),
               "base_model": backends.portable_base_name(cfg.model.name)}
    figures.update(check_gguf_lora(out, adapter))
    say(f"export: GGUF LoRA {figures} (llama.cpp: llama-cli -m BASE.gguf --lora {out.parent.name}/{out.name})")
    return figures


def _lora_converter_inputs(cfg: KitConfig, adapter: Path, staging: Path) -> tuple[Path, Path]:
    """The base model's config.json alone (all the converter reads of the base) and the adapter folder; for an
    rsLoRA adapter a copy whose lora_alpha gives llama.cpp's alpha / r the scale rsLoRA trained with (alpha / sqrt r)."""
    from transformers import AutoConfig

    staging.mkdir()
    base_config = staging / "base"
    source = backends.resolve_model_source(cfg.model.name)
    AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code).save_pretrained(base_config)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("use_rslora"):
        return base_config, adapter
    lora_input = staging / "adapter"
    lora_input.mkdir()
    config["lora_alpha"] = _llama_cpp_alpha(adapter)
    (lora_input / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copyfile(adapter / "adapter_model.safetensors", lora_input / "adapter_model.safetensors")
    return base_config, lora_input


def check_gguf_lora(gguf_file: Path, adapter: Path) -> dict[str, Any]:
    """The written file read back with gguf's reader: a LoRA adapter file whose tensors are the adapter's pairs under
    llama.cpp's names (blk.N.attn_q.weight.lora_a ...), each shaped as the adapter's lora_A / lora_B."""
    import gguf
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(gguf_file))
    written = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}  # GGUF lists dims reversed
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    names = _llama_cpp_names(_gguf_field(reader, "general.architecture"), shapes)
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
    alpha = _gguf_field(reader, "adapter.lora.alpha")
    if alpha is None or abs(alpha - _llama_cpp_alpha(adapter)) > 1e-4 * abs(_llama_cpp_alpha(adapter)):
        problems.append(f"alpha {alpha}, expected {_llama_cpp_alpha(adapter)}")
    kind = (_gguf_field(reader, "general.type"), _gguf_field(reader, "adapter.type"))
    if problems or kind != ("adapter", "lora"):
        raise ModelError(f"The GGUF LoRA file {printable(gguf_file)} does not hold the adapter as trained "
                         f"(type {kind}, alpha {alpha}; {printable('; '.join(problems[:5]), 600)}). Report this with "
                         "the adapter's adapter_config.json.")
    return {"tensors": len(written), "lora_alpha": round(float(alpha), 4), "names_and_shapes_match": True}


def _llama_cpp_alpha(adapter: Path) -> float:
    """The alpha that makes llama.cpp's scale (alpha / r) the adapter's: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
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


def fetch_llama_cpp_converter(target: Path = backends.CACHE_DIR / "llama.cpp") -> Path:
    """llama.cpp's converter (and the gguf-py it was written for) from the llama-cpp-python source package."""
    import tarfile
    import tempfile

    if (target / "convert_hf_to_gguf.py").is_file() and (target / LORA_CONVERTER).is_file():
        return target
    if target.parent == backends.CACHE_DIR:
        backends.check_cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "llama-cpp-python==0.3.36", "--no-deps",
                        "--no-binary", ":all:", "-d", tmp], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive) as tar:
            prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
            wanted = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile() and (
                m.name.endswith(("convert_hf_to_gguf.py", LORA_CONVERTER)) or "/conversion/" in m.name
                or "/gguf-py/" in m.name or m.name.endswith("LICENSE"))]
            for member in wanted:
                member.name = member.name.removeprefix(prefix)
            tar.extractall(partial, members=wanted, filter="data")
        if target.is_dir() and target.parent == backends.CACHE_DIR:  # an earlier fetch without the LoRA converter
            shutil.rmtree(target)
        partial.rename(target)
    return target


# ---------------------------------------------------------------- report


def report_markdown(report: dict[str, Any]) -> str:
    formats = ", ".join(report["formats"])
    lines = [f"# Export of {printable(report['adapter'])}", "",
             f"Base model: {printable(report['base_model'])}; formats: {formats}.", ""]
    if "merged_dtype" in report:
        header = ("| compared with the trained model (base + adapter) | max abs logit diff | mean abs logit diff | "
                  "top-1 agreement | identical greedy replies |")
        written = f"Merged {report['merged_dtype']} model ({report['merged_gb']} GB) written in {report['merge_and_save_s']} s."
        lines += [written, "", header, "|---|---|---|---|---|"]
        for key, label in (("merged_vs_trained", "merged (dequantized base + adapter)"),
                           ("original_16bit_plus_adapter_vs_trained", "original 16-bit weights + adapter")):
            if key in report:
                c = report[key]
                lines.append(f"| {label} | {c['max_abs_logit_diff']} | {c['mean_abs_logit_diff']} | "
                             f"{c['top1_agreement_percent']}% | {c['identical_greedy_replies']} |")
        lines.append("")
    if "gguf" in report:
        lines += [f"GGUF: {json.dumps(report['gguf'])}", ""]
    if "gguf_lora" in report:
        lines += [f"GGUF LoRA: {json.dumps(report['gguf_lora'])}", ""]
    return "\n".join(lines)


def _summary_line(report: dict[str, Any]) -> str:
    parts = [", ".join(report["formats"])]
    if "merged_vs_trained" in report:
        c = report["merged_vs_trained"]
        parts.append(f"merged vs trained: max |logit diff| {c['max_abs_logit_diff']}, greedy replies identical "
                     f"{c['identical_greedy_replies']}")
    if "gguf" in report:
        parts.append(f"gguf: {report['gguf'].get('file', 'skipped (llama.cpp not found)')}")
    if "gguf_lora" in report:
        parts.append(f"gguf_lora: {report['gguf_lora'].get('file', 'skipped (llama.cpp not found)')}")
    return "; ".join(parts)


def main() -> None:
    if sys.argv[1:] == ["--fetch-llama-cpp"]:
        print(fetch_llama_cpp_converter())
    else:
        print("usage: python -m medqlora.export --fetch-llama-cpp")


if __name__ == "__main__":
    main()
