"""export.formats adapter: the adapter's own files (no link, nothing from elsewhere), its adapter_config.json naming
the base as another machine finds it, the tokenizer with its chat template, and a model card."""

from __future__ import annotations

from pathlib import Path

from .. import backends, json_text
from ..adapter_origin import origin_run
from ..config import KitConfig
from ..errors import MedQLoRAError
from ..report.adapter_card import run_record
from ..report.model_card import adapter_readme
from ..runs import RunDir
from ..secrets import printable
from .base_model import ExportBase, has_tokenizer

# A checkpoint's training state: what --resume reads, never what loading the adapter reads. An export of a checkpoint
# folder leaves it out (the optimizer state is twice the adapter's size, and these files are pickles).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")


def is_training_state(name: str) -> bool:
    return name in TRAINING_STATE or (name.startswith("rng_state") and name.endswith(".pth"))


def training_state_files(adapter: Path) -> list[str]:
    """The names of the training state files in an adapter folder (a checkpoint's), which an export leaves out."""
    return sorted(entry.name for entry in adapter.iterdir() if is_training_state(entry.name))


def adapter_files(adapter: Path) -> list[Path]:
    """The files an adapter export copies: regular files directly in the adapter folder, but for a checkpoint's
    training state. A link, or anything whose real path is elsewhere, stops the export (it could copy a file from
    outside into a shared folder)."""
    folder = adapter.resolve()
    files, refused = [], []
    for entry in sorted(adapter.iterdir()):
        if entry.is_symlink() or not entry.resolve().is_relative_to(folder):
            refused.append(entry.name)
        elif entry.is_file() and not is_training_state(entry.name):
            files.append(entry)
    if refused:
        raise MedQLoRAError(
            f"The adapter folder {printable(adapter)} holds {printable(', '.join(refused), 120)}, a symbolic link "
            "(or a file that lives elsewhere); an export copies only the adapter's own files. Remove the link, or "
            "copy the adapter with its files into a new folder (cp -rL), and export that."
        )
    return files


def export_adapter(cfg: KitConfig, adapter: Path, sources: list[Path], run: RunDir, dest: str, base: ExportBase) -> str:
    """The adapter's files and a model card; where the adapter folder lacks a tokenizer with its chat template, the
    base model's (the one training used) is saved with it, and the returned description says so."""
    for source in sources:
        if source.name == "adapter_config.json":  # names the base as another machine finds it, never by its path
            run.write_json(f"{dest}/{source.name}", published_config(source, cfg.model.name))
        else:
            run.copy_in(source, f"{dest}/{source.name}")
    said = "its tokenizer and chat template"
    if not has_tokenizer(adapter):
        base.tokenizer.save_pretrained(str(run.inside(dest)))
        said = (f"the tokenizer and chat template of the base model {printable(cfg.model.name)} (the adapter folder "
                "has none)")
    run.write_text(f"{dest}/README.md", adapter_readme(cfg, adapter, run_record(origin_run(adapter))))
    left_out = training_state_files(adapter)
    if left_out:
        said += (f" (not the checkpoint's training state, {printable(', '.join(left_out), 160)}: only --resume "
                 "reads it)")
    return said


def published_config(source: Path, model_name: str) -> dict:
    """The adapter's adapter_config.json as the export publishes it: the base model by its hub id, or, for a model on
    this machine's disk, by its folder name alone (the full path holds the user's folder names)."""
    config = json_text.loads(source.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = backends.published_base_name(model_name)
    return config
