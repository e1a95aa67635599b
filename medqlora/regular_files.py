"""Folders the kit loads from (a checkpoint folder, an adapter folder) hold regular files: a named pipe, a device
or a socket blocks or streams forever when a loader opens it, and a dangling link is a file that is not there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .secrets import printable


def first_special_file(folder: Path) -> Path | None:
    """The first entry of ``folder`` that is neither a folder nor a regular file (links followed), or None."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # an unreadable folder: the reads that follow say so
        return None
    return next((entry for entry in entries if not (entry.is_dir() or entry.is_file())), None)


def link_note(path: Path) -> str:
    """' (it links to TARGET)' for a link, else nothing: says where a link that is not a regular file leads."""
    return f" (it links to {printable(str(path.resolve()))})" if path.is_symlink() else ""


def not_a_private_file(status: os.stat_result) -> str:
    """Why a file the kit writes in place (run.log, the lock) must not be written: not a regular file, or one with
    other names (a hard link, which O_NOFOLLOW does not stop, would carry the write to a file outside); '' if fine."""
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if status.st_nlink > 1:
        return f"has {status.st_nlink - 1} other name(s) elsewhere (a hard link)"
    return ""
