"""Folders the kit loads from (a checkpoint folder, an adapter folder) hold regular files: a named pipe, a device
or a socket blocks or streams forever when a loader opens it, and a dangling link is a file that is not there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .secrets import printable


# what transformers, tokenizers, PEFT and the kit read from a checkpoint or adapter folder (configs, weights,
# tokenizer files, chat templates, remote code); other files there (a README, a download tool's leftovers) are not
LOADED_SUFFIXES = (".json", ".jinja", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".py", ".tiktoken",
                   ".gguf")


def first_special_file(folder: Path) -> Path | None:
    """The first file a loader reads in ``folder`` that is neither a folder nor a regular file (links followed),
    or None."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # an unreadable folder: the reads that follow say so
        return None
    return next((entry for entry in entries
                 if entry.name.lower().endswith(LOADED_SUFFIXES) and not (entry.is_dir() or entry.is_file())), None)


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


def file_kind(path: Path) -> str:
    """What ``path`` (links followed) is, in words: a folder, a named pipe, a device, a socket or a file."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((word for test, word in kinds if test(mode)), "a file")
