"""Run folders: one per run, never overwritten, every file written atomically, a manifest to reproduce it.

Everything the kit writes, appends or copies in a run folder goes through ``RunDir``: a name is taken
relative to the run folder, may not leave it, and neither it nor any folder between it and the run
folder may be a symbolic link; files are created with O_NOFOLLOW | O_CREAT | O_EXCL under a temporary
name and renamed over the target, and run.log is opened with O_NOFOLLOW | O_APPEND. A link planted in
a run folder therefore stops the kit with a message instead of redirecting a write elsewhere.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import adapters
from .config import KitConfig
from .distributed import is_main
from .errors import MedQLoRAError
from .messages import log_to, say
from .regular_files import not_a_private_file
from .run_files import Files
from .run_lock import lock_run_folder
from .run_names import (
    check_name_fits,
    check_output_dir,
    check_run_folder_free,
    check_run_name,
    default_run_name,
    make_run_folder,
    run_folder_taken,
)
from .run_commands import shell_word
from .secrets import RedactingFilter, printable, redact
from .write_errors import in_place_advice, is_write_error, write_advice

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(MedQLoRAError):
    """A write into a run folder would follow a symbolic link or leave the folder."""


def _link_error(run: Path, rel: str, where: Path) -> UnsafePathError:
    try:
        target = f" (to {printable(os.readlink(where))})"
    except OSError:
        target = ""
    return UnsafePathError(
        f"{printable(where)} is a symbolic link{target}: the kit never writes through links in a run folder "
        f"({printable(run)}). Remove the link (or copy the run to a new folder with real files) and run again."
    )


def _parts(name: str | Path) -> list[str]:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise UnsafePathError(f"'{printable(name)}' is not a plain name inside the run folder.")
    return list(parts)


def _open_parent(root: Path, name: str | Path, create: bool = False) -> tuple[int, str, Path]:
    """A file descriptor of the folder that will hold ``name`` (inside ``root``), walked component by component
    without following links; the last component; and the checked path."""
    parts = _parts(name)
    try:
        fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as err:
        raise MedQLoRAError(f"Cannot open the run folder {printable(root)}: {err.strerror}.") from None
    here = root
    try:
        for part in parts[:-1]:
            here = here / part
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(here):
                    raise _link_error(root, str(name), here) from None
                raise MedQLoRAError(f"Cannot open {printable(here)}: {err.strerror}.") from None
            os.close(fd)
            fd = child
        last = parts[-1]
        try:
            if stat.S_ISLNK(os.lstat(last, dir_fd=fd).st_mode):
                raise _link_error(root, str(name), here / last)
        except FileNotFoundError:
            pass
        return fd, last, here / last
    except BaseException:
        os.close(fd)
        raise


def _write_inside(root: Path, name: str | Path, data: bytes) -> Path:
    """Write ``data`` to root/name through a temporary file created without following links, then rename it."""
    fd, last, target = _open_parent(root, name, create=True)
    tmp = f".{last}.{os.getpid()}.tmp"
    try:
        try:
            os.unlink(tmp, dir_fd=fd)  # left over by a crash (a link is removed, never followed)
        except FileNotFoundError:
            pass
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as handle:
                handle.write(data)
            os.replace(target.with_name(tmp), target)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            raise
    except UnsafePathError:
        raise
    except OSError as err:
        raise _write_failed("write", target, err, root) from None
    finally:
        os.close(fd)
    return target


def atomic_write(path: Path, text: str) -> None:
    """Write then rename, so a crash never leaves a half-written file behind. Credentials are masked. The
    file's folder is the boundary: a link at ``path`` is refused, never followed."""
    _write_inside(Path(path).parent, Path(path).name, redact(text).encode("utf-8"))


def write_file_bytes(path: Path, data: bytes) -> None:
    """Binary counterpart of ``atomic_write`` (figures): ``path``'s folder is the boundary."""
    _write_inside(Path(path).parent, Path(path).name, data)


# the files the kit appends to in place (every other file is written anew and renamed over the old one), and what
# each holds, for the message that refuses one that is not the run folder's own regular file
APPENDED = {Files.RUN_LOG: "its log", Files.GRPO_SAMPLES: "GRPO's sample completions"}


def _not_appendable(target: Path, problem: str) -> UnsafePathError:
    return UnsafePathError(f"{printable(target)} {problem}; the kit appends {APPENDED[target.name]} to a file of the "
                           "run folder only. Remove it (the kit starts a new one).")


def _open_append(run: Path, name: str) -> int:
    """A file descriptor appending to ``name`` in the run folder, opened with O_NOFOLLOW | O_APPEND (a link there is
    refused, never followed) and O_NONBLOCK (a named pipe with no reader is refused, not waited on); a pipe, a
    device or a hard link to a file elsewhere is refused before anything is written."""
    fd, last, target = _open_parent(run, name)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
    try:
        out = os.open(last, flags, 0o644, dir_fd=fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _link_error(run, name, target) from None
        if err.errno == errno.ENXIO:  # the O_NONBLOCK answer of a named pipe that nothing reads
            raise _not_appendable(target, "is not a regular file (a named pipe)") from None
        raise MedQLoRAError(f"Cannot write {printable(target)}: {err.strerror}.") from None
    finally:
        os.close(fd)
    problem = not_a_private_file(os.fstat(out))
    if problem:
        os.close(out)
        raise _not_appendable(target, problem)
    os.set_blocking(out, True)
    return out


TAIL_SEARCHED = 1 << 20


def _after_a_cut_line(fd: int, target: Path) -> str:
    """What goes before the next text appended to a file whose last line was cut (a kill -9 during a write, then
    --resume): a JSONL file loses its cut record, which no reader can parse (said), so that the file stays one record
    a line; a text file (run.log) has its line ended. '' when the file ends a line (or is empty)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return ""
    start = max(0, size - TAIL_SEARCHED)
    tail = os.pread(fd, size - start, start)
    end = tail.rfind(b"\n")
    if target.suffix != ".jsonl" or (end < 0 and start > 0):
        return "\n"
    os.ftruncate(fd, start + end + 1)
    say(f"warning: {printable(target)} ended in a cut record ({size - start - end - 1} bytes, a command stopped while "
        "writing it): that record is dropped, the new ones follow the last whole one")
    return ""


def _open_log(run: Path) -> Any:
    """run.log for appending, through ``_open_append``; a line a killed command left cut is ended first."""
    fd = _open_append(run, Files.RUN_LOG)
    os.write(fd, _after_a_cut_line(fd, run / Files.RUN_LOG).encode())
    return os.fdopen(fd, "a", encoding="utf-8")


class _RunLogHandler(logging.FileHandler):
    """A FileHandler on run.log whose every (re)opening goes through ``_open_log``."""

    def __init__(self, run: Path) -> None:
        self._run = run
        super().__init__(run / Files.RUN_LOG, mode="a", encoding="utf-8")

    def _open(self) -> Any:
        return _open_log(self._run)

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that cannot be written (a full disk, a file-size limit): lost, quietly. Python's default prints
        '--- Logging error ---' and a traceback on stderr for every line; the kit's own writes (the manifest, a
        checkpoint) meet the same disk and say what to change, in one message."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


_MADE_HERE: set[str] = set()  # the run folders this command created (absolute paths)


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, cfg: KitConfig, output_dir: str | None = None, generated_name: bool | None = None) -> RunDir:
        if output_dir is not None and not output_dir.strip():
            raise MedQLoRAError("--output-dir is empty (an unset shell variable?): name a folder, or leave the option "
                                "out for output.dir.")
        root = Path(output_dir or cfg.output.dir).expanduser()
        name = cfg.output.run_name or default_run_name(cfg)
        check_run_name(name)
        check_output_dir(root)
        check_name_fits(root, name)
        path = root / name
        generated = not cfg.output.run_name if generated_name is None else generated_name
        if not generated:
            check_run_folder_free(root, name)
        try:
            root.mkdir(parents=True, exist_ok=True)  # a linked output folder is the user's choice
            path = make_run_folder(root, name, generated)
        except FileExistsError:  # made by another process since the check
            raise run_folder_taken(path) from None
        except OSError as err:
            advice = " Choose a shorter output.run_name or --output-dir." if err.errno == errno.ENAMETOOLONG else ""
            raise MedQLoRAError(f"Cannot create the run folder {printable(path)}: {err.strerror}.{advice}") from None
        _MADE_HERE.add(os.path.abspath(path))
        run = cls(path)
        run.start_log()
        return run

    def check_links(self) -> None:
        """An existing run folder about to be written: no entry the kit writes may be a link (only the
        adapter folders, which the kit reads or renames, may be)."""
        if self.path.is_symlink() and not self.path.is_dir():
            raise _link_error(self.path, ".", self.path)
        try:
            entries = list(os.scandir(self.path))
        except OSError as err:
            raise MedQLoRAError(f"Cannot read the run folder {printable(self.path)}: {err.strerror}.") from None
        for entry in entries:
            if entry.is_symlink() and not (entry.name.startswith("adapter") and entry.is_dir()):
                raise _link_error(self.path, entry.name, Path(entry.path))
            if entry.is_symlink():
                self._refuse_adapter_link_out(Path(entry.path))
        for entry in entries:  # checked before any work, not only when the first line is appended
            if entry.name in APPENDED:
                problem = not_a_private_file(entry.stat(follow_symlinks=False))
                if problem:
                    raise _not_appendable(Path(entry.path), problem)

    def _refuse_adapter_link_out(self, link: Path) -> None:
        """An adapter folder of the run that is a link (to one of its checkpoints, say) stays inside the run folder:
        one leading out of it would make the kit read, and an export copy, a folder a run folder from elsewhere
        names (a home folder's keys)."""
        target = link.resolve()
        if target.is_relative_to(self.path.resolve()):
            return
        raise UnsafePathError(
            f"{printable(link)} is a symbolic link to {printable(target)}, outside its run folder "
            f"({printable(self.path)}): the kit does not read through links out of a run folder. To use that adapter, "
            f"give its folder itself (--adapter {printable(target)}); or put a copy of it in place of the link.")

    def start_log(self) -> None:
        """Log to this run's run.log (and only this run's: a previous run's handler is closed)."""
        self.check_links()
        if not is_main():
            return
        lock_run_folder(self.path)
        handler = _RunLogHandler(self.path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(RedactingFilter())
        log_to(handler)

    @property
    def adapter(self) -> Path:
        return self.path / Files.ADAPTER

    def inside(self, name: str | Path) -> Path:
        """``self.path / name``, checked: a plain relative name, no link at it or on the way to it. For writers
        that need a path (save_pretrained, a converter): they write where the kit checked."""
        fd, _, target = _open_parent(self.path, name)
        os.close(fd)
        return target

    def fresh_dir(self, name: str) -> Path:
        """An empty folder ``name`` in the run folder, created here (a leftover of a crash is removed first; a
        link there is refused, never followed or emptied)."""
        fd, last, target = _open_parent(self.path, name, create=True)
        try:
            try:
                mode = os.lstat(last, dir_fd=fd).st_mode
                if stat.S_ISDIR(mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(last, dir_fd=fd)
            except FileNotFoundError:
                pass
            os.mkdir(last, 0o755, dir_fd=fd)
        except OSError as err:
            raise _write_failed("create", target, err, self.path) from None
        finally:
            os.close(fd)
        return target

    def write_json(self, name: str, payload: Any) -> None:
        if is_main():  # data parallel: only the main process writes the run folder
            self.write_text(name, json.dumps(payload, indent=2, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        if is_main():
            _write_inside(self.path, name, redact(text).encode("utf-8"))

    def append_text(self, name: str, text: str) -> None:
        """Append ``text`` (credentials masked) to ``name``, one of the files the kit appends to (``APPENDED``)."""
        if is_main():
            with os.fdopen(_open_append(self.path, name), "a", encoding="utf-8") as handle:
                handle.write(_after_a_cut_line(handle.fileno(), self.path / name) + redact(text))

    def write_bytes(self, name: str, data: bytes) -> None:
        if is_main():
            _write_inside(self.path, name, data)

    def copy_in(self, source: Path, name: str | Path) -> None:
        """Copy the regular file ``source`` (opened without following a link) to ``name`` in the run folder."""
        try:
            fd = os.open(source, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _link_error(source.parent, source.name, source) from None
            raise MedQLoRAError(f"Cannot read {printable(source)}: {err.strerror}.") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UnsafePathError(f"{printable(source)} is not a regular file.")
            data = handle.read()
        _write_inside(self.path, name, data)

    def unique(self, name: str) -> str:
        """``name`` if free in the run folder, else name-<timestamp>: earlier results are never overwritten.
        A link at the name is refused (it is taken by something the kit did not write)."""
        def taken(candidate: str) -> bool:
            where = self.path / candidate
            if where.is_symlink():
                raise _link_error(self.path, candidate, where)
            return where.exists()

        if not taken(name):
            return name
        stem, dot, suffix = name.partition(".")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate, n = f"{stem}-{stamp}{dot}{suffix}", 1
        while taken(candidate):
            n += 1
            candidate = f"{stem}-{stamp}-{n}{dot}{suffix}"
        return candidate


def latest_run_with_adapter(root: Path, flag: str = "--adapter") -> Path:
    """The newest run folder under root with an adapter. A run folder that is a link, or that resolves outside
    root, is passed over: results are written into the run folder, and never through a link out of root."""
    inside = root.resolve()
    runs = [p for p in root.glob(f"*/{Files.ADAPTER}/{adapters.CONFIG_NAME}")
            if not p.parent.parent.is_symlink() and p.resolve().is_relative_to(inside)] if root.is_dir() else []
    if not runs:
        raise MedQLoRAError(
            f"No trained adapter found under {printable(root)}. Train one first (--mode train or full), or "
            + ("pass --adapter PATH." if flag == "--adapter" else f"set {flag} to a run folder or adapter folder.")
        )
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def size_mb(path: Path) -> float:
    """Size of a file, or of everything in a folder, in MB."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)


def _write_failed(verb: str, target: Path, err: OSError, run: Path) -> MedQLoRAError:
    """One message for a write in the run folder ``run`` the OS refused: what the failure says to change (a full
    disk, a file-size limit, a read-only file system, no permission), else its own words. A run folder this command
    did not make (test, eval and export of a run write into it) is not moved by --output-dir: its copy is the way."""
    if not is_write_error(err):
        advice = "Check that folder" + ("" if not _made_here(target) else " and --output-dir")
    elif not _made_here(target):
        advice = in_place_advice(err, f"cp -r {shell_word(run)} <folder>")
    else:
        advice = write_advice(err)
    return MedQLoRAError(f"Cannot {verb} {printable(target)}: {err.strerror or err}. {advice}.")


def forget_run_folders_made() -> None:
    """A new command: the run folders of earlier commands of this process are not its own."""
    _MADE_HERE.clear()


def made_here() -> list[str]:
    """The run folders this command created (absolute paths)."""
    return sorted(_MADE_HERE)


def remove_empty_run_folders() -> None:
    """The run folders this command created that hold nothing but their lock (and an empty run.log) are removed: a
    command stopped at its start (a full disk) would otherwise leave a folder that takes the run's name, which the
    same command run again refuses as existing and --resume as no run folder."""
    from .run_lock import LOCK_FILE

    for made in sorted(_MADE_HERE):
        try:
            entries = list(os.scandir(made))
            if all(entry.is_file(follow_symlinks=False) and (entry.name == LOCK_FILE or (
                    entry.name == Files.RUN_LOG and entry.stat(follow_symlinks=False).st_size == 0))
                   for entry in entries):
                for entry in entries:
                    os.unlink(entry.path)
                os.rmdir(made)
                _MADE_HERE.discard(made)
        except OSError:
            continue


def _made_here(target: Path) -> bool:
    """Whether ``target`` lies in a run folder this command created."""
    where = os.path.abspath(target)
    return any(where == made or where.startswith(made + os.sep) for made in _MADE_HERE)
