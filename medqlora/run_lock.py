"""One command at a time in a run folder: the command that trains, resumes, evaluates or exports in a run
folder holds an exclusive lock on its `.lock` file until it ends (the system releases it when the process
dies, kill -9 included). A second command on the same folder (a double-started job, a retried scheduler) is
refused before it reads or writes anything there, instead of mixing its checkpoints and log lines with the
first one's."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import MedQLoRAError
from .regular_files import not_a_private_file
from .run_commands import shell_word
from .secrets import printable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the kit runs unlocked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}


def lock_run_folder(run: Path) -> None:
    """Take the run folder's lock for this process (again: nothing to do), or refuse naming its holder."""
    key = run.resolve()
    if fcntl is None or key in _held:
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(run / LOCK_FILE, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
        problem = not_a_private_file(os.fstat(fd))  # a pipe, a device or a hard link: not truncated, not written
        if problem:
            os.close(fd)
            raise OSError(0, problem)
    except OSError as err:
        raise _cannot_lock(run, err) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise MedQLoRAError(
            f"Another medqlora command{f' (process {printable(holder, 20)})' if holder else ''} is using the run "
            f"folder {printable(run)} right now: training, resuming, evaluating or exporting it. Two commands in one "
            "run folder would mix their checkpoints and log lines. Wait for that one to end (or stop it), then run "
            "this command again.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def _cannot_lock(run: Path, err: OSError) -> MedQLoRAError:
    """The lock file cannot be opened for writing: the folder's file system (read-only, full), or something other
    than a regular file the kit may write at .lock (only that is for the user to remove)."""
    lock = printable(run / LOCK_FILE)
    if err.errno == errno.EROFS:
        return MedQLoRAError(
            f"Cannot write in the run folder {printable(run)}: it is on a read-only file system (a read-only mount, "
            f"a write-protected card), and this command writes its lock ({LOCK_FILE}) and its results there. Copy the "
            f"run folder to a writable place (cp -r {shell_word(run)} <folder>) and give that copy to --adapter (or "
            "--resume).")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return MedQLoRAError(f"Cannot create {lock}, the run folder's lock file: {err.strerror}. Free some space "
                             "there and run the command again.")
    if err.errno in (errno.EACCES, errno.EPERM):
        return MedQLoRAError(
            f"Cannot open {lock} ({err.strerror}): you may not write the run folder's lock file (the folder or its "
            f"{LOCK_FILE} belongs to another user, or is not writable), and this command writes its lock and results "
            f"there. Run it as the folder's owner, make the folder writable, or copy the run folder to a place you own "
            f"(cp -r {shell_word(run)} <folder>) and give that copy to --adapter (or --resume).")
    return MedQLoRAError(f"Cannot open {lock} ({err.strerror}): the run folder's lock file must be a regular file "
                         "the kit can write. Remove whatever is there.")


def lock_holder(run: Path) -> str | None:
    """Whether another process holds the run folder's lock now (a training still running): the process id it wrote
    there ('' when unreadable), or None when nobody holds it. Takes nothing: a shared lock tried and let go."""
    if fcntl is None or run.resolve() in _held:
        return None
    try:
        fd = os.open(run / LOCK_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # no lock file (never locked, or an older kit's run) or not a file: nobody to name
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def release_run_folders() -> None:
    """Release every run folder this process holds (at the end of a command)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()
