"""The checkpoint a run resumes from, checked before anything loads: each of its files whole (a copy or sync of the
run folder cut short leaves an optimizer.pt of half its size, which torch reads as `OSError: Invalid argument`) and
its adapter's weights finite (resumed from a NaN, a run trains on and stops at a NaN loss, blamed on the learning
rate). A damaged checkpoint is refused naming it and the file: the one before it may be whole.

The inspection is whole_files.py's (the same one the adapter boundary runs on every adapter folder), here with the
values read: every torch file's checksums, every tensor's finiteness."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from . import json_text
from .errors import ModelError
from .secrets import printable
from .torch_pickles import code_in_pickle, holds_code_error
from .whole_files import TORCH_SUFFIXES, first_damage

STATE_NAME = "trainer_state.json"


def step_of(folder: Path) -> int | None:
    """The step a Trainer checkpoint folder's name gives (checkpoint-40); None for any other name (a copy the user
    kept as checkpoint-4.bak), which the Trainer does not take for a checkpoint either."""
    prefix, _, step = folder.name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isascii() and step.isdigit() else None


def checkpoint_folders(checkpoints: Path) -> list[Path]:
    """The Trainer's checkpoint folders (checkpoint-<step>) in ``checkpoints``, oldest first; a folder by another
    name (a copy the user kept as checkpoint-4.bak) is never read as a checkpoint (remove_checkpoints keeps it)."""
    return sorted((p for p in checkpoints.glob("checkpoint-*") if step_of(p) is not None and p.is_dir()),
                  key=lambda p: step_of(p) or 0)


def remove_checkpoints(checkpoints: Path) -> None:
    """After a complete run (the adapter is what counts): the Trainer's output folder removed (its checkpoint
    folders, its model card README.md), but for a checkpoint copy the user kept there under another name
    (checkpoint-4.bak), which stays, with the folder."""
    import shutil

    try:
        entries = list(checkpoints.iterdir())
    except OSError:  # not there
        return
    kept = [p for p in entries if p.name.startswith("checkpoint-") and step_of(p) is None]
    for entry in entries:
        if entry in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not kept:
        with contextlib.suppress(OSError):
            checkpoints.rmdir()


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint one of whose files is cut or damaged, whose weights hold NaN or infinity, or whose
    trainer_state.json is at another step than its folder's name says."""
    damage = first_damage(checkpoint, values=True)
    if damage is None:
        _refuse_code(checkpoint)
        _check_step(checkpoint)
        return
    name = printable(damage.file.name, 80)
    if damage.problem:
        raise ModelError(
            f"--resume: the checkpoint {printable(checkpoint)} is damaged: its {name} {damage.problem} (a copy or sync "
            f"of the run folder cut short?). {_advice(checkpoint)}")
    bad = damage.non_finite
    more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
    raise ModelError(
        f"--resume: the checkpoint {printable(checkpoint)} holds NaN or infinite weights in its {name} "
        f"({printable(bad[0], 120)}{more}): training on from it would train on NaN and stop at a NaN loss. "
        f"{_advice(checkpoint)}")


# Written by the trainer with each checkpoint and never read back (a pickle of TrainingArguments, which the
# weights-only loader would refuse as any object of a class it does not know)
NOT_READ = "training_args.bin"


def _refuse_code(checkpoint: Path) -> None:
    """A torch file the trainer reads on resuming (optimizer.pt, scheduler.pt, scaler.pt, rng_state*.pth) that would
    call a function while read is refused in the kit's words, not in torch's (torch_pickles.py)."""
    for file in sorted(checkpoint.iterdir()):
        if file.suffix in TORCH_SUFFIXES and file.name != NOT_READ and file.is_file() and not file.is_symlink():
            names = code_in_pickle(file, numpy_allowed=True)
            if names:
                raise holds_code_error("--resume", file, names, _advice(checkpoint))


def _check_step(checkpoint: Path) -> None:
    """The trainer resumes at trainer_state.json's global_step, not at the folder's name: a trainer_state.json
    copied in from another (longer) run would end the training at once, reported as trained with steps never
    taken."""
    named = checkpoint.name.rsplit("-", 1)[-1]
    state = trainer_state(checkpoint)
    if state is None and not (checkpoint / STATE_NAME).is_file():
        return  # not a checkpoint latest_checkpoint picks (bad JSON in it was refused above as damaged)
    step = state.get("global_step") if state is not None else None  # a JSON value other than an object: no step
    if type(step) is int and str(step) == named:
        return
    raise ModelError(
        f"--resume: the checkpoint {printable(checkpoint)} does not match its own state: its {STATE_NAME} says "
        f"global_step {printable(json.dumps(step), 40)}, its folder name step {printable(named, 40)} (a checkpoint "
        f"or its {STATE_NAME} copied in from another run?). Resuming from it would continue at the wrong step. "
        f"{_advice(checkpoint)}")


def trainer_state(checkpoint: Path) -> dict | None:
    """A checkpoint's trainer_state.json, which the Trainer writes last (None: not there, or not whole: cut while it
    was written, or damaged)."""
    try:
        state = json_text.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _advice(checkpoint: Path) -> str:
    return (f"Move {printable(checkpoint.name, 80)} out of {printable(checkpoint.parent)} to resume from the "
            "checkpoint before it, or train again without --resume.")
