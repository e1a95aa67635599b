"""A cheap fingerprint of a local base model's weight files, recorded in a run's manifest.json when it trains
(``model_files``): for each weights file, its name, size and the sha256 of its safetensors header and of its first
and last MiB, so that a model replaced in place (same path, same shapes: another revision downloaded over it) is
noticed without hashing gigabytes. --resume refuses a changed model (as a changed data file, H124); test, eval,
export and chat say it in a warning line. A hub model (no folder on disk) is not fingerprinted."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from . import json_text

MANIFEST_KEY = "model_files"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
EDGE = 1 << 20  # the first and the last MiB of each file


def fingerprint(source: str | None) -> dict[str, str] | None:
    """{file name: "size <n> sha256:<hex>"} of the weight files of the model folder ``source``; None where
    ``source`` is no folder (a hub id) or holds no weight file."""
    folder = Path(source).expanduser() if source else None
    if folder is None or not folder.is_dir():
        return None
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    return {f.name: _file_print(f) for f in files} or None


def _file_print(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(_safetensors_header(handle, size))
        handle.seek(0)
        digest.update(handle.read(EDGE))
        handle.seek(max(0, size - EDGE))
        digest.update(handle.read(EDGE))
    return f"size {size} sha256:{digest.hexdigest()}"


def _safetensors_header(handle, size: int) -> bytes:
    """The JSON header of a safetensors file (its tensor names, shapes, offsets); b"" for any other file."""
    head = handle.read(8)
    if len(head) < 8:
        return b""
    length = struct.unpack("<Q", head)[0]
    return handle.read(length) if 0 < length <= min(size - 8, 100 << 20) else b""


def changed_files(recorded: object, source: str | None) -> list[str]:
    """The weight files of ``source`` that differ from the fingerprint ``recorded`` at training (changed, gone or
    added), by name; [] where nothing was recorded (a run written before the kit recorded it, a hub model) or the
    model folder cannot be read."""
    if not isinstance(recorded, dict) or not recorded:
        return []
    try:
        now = fingerprint(source) or {}
    except OSError:  # a folder that cannot be read now: nothing to compare, as the docstring says
        return []
    return sorted(name for name in {*recorded, *now} if recorded.get(name) != now.get(name))


def describe_change(names: list[str], source: str) -> str:
    """``names`` (from changed_files) in a sentence: which files of the model folder changed."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{shown} in {source}"


def changed_since_training(run_folder: Path) -> tuple[list[str], str]:
    """The base model's weight files changed since the run ``run_folder`` trained (its manifest.json's model_files
    compared with the folder its model_source names), and that folder; ([], "") where nothing can be compared."""

    from .run_files import Files

    try:
        manifest = json_text.loads((run_folder / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], ""
    source = manifest.get("model_source") if isinstance(manifest, dict) else None
    if not isinstance(source, str):
        return [], ""
    return changed_files(manifest.get(MANIFEST_KEY), source), source
