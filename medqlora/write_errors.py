"""Failed writes: the ones that do not arrive as OSError, and what one message advises for each kind.

Libraries written in Rust report an I/O error as their own exception type with the OS error in its text:
safetensors' SafetensorError (`Error while serializing: I/O error: No space left on device (os error 28)`) and the
tokenizers library's bare Exception (`No space left on device (os error 28)`, tokenizer.json on a full disk). The
kit's handlers of a failed write (the incomplete checkpoint or adapter removed, one message, exit 2) take OSError:
``library_os_errors`` turns the one into the other, whatever the library's exception type."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_OS_ERROR = re.compile(r"\(os error (\d+)\)")

# The errors of a write the user can fix by where the run goes: a full disk or quota, a file-size limit, a
# read-only file system, no permission, the limit of open files.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EMFILE, errno.ENFILE})
_OPEN_FILES = ("The process may open no more files (the limit of open files, ulimit -n, is reached): raise it "
               "(ulimit -n 4096) and run the command again")


def as_os_error(err: BaseException) -> OSError | None:
    """The OSError a library's error carries in its text ('... No space left on device (os error 28)', Rust's
    form of an I/O error), or None (an OSError itself, or an error without one)."""
    if isinstance(err, OSError):
        return None
    found = _OS_ERROR.search(str(err))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


@contextmanager
def library_os_errors(folder: Path | None = None) -> Iterator[None]:
    """Inside the block, a library's error that carries an OS error is raised as that OSError. ``folder``: where the
    block writes; a library error that names no OS error (torch's checkpoint writer on a full disk says only
    'unexpected pos 64 vs 0' or 'iostream error') is raised as the OSError a small write there meets now, if any."""
    try:
        yield
    except Exception as err:
        converted = as_os_error(err)
        if converted is None and folder is not None and not isinstance(err, OSError):
            converted = _write_fails_in(folder)
        if converted is None:
            raise
        raise converted from err


PROBE_BYTES = 1 << 16


def _write_fails_in(folder: Path) -> OSError | None:
    """The OSError writing (and flushing) a small file in ``folder`` raises now, or None when it succeeds."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".medqlora-write-check-") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return err
    return None


def is_write_error(err: BaseException) -> bool:
    """A failed write that the place written to explains (full, size-limited, read-only, not permitted)."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


_SIZE_LIMIT = ("The file system there limits the size of one file (FAT32 drives: 4 GiB), or the shell limits it "
               "(ulimit -f)")


def _cause(err: OSError) -> str:
    """Which of the causes a user can fix the failed write ``err`` has: size, read-only, permission or space."""
    if err.errno == errno.EFBIG:
        return "size"
    if err.errno == errno.EROFS:
        return "read-only"
    if err.errno in (errno.EMFILE, errno.ENFILE):
        return "files"
    return "permission" if err.errno in (errno.EACCES, errno.EPERM) else "space"


def in_place_advice(err: OSError, copy_command: str) -> str:
    """What to change after the failed write ``err`` in a run folder the command did not make (test, eval and
    export write into the adapter's run folder, which --output-dir does not move): a sentence as write_advice's,
    with a copy of the run folder (``copy_command``) given to --adapter as the other way."""
    copy = f"{copy_command} and give the copy to --adapter (--output-dir does not move the adapter's run folder)"
    return {"size": f"{_SIZE_LIMIT}: raise the limit, or copy the run folder to another file system ({copy})",
            "read-only": f"That folder is on a read-only file system: copy the run folder to a writable place ({copy})",
            "permission": f"You may not write in that folder: copy the run folder to a place you own ({copy})",
            "space": f"Free some space on that disk, or copy the run folder to a disk with room ({copy})",
            "files": _OPEN_FILES}[_cause(err)]


def write_advice(err: OSError, where: str = "--output-dir") -> str:
    """What to change after the failed write ``err``: a sentence, capitalised, without its final stop naming ``where``
    the files go."""
    return {"size": f"{_SIZE_LIMIT}: choose a {where} on another file system (ext4, NTFS, APFS), or raise the limit",
            "read-only": f"That folder is on a read-only file system: choose a {where} on a writable one",
            "permission": f"You may not write in that folder: choose another {where}, or one you own",
            "space": f"Free some space (or choose another {where})",
            "files": _OPEN_FILES}[_cause(err)]
