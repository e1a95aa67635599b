"""README.md of an export pushed to the Hub (its model card): what the files are, the data the run trained on, its
results, the checks of the export, and the medical disclaimer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import adapters, backends, json_text
from ..adapter_origin import origin_run
from ..config import KitConfig, load_config
from ..data.sources import HUB_DATASET_ID, looks_local, resolve_local
from ..errors import MedQLoRAError
from ..hub import is_hub_id
from ..run_files import Files
from ..runs import RunDir
from ..secrets import printable
from .adapter_card import TrainingRecord, adapter_card, card_meta, loading_code, run_record

DISCLAIMER = ("**Not medical advice.** This model was fine-tuned for research and education. Its answers can be wrong, "
              "incomplete or outdated, and it must not be used to diagnose, treat or make decisions about patients. "
              "Consult a healthcare professional.")


def model_card(cfg: KitConfig, run: RunDir, report: dict[str, Any], adapter: Path | None = None) -> str:
    """README.md of the hub repository: what the files are, the data the run trained on, its results, the checks
    of the export, and the medical disclaimer. ``adapter``: the adapter exported, whose own LoRA settings and run
    (config.yaml, with the stages it started from) the card describes, not the export command's config."""
    base, public = backends.portable_base_name(cfg.model.name), backends.public_model_name(cfg.model.name)
    record = run_record(origin_run(adapter) if adapter is not None else run.path)
    sections = [
        card_meta(record, base if is_hub_id(base) else None, peft="adapter" in report["formats"]),
        f"# {printable(public)} fine-tuned on medical data ({record.kind})\n",
        f"{_lora_line(cfg, adapter)}, trained with medqlora. Base model: `{printable(public)}`.\n",
        "\n".join(record.lines()) + "\n",
        DISCLAIMER + "\n",
        "## Files\n\n" + "\n".join(_file_lines(report, is_hub_id(base))) + "\n",
        "## Training data\n\n" + "\n".join(_trained_on(cfg, adapter)) + "\n",
        "## Results\n\n" + _results(run).replace(cfg.model.name, public) + "\n",  # its title names the model
    ]
    if "merged_vs_trained" in report:
        checks = report["merged_vs_trained"]
        sections.append(f"## Export check\n\nThe merged model against the trained base + adapter: greedy replies "
                        f"identical {checks['identical_greedy_replies']}, max |logit difference| "
                        f"{checks['max_abs_logit_diff']}.\n")
    return "\n".join(sections)


def adapter_readme(cfg: KitConfig, adapter: Path, record: TrainingRecord) -> str:
    """README.md of an adapter folder (the run's own, or an export's): its LoRA settings, how it was trained (method,
    quantization, interrupted or not) and how to load it."""
    base = backends.portable_base_name(cfg.model.name)
    return adapter_card(record, backends.public_model_name(cfg.model.name), _lora_line(cfg, adapter),
                        loading_code(cfg.model.name), card_meta(record, base if is_hub_id(base) else None))


def _lora_line(cfg: KitConfig, adapter: Path | None) -> str:
    """The adapter's LoRA settings, from its adapter_config.json (a stage started from training.init_adapter keeps
    the first stage's, whatever lora: says); cfg's lora section where no adapter is given."""
    r, alpha, targets = cfg.lora.r, cfg.lora.alpha, list(cfg.lora.target_modules)
    if adapter is not None:
        config = adapters.read_config(adapter)
        r, alpha, found = config["r"], config.get("lora_alpha", alpha), config["target_modules"]
        targets = [found] if isinstance(found, str) else sorted(found)
    return f"LoRA r={r}, alpha={alpha} on {printable(', '.join(targets))}"


def _trained_on(cfg: KitConfig, adapter: Path | None) -> list[str]:
    """The data the adapter learnt from: the datasets of the run it was trained in and of the stages that run
    started from, read from its config.yaml (the export command's training settings say nothing of the adapter's
    past); unknown for an adapter trained outside the kit's run folders. cfg's where no adapter is given."""
    if adapter is None:
        return _data_lines(cfg)
    run = origin_run(adapter)
    if run is None:
        return ["- unknown: this adapter was trained outside medqlora's run folders"]
    try:
        return _data_lines(load_config(run / Files.CONFIG))
    except MedQLoRAError:
        return ["- unknown: the config.yaml of the run this adapter was trained in is unreadable"]


def _file_lines(report: dict[str, Any], base_on_hub: bool = True) -> list[str]:
    """``base_on_hub``: the adapter's config names its base by a hub id; else by a local folder's name alone, so the
    adapter is loaded onto the reader's own copy of that model."""
    lines = []
    if "adapter" in report["formats"]:
        load = ('`AutoPeftModelForCausalLM.from_pretrained(REPO, subfolder="adapter")`' if base_on_hub else
                '`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(YOUR_COPY_OF_THE_BASE), REPO, '
                'subfolder="adapter")` (the base was a local folder, which adapter_config.json names by its name only)')
        lines.append(f"- `adapter/`: the LoRA adapter with the tokenizer and chat template of training: {load}")
    if "merged_dtype" in report:
        lines.append(f'- `merged/`: the adapter merged into the base model ({report["merged_dtype"]}): '
                     '`AutoModelForCausalLM.from_pretrained(REPO, subfolder="merged")`')
    if "file" in report.get("gguf", {}):
        lines.append(f"- `{report['gguf']['file']}`: the merged model for llama.cpp / Ollama"
                     + (" (with an Ollama `Modelfile`)" if str(report["gguf"].get("modelfile", "")).endswith(
                         "Modelfile") else ""))
    if "file" in report.get("gguf_lora", {}):
        lines.append(f"- `{report['gguf_lora']['file']}`: the adapter alone for llama.cpp, applied to a GGUF of "
                     "the base model: `llama-cli -m BASE.gguf --lora " + report["gguf_lora"]["file"] + "`")
    lines.append(f"- `{Files.EXPORT_REPORT_MD}` / `.json`: how each export compares with the trained model")
    return lines


def _data_lines(cfg: KitConfig, depth: int = 0) -> list[str]:
    """The datasets of the run, then those of the stages it started from (training.init_adapter), each said with
    data.allow_eval_overlap where that stage trained on evaluation questions on purpose."""
    indent = "  " * depth
    lines = []
    for spec in cfg.data.datasets:
        source = public_source(spec.source)
        extra = "".join(f", {key} {value}" for key, value in (("subset", spec.subset), ("split", spec.split),
                                                            ("at most", spec.max_samples)) if value)
        lines.append(f"{indent}- {printable(source)} (format {spec.format}{printable(extra)}, {spec.use_for})")
    if cfg.data.allow_eval_overlap:
        lines.append(f"{indent}- trained with data.allow_eval_overlap: these rows may hold evaluation questions, so "
                     "scores on those benchmarks are not held-out scores")
    if cfg.training.init_adapter:
        lines += _start_stage_lines(Path(cfg.training.init_adapter), depth)
    return lines


def public_source(source: str) -> str:
    """A dataset as the Hub may read it: a hub id as it is; a local file or folder by its name alone, whether or
    not it is still there (patient data is often moved away after training), so no local path is published."""
    if resolve_local(source) is None and not looks_local(source) and HUB_DATASET_ID.match(source):
        return source
    return f"local file {Path(source).expanduser().name or source}"


def _start_stage_lines(start: Path, depth: int) -> list[str]:
    indent = "  " * depth
    run = origin_run(start if start.name == Files.ADAPTER or not (start / Files.ADAPTER).is_dir()
                              else start / Files.ADAPTER)
    name = printable((run or start).name)
    if run is None or depth >= 8:
        return [f"{indent}- started from the adapter {name} (training.init_adapter), whose training data is unknown"]
    try:
        earlier = load_config(run / Files.CONFIG)
    except MedQLoRAError:
        return [f"{indent}- started from the adapter of the run {name} (training.init_adapter), whose config is "
                "unreadable"]
    return [f"{indent}- started from the adapter of the run {name} (training.init_adapter), trained on:",
            *_data_lines(earlier, depth + 1)]


def _results(run: RunDir) -> str:
    """The newest evaluation report of the run folder and the training metrics, as the kit wrote them."""
    parts = []
    found = run.path.glob(Files.EVAL_REPORT.replace(".md", "*.md"))
    reports = sorted((f for f in found if f.is_file() and not f.is_symlink()), key=lambda f: f.stat().st_mtime)
    if reports:
        parts.append(reports[-1].read_text(encoding="utf-8", errors="replace").replace("# ", "### ", 1))
    metrics = run.path / Files.METRICS
    if metrics.is_file() and not metrics.is_symlink():
        try:
            figures = json_text.loads(metrics.read_text(encoding="utf-8")).get("metrics", {})
        except (ValueError, AttributeError):
            figures = {}
        shown = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if shown:
            parts.append("Training: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return "\n\n".join(parts) if parts else "No evaluation was recorded in the run folder."
