"""Whether a folder of the kit's files is whole: the one per-file inspection behind the checkpoint --resume continues
from (checkpoint_files.py) and every adapter folder the adapter boundary checks (adapters.find: a run folder's
adapter/, a checkpoint, an export, a foreign adapter). A copy or sync cut short (a full disk, an interrupted cp or
rsync) leaves a tokenizer.json that stops mid-string or an optimizer.pt of half its size, which the libraries then
read as a JSONDecodeError or `OSError: Invalid argument` deep inside loading.

What is checked, by the file's kind: JSON parses (as UTF-8); a torch file (optimizer.pt, scheduler.pt,
rng_state*.pth, training_args.bin: zip archives) opens as a zip archive, and with ``values`` every member's checksum
matches, without unpickling it; a safetensors file's header covers the whole file, and with ``values`` its tensors
are read and must be finite. Without ``values`` no weight is read: a large adapter is checked in the time its small
files take to parse (its weights' finiteness is read once, where the boundary needs it: adapters.check_finite)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import json_text
from .secrets import printable

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Damage:
    """What is wrong with one file of a folder: its bytes (``problem``), or, read with values, the names of its
    tensors that hold NaN or infinity (``non_finite``)."""

    file: Path
    problem: str | None
    non_finite: tuple[str, ...] = ()


def first_damage(folder: Path, values: bool) -> Damage | None:
    """The first file of ``folder`` (by name; regular files directly in it) that is cut short or damaged, or, with
    ``values``, whose tensors hold NaN or infinity; None when every file is whole."""
    for file in sorted(folder.iterdir()):
        if file.is_symlink() or not file.is_file():
            continue
        damage = inspect(file, values)
        if damage is not None:
            return damage
    return None


def inspect(file: Path, values: bool) -> Damage | None:
    """What is wrong with one file (None: whole, or of a kind that is not inspected)."""
    try:
        if file.suffix == ".json":
            problem, bad = _json_damage(file), []
        elif file.suffix in TORCH_SUFFIXES:
            problem, bad = _torch_file_damage(file, values), []
        elif file.suffix == ".safetensors":
            problem, bad = _safetensors_damage(file, values)
        else:
            return None
    except OSError as err:
        problem, bad = f"cannot be read ({printable(err.strerror or str(err), 120)})", []
    return Damage(file, problem, tuple(bad)) if problem or bad else None


def _json_damage(file: Path) -> str | None:
    try:
        json_text.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # bad JSON, or not UTF-8 text
        return f"is cut short or damaged (not JSON: {printable(str(err), 120)})"
    return None


def _torch_file_damage(file: Path, values: bool) -> str | None:
    """A torch file (a zip archive) that is cut (no whole archive), or, with ``values``, whose members do not match
    their checksums."""
    if not zipfile.is_zipfile(file):
        if _legacy_torch_file(file):  # torch's format before 1.6 has no archive to check: taken as it is
            return None
        return f"is cut short or not a torch file ({file.stat().st_size} bytes, no whole zip archive)"
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip() if values else None
    except (zipfile.BadZipFile, EOFError) as err:
        return f"is cut short or damaged ({printable(str(err), 120)})"
    return f"is damaged (its member {printable(bad, 80)} does not match its checksum)" if bad else None


# torch.save's format before 1.6 (_use_new_zipfile_serialization=False): a pickle (protocol 2) of its magic number
LEGACY_TORCH_START = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _legacy_torch_file(file: Path) -> bool:
    with file.open("rb") as handle:
        return handle.read(len(LEGACY_TORCH_START)) == LEGACY_TORCH_START


def _safetensors_damage(file: Path, values: bool) -> tuple[str | None, list[str]]:
    from safetensors import SafetensorError, safe_open

    try:
        if values:
            return None, non_finite_weights(file)
        with safe_open(str(file), framework="pt") as weights:  # the header must cover the file to the last byte
            weights.keys()
    except SafetensorError as err:  # a cut header or data
        return f"is cut short or damaged ({type(err).__name__}: {printable(str(err), 120)})", []
    return None, []


def non_finite_weights(file: Path) -> list[str]:
    """The names of the floating-point tensors of a safetensors file that hold a NaN or an infinity."""
    import torch
    from safetensors import safe_open

    bad = []
    with safe_open(str(file), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 (a safetensors file, not a dict)
            tensor = weights.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad
