"""Which weights a run of the kit saved: the sha256 of each adapter's weights file, recorded in the run's
manifest.json (adapter_sha256) when the kit saves the adapter (the final one, or the one an interrupted training
saves). A run's adapter folder whose weights are none of those (another run's adapter copied over it) holds
weights the run did not write: its records do not describe it, and the kit uses it as an adapter from outside its
runs. A run written before the kit recorded them (no adapter_sha256) is taken as it is."""

from __future__ import annotations

import hashlib
import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import json_text
from .run_files import Files

RECORD_KEY = "adapter_sha256"  # manifest.json: the sha256 of every weights file the run saved, oldest first
WEIGHTS_FILE = "adapter_model.safetensors"  # adapters.WEIGHTS_NAME (named here too: adapters imports this module)
_CHUNK = 1 << 20


def weights_sha256(adapter: Path) -> str | None:
    """The sha256 of the adapter's weights file, or None where it has none that is a regular file (nothing to
    compare: the adapter boundary says what is missing). Computed once per file and version of it."""
    file = adapter / WEIGHTS_FILE
    try:
        info = os.lstat(file)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return _digest(str(file), info.st_size, info.st_mtime_ns, info.st_ino)


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str | None:
    """sha256 of one version of a file (its size, time and inode are the cache's key, so a file replaced since is
    read anew)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def recorded(manifest: dict[str, Any]) -> list[str] | None:
    """The weights a run's manifest says it saved (None: a run written before the kit recorded them)."""
    values = manifest.get(RECORD_KEY)
    return [str(v) for v in values] if isinstance(values, list) else None


def written_by_run(adapter: Path, manifest: dict[str, Any]) -> bool:
    """Whether the adapter folder holds weights its run saved: True for a run that records none (written before
    the kit recorded them) and for a folder without a weights file (nothing to compare)."""
    saved = recorded(manifest)
    if saved is None:
        return True
    digest = weights_sha256(adapter)
    return digest is None or digest in saved


def on_disk(run_path: Path) -> list[str] | None:
    """The weights recorded in the run folder's manifest.json now (kept when the manifest is written anew)."""
    try:
        payload = json_text.loads((run_path / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded(payload) if isinstance(payload, dict) else None


def record_saved(run: Any, adapter: Path) -> None:
    """Add the weights of the adapter being saved (``adapter``: its folder before it is renamed in place) to the
    run's manifest.json, before the adapter takes its place, so that no moment shows it unrecorded."""
    digest = weights_sha256(adapter)
    if digest is None:
        return
    try:
        payload = json_text.loads((run.path / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    saved = recorded(payload) or []
    payload[RECORD_KEY] = saved + ([digest] if digest not in saved else [])
    run.write_json(Files.MANIFEST, payload)
