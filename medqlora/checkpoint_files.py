"""The checkpoint a run resumes from, checked before anything loads: each of its files whole (a copy or sync of the
run folder cut short leaves an optimizer.pt of half its size, which torch reads as `OSError: Invalid argument`) and
its adapter's weights finite (resumed from a NaN, a run trains on and stops at a NaN loss, blamed on the learning
rate). A damaged checkpoint is refused naming it and the file: the one before it may be whole.

The inspection is whole_files.py's (the same one the adapter boundary runs on every adapter folder), here with the
values read: every torch file's checksums, every tensor's finiteness."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .secrets import printable
from .whole_files import first_damage


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint one of whose files is cut or damaged, or whose weights hold NaN or infinity."""
    damage = first_damage(checkpoint, values=True)
    if damage is None:
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


def _advice(checkpoint: Path) -> str:
    return (f"Move {printable(checkpoint.name, 80)} out of {printable(checkpoint.parent)} to resume from the "
            "checkpoint before it, or train again without --resume.")
