"""--mode export: the adapter alone, a merged 16-bit model, and GGUF, each checked against training.

The merged model is built from the *dequantized 4-bit base* the adapter was trained on, not from a
separate 16-bit download: QLoRA learned a correction to the quantized weights, so merging it into
the original weights gives a slightly different model. Both differences are measured and reported.

    adapter.py     export.formats adapter: the adapter's files, tokenizer and model card
    merged.py      export.formats merged: merged into the dequantized base, saved, checked
    gguf_model.py  export.formats gguf: the merged model through llama.cpp, an Ollama Modelfile
    gguf_lora.py   export.formats gguf_lora: the adapter alone as a llama.cpp LoRA file
    llama_cpp.py   llama.cpp's converters found, fetched and run
    checks.py      the trained model's logits and greedy replies, and an export compared with them
    base_model.py  the base model resolved, and the training tokenizer loaded, once per export
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .. import backends, hub
from ..adapter_origin import origin_name
from ..config import KitConfig
from ..errors import ConfigError, ModelError
from ..report import export_report_markdown, model_card
from ..run_commands import kit_command
from ..runs import Files, RunDir
from ..secrets import printable
from .adapter import adapter_files, export_adapter
from .base_model import ExportBase, has_tokenizer
from .checks import Reference, compare, trained_reference
from .gguf_lora import check_gguf_lora, export_gguf_lora, lora_gguf_refusal
from .gguf_model import check_gguf_metadata, export_gguf, write_modelfile
from .llama_cpp import (
    LLAMA_CPP_HINT,
    LORA_CONVERTER,
    converters_for,
    fetch_llama_cpp_converter,
    llama_cpp_dir,
    quantizer_for,
)
from .merged import dequantize_to_cpu, export_merged, merge_into_dequantized_base

__all__ = [
    "LLAMA_CPP_HINT", "ExportBase", "Reference", "adapter_files", "check_before_export", "check_gguf_lora", "check_gguf_metadata",
    "compare", "converters_for", "dequantize_to_cpu", "export_gguf_lora", "fetch_llama_cpp_converter", "has_tokenizer", "llama_cpp_dir",
    "lora_gguf_refusal", "merge_into_dequantized_base", "run_export", "trained_reference",
]


def run_export(cfg: KitConfig, adapter: Path, say: Any, run: RunDir | None = None) -> dict[str, Any]:
    """Write <run>/export/ (a new export-<time> folder if one exists) from an adapter. run: where to write (the
    adapter's own run folder, or a new one for a foreign adapter); by default the adapter's parent."""
    run = run or RunDir(adapter.parent)
    sources = check_before_export(cfg, adapter)
    partial = run.fresh_dir(Files.EXPORT_PARTIAL)  # a leftover of an export that was killed is removed first
    try:
        return _export_into(cfg, adapter, say, run, sources, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a half-written export is worth nothing
        raise


def check_before_export(cfg: KitConfig, adapter: Path) -> list[Path]:
    """What an export refuses before it writes or loads anything (its --dry-run runs these same checks): a link in
    the adapter folder, a LLAMA_CPP_DIR without the converter a GGUF format runs, an export.gguf_type that needs a
    llama-quantize that is not found, an adapter llama.cpp cannot apply, export.push_to_hub without a token. Returns
    the adapter's files an adapter export copies."""
    formats = set(cfg.export.formats)
    sources = adapter_files(adapter) if "adapter" in formats else []
    if formats & {"gguf", "gguf_lora"}:
        found = llama_cpp_dir(*converters_for(formats))  # a LLAMA_CPP_DIR without the converter stops here
        if formats == {"gguf_lora"} and found is None:
            hint = LLAMA_CPP_HINT.replace(" The merged model is exported meanwhile.", "")
            raise ConfigError(f"export.formats [gguf_lora]: nothing would be exported, as {LORA_CONVERTER} is not "
                              f"found (LLAMA_CPP_DIR, ./llama.cpp, ~/llama.cpp, the kit's cache). {hint} Or export "
                              "another format beside it: --set export.formats=[adapter,gguf_lora].")
        if "gguf" in formats and found is not None:
            quantizer_for(cfg.export.gguf_type, found)  # a type that needs llama-quantize, and none is found
    if "gguf_lora" in formats:
        lora_gguf_refusal(adapter)
    if cfg.export.push_to_hub:
        hub.token()  # no token, the Hub switched off, or an HF_ENDPOINT that is no address: stopped before the
        hub.check_online()  # work, not after it
        hub.check_endpoint()
    return sources


def _export_into(cfg: KitConfig, adapter: Path, say: Any, run: RunDir, sources: list[Path], partial: Path
                 ) -> dict[str, Any]:
    formats, base = set(cfg.export.formats), ExportBase(cfg, adapter)
    report: dict[str, Any] = {"adapter": published_adapter_name(adapter),
                              "base_model": backends.public_model_name(cfg.model.name), "formats": sorted(formats)}
    if "adapter" in formats:
        said = export_adapter(cfg, adapter, sources, run, f"{Files.EXPORT_PARTIAL}/adapter", base)
        say(f"export: adapter with {said} and model card -> {partial.name}/adapter")
        published = backends.published_base_name(cfg.model.name)
        if published != backends.portable_base_name(cfg.model.name):
            say(f"export: note: adapter/adapter_config.json names the local base model by its folder name alone "
                f"({printable(published)}), not by its path on this machine; load the adapter onto your copy of it "
                "(its README.md shows how; the kit: --set model.name=THAT_FOLDER --adapter THIS_EXPORT)")
    if formats & {"merged", "gguf"}:
        report.update(export_merged(cfg, adapter, run.inside(f"{Files.EXPORT_PARTIAL}/merged"), say, base))
    failed: dict[str, ModelError] = {}
    if "gguf" in formats:
        report["gguf"] = _converted("gguf", lambda: export_gguf(cfg, partial, say), partial, failed)
        if "file" in report["gguf"]:
            report["gguf"]["modelfile"] = write_modelfile(cfg, run, base.tokenizer, report["gguf"]["file"], say)
    if "gguf_lora" in formats:
        report["gguf_lora"] = _converted("gguf_lora", lambda: export_gguf_lora(cfg, adapter, partial, say, base),
                                         partial, failed)
    written = [name for name in ("adapter", "merged") if (partial / name).is_dir()]
    if failed and not written:
        raise next(iter(failed.values()))  # nothing else was asked for: nothing is exported
    if cfg.export.push_to_hub and not failed:
        run.write_text(f"{Files.EXPORT_PARTIAL}/{Files.MODEL_CARD}", model_card(cfg, run, report, adapter))
    run.write_json(f"{Files.EXPORT_PARTIAL}/{Files.EXPORT_REPORT}", report)
    run.write_text(f"{Files.EXPORT_PARTIAL}/{Files.EXPORT_REPORT_MD}", export_report_markdown(report))
    final = run.inside(run.unique(Files.EXPORT))
    partial.rename(final)
    say(f"export written: {printable(final)}")
    if failed:
        raise ModelError(f"export.formats {', '.join(failed)}: {'; '.join(str(e) for e in failed.values())}\nThe rest "
                         f"of the export is written: {', '.join(written)} in {printable(final)} (its "
                         f"{Files.EXPORT_REPORT} records the failure)"
                         + ("; nothing was uploaded to the Hub." if cfg.export.push_to_hub else "."))
    summary = {"run_dir": str(run.path), "export_dir": str(final), "export": _summary_line(report)}
    if cfg.export.push_to_hub:
        summary["hub"] = hub.push(cfg.export.push_to_hub, final, cfg.export.hub_private, say)
    return summary


def _converted(name: str, convert: Any, partial: Path, failed: dict[str, ModelError]) -> dict[str, Any]:
    """One GGUF format converted; where llama.cpp's tool fails, its half-written folder is removed and the failure
    kept in ``failed``, so that the formats already written (the adapter, the merged model) are not lost with it."""
    try:
        return convert()
    except ModelError as err:
        shutil.rmtree(partial / name, ignore_errors=True)
        failed[name] = err
        return {"failed": getattr(err, "summary", "the converted file failed its check")}


def published_adapter_name(adapter: Path) -> str:
    """The adapter as the export folder (which export.push_to_hub may publish) names it: its run folder's name and
    its own, e.g. run-20260101-120000/adapter, never the machine's path to it. An export of a kit run's adapter (a
    checkpoint, an export, an export of an export) is named by the training run it comes from."""
    return origin_name(adapter.resolve()) or Path(*adapter.resolve().parts[-2:]).as_posix()


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


def left_for_export_mode(cfg: KitConfig, mode: str) -> str | None:
    """Export settings given to a mode that exports nothing (train, full): what happens to them, or None."""
    defaults = type(cfg.export)()
    # a value other than the default (a run folder's config.yaml writes every default, push_to_hub: null included)
    chosen = [name for name in ("formats", "push_to_hub")
              if name in cfg.export.model_fields_set and getattr(cfg.export, name) != getattr(defaults, name)]
    if mode not in ("train", "full") or not chosen:
        return None
    named = " and ".join(f"export.{name}" for name in chosen)
    return (f"{named} {'is' if len(chosen) == 1 else 'are'} for --mode export: --mode {mode} trains and saves the "
            f"adapter, and exports or uploads nothing. Afterwards run: {kit_command()} --mode export --adapter latest")
