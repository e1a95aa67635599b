"""The checkpoint a run resumes from, checked before anything loads: each of its files whole (a copy or sync of the
run folder cut short leaves an optimizer.pt of half its size, which torch reads as `OSError: Invalid argument`) and
its adapter's weights finite (resumed from a NaN, a run trains on and stops at a NaN loss, blamed on the learning
rate). A damaged checkpoint is refused naming it and the file: the one before it may be whole.

What is checked, by the file's kind: JSON parses; a torch file (optimizer.pt, scheduler.pt, rng_state*.pth,
training_args.bin: zip archives) opens as a zip whose every member's checksum matches, without unpickling it; a
safetensors file reads whole, and its tensors are finite."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from .adapters import non_finite_weights
from .errors import ModelError
from .secrets import printable

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
STATE_NAME = "trainer_state.json"


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint one of whose files is cut or damaged, whose weights hold NaN or infinity, or whose
    trainer_state.json is at another step than its folder's name says."""
    for file in sorted(checkpoint.iterdir()):
        if file.is_symlink() or not file.is_file():
            continue
        try:
            problem, bad = _inspect(file)
        except OSError as err:
            problem, bad = f"cannot be read ({printable(err.strerror or str(err), 120)})", []
        if problem:
            raise ModelError(
                f"--resume: the checkpoint {printable(checkpoint)} is damaged: its {printable(file.name, 80)} "
                f"{problem} (a copy or sync of the run folder cut short?). {_advice(checkpoint)}")
        if bad:
            more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
            raise ModelError(
                f"--resume: the checkpoint {printable(checkpoint)} holds NaN or infinite weights in its "
                f"{printable(file.name, 80)} ({printable(bad[0], 120)}{more}): training on from it would train on NaN "
                f"and stop at a NaN loss. {_advice(checkpoint)}")
    _check_step(checkpoint)


def _check_step(checkpoint: Path) -> None:
    """The trainer resumes at trainer_state.json's global_step, not at the folder's name: a trainer_state.json
    copied in from another (longer) run would end the training at once, reported as trained with steps never
    taken."""
    named = checkpoint.name.rsplit("-", 1)[-1]
    try:
        state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no such file: not a checkpoint latest_checkpoint picks; a damaged one was refused above
    step = state.get("global_step") if isinstance(state, dict) else None
    if type(step) is int and str(step) == named:
        return
    raise ModelError(
        f"--resume: the checkpoint {printable(checkpoint)} does not match its own state: its {STATE_NAME} says "
        f"global_step {printable(json.dumps(step), 40)}, its folder name step {printable(named, 40)} (a checkpoint "
        f"or its {STATE_NAME} copied in from another run?). Resuming from it would continue at the wrong step. "
        f"{_advice(checkpoint)}")


def _inspect(file: Path) -> tuple[str | None, list[str]]:
    """What is wrong with the bytes of one file of a checkpoint (or None), and its tensors holding NaN or infinity."""
    if file.suffix == ".json":
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except ValueError as err:  # bad JSON, or not UTF-8 text
            return f"is cut short or damaged (not JSON: {printable(str(err), 120)})", []
    elif file.suffix in TORCH_SUFFIXES:
        return _torch_file_damage(file), []
    elif file.suffix == ".safetensors":
        from safetensors import SafetensorError

        try:
            return None, non_finite_weights(file)
        except SafetensorError as err:  # a cut header or data
            return f"is cut short or damaged ({type(err).__name__}: {printable(str(err), 120)})", []
    return None, []


def _torch_file_damage(file: Path) -> str | None:
    """A torch file (a zip archive) that is cut or whose members do not match their checksums."""
    if not zipfile.is_zipfile(file):
        return f"is cut short or not a torch file ({file.stat().st_size} bytes, no whole zip archive)"
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as err:
        return f"is cut short or damaged ({printable(str(err), 120)})"
    return f"is damaged (its member {printable(bad, 80)} does not match its checksum)" if bad else None


def _advice(checkpoint: Path) -> str:
    return (f"Move {printable(checkpoint.name, 80)} out of {printable(checkpoint.parent)} to resume from the checkpoint "
            "before it, or train again without --resume.")
