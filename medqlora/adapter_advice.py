"""What a path given where an adapter folder belongs is, when it is not one, and what to give instead: a GGUF
file (llama.cpp's format), a kit run folder whose training stopped before its adapter was saved, a full model (the
merged export); an adapter folder one of whose files is damaged."""

from __future__ import annotations

from pathlib import Path

from . import json_text
from .adapters import CONFIG_NAME, kit_run_folder
from .checkpoint_files import checkpoint_folders
from .run_commands import command_on_run
from .run_files import Files
from .run_lock import lock_holder
from .secrets import printable
from .whole_files import Damage


def named_flag(flag: str) -> str:
    return f"{flag} " if flag.startswith("--") else f"{flag}="


def gguf_given(arg: str, path: Path, flag: str) -> str:
    """A .gguf file where an adapter folder belongs: llama.cpp's format (export.formats gguf_lora or gguf), which
    the kit neither loads as an adapter nor trains from. Points at the adapter folder of the run it came from."""
    run = next((folder for folder in path.parents if kit_run_folder(folder / Files.ADAPTER) is not None), None)
    source = (f"the adapter/ folder of the run it was exported from: {named_flag(flag)}{printable(run / 'adapter')}"
              if run is not None else "the adapter/ folder of the run it was exported from (or that run's folder)")
    lora = _gguf_type(path) == "adapter"
    what = "a GGUF LoRA as export.formats gguf_lora writes it" if lora else "a GGUF LoRA or a GGUF model"
    model = "" if lora else f" (A GGUF model loads as the base model: --set model.name={printable(path)} --adapter none.)"
    return (f"{flag} {printable(arg)} is a GGUF file, llama.cpp's format ({what}): the kit can neither load a GGUF "
            f"LoRA as an adapter nor train from one. Give {source}.{model}")


def _gguf_type(path: Path) -> str | None:
    """general.type of a GGUF file ('adapter' for a LoRA, 'model'), read from its header; None when unreadable."""
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).fields.get("general.type")
        return None if field is None else str(field.contents())
    except Exception:  # not a readable GGUF file (or no gguf package): the message names both kinds
        return None


def no_adapter_there(arg: str, path: Path, flag: str) -> str:
    """What a folder without adapter_config.json is, when the kit can tell: one of its run folders whose training
    stopped before the adapter was saved, or a full model (the merged export); else what the flag takes."""
    shown = printable(arg)
    if path.is_dir() and kit_run_folder(path / Files.ADAPTER) is not None:
        checkpoints = [c for c in checkpoint_folders(path / Files.CHECKPOINTS) if (c / CONFIG_NAME).is_file()]
        holder = lock_holder(path)
        if holder is not None:
            return still_training(shown, flag, holder, checkpoints[-1] if checkpoints else None)
        if _saved_an_adapter(path):
            return (f"{flag} {shown} is a run folder of this kit that saved its adapter (its manifest.json records it), "
                    f"but its {Files.ADAPTER}/ holds no {CONFIG_NAME} now: moved or deleted since? Put the adapter "
                    f"folder back as {printable(path / Files.ADAPTER)}, or give its new place: {named_flag(flag)}PATH.")
        if checkpoints:
            return (f"{flag} {shown} is a run folder of this kit whose training stopped before its adapter was saved "
                    f"(killed or failed: no adapter_config.json in its adapter/). Finish the training with: "
                    f"{command_on_run('train', '--resume', path)}, then use the run; or use "
                    f"its last checkpoint as it is: {named_flag(flag)}{printable(checkpoints[-1])}.")
        return (f"{flag} {shown} is a run folder of this kit whose training stopped before its adapter was saved, and "
                "before its first checkpoint (training.save_steps): there is no adapter to use. Train it again "
                "(--mode train).")
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        if flag.startswith("--"):
            advice = f"load it as the base model alone: --set model.name={printable(path)} --adapter none"
        else:
            advice = f"train on it as the base model: --set model.name={printable(path)}, without {flag}"
        return (f"{flag} {shown} holds a full model (config.json and its weights, as export.formats merged writes "
                f"it), not a LoRA adapter: {advice}.")
    return f"{flag} {shown}: no {CONFIG_NAME} there (a LoRA adapter folder or run folder)."


def _saved_an_adapter(run: Path) -> bool:
    """Whether the run's manifest.json records an adapter the run saved (adapter_weights.RECORD_KEY)."""

    from .adapter_weights import recorded

    try:
        manifest = json_text.loads((run / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and bool(recorded(manifest))


def still_training(shown: str, flag: str, holder: str, checkpoint: Path | None) -> str:
    """A run folder whose adapter is not saved yet because its training runs now (another process holds its lock)."""
    who = f"process {printable(holder, 20)}" if holder else "another medqlora command"
    if checkpoint is None:
        meanwhile = ""
    elif flag.startswith("--"):
        meanwhile = (" Meanwhile its last checkpoint so far can be used as it is: "
                     f"{named_flag(flag)}{printable(checkpoint)}.")
    else:  # a run started from it reads it again when resumed, and the training deletes older checkpoints
        meanwhile = (f" Meanwhile a copy of its last checkpoint so far can be started from (cp -r "
                     f"{printable(checkpoint)} <folder>, then {named_flag(flag)}<folder>).")
    return (f"{flag} {shown} is a run folder of this kit that is still training ({who} holds its lock): its adapter "
            "is saved when that training ends. Wait for it to end, then run this command again (training it again "
            f"would start a second training of the same run).{meanwhile}")


def damaged_adapter(folder: Path, damage: Damage) -> str:
    """An adapter folder one of whose files is cut short or damaged (whole_files.py), and where a whole copy is: the
    run folder copied again, another checkpoint of the run, the export made again, or the folder copied again."""
    from .adapter_origin import in_run_subfolder, origin_run

    run = origin_run(folder)
    if run is not None and folder.parent.name == Files.CHECKPOINTS:
        advice = (f"Use another checkpoint of the run (in {printable(folder.parent)}) or its adapter "
                  f"({printable(run / Files.ADAPTER)}), or copy the run folder again from where it was trained.")
    elif run is not None and in_run_subfolder(folder):
        advice = (f"Export it again from the run {printable(run)} (--mode export), or copy the run folder again from "
                  "where it was trained.")
    elif run is not None:
        advice = (f"Copy the run folder {printable(run)} again (the whole folder, onto a disk with room) from where it "
                  "was trained, or train it again.")
    else:
        advice = "Copy the adapter folder again (all its files) from where it came."
    return (f"The adapter in {printable(folder)} is damaged: its {printable(damage.file.name, 80)} {damage.problem} "
            f"(a copy of the folder interrupted, or made onto a full disk?). {advice}")
