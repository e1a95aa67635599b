"""Standard output that cannot be written (``> plan.json`` on a full disk, ``> /dev/full``, an I/O error) ends the
command in exit 2 with a message on stderr (run_mode from Python: raises OutputLost, guarded_call): a script that saved ``--dry-run`` or a ``--prompt`` answer must not
get success and an empty file. The command itself goes on (a training run is not stopped by its progress lines),
what it prints after the failure goes to the null device, and the message comes when it ends. A reader that went
away (``| head -2``: a broken pipe, on stdout or on stderr) stops nothing either: the command goes on to its end
quietly (its run folder and run.log keep what it did and said) and exits with its own code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

from .errors import OutputLost
from .secrets import printable

T = TypeVar("T")


class GuardedStdout:
    """sys.stdout as the command writes it: every write and flush checked, the first failure kept."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self.failure is None:
            with self._checked():
                return self._stream.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.failure is None:
            with self._checked():
                self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer, ... of the real stream
        return getattr(self._stream, name)

    @contextlib.contextmanager
    def _checked(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            self.failure = err
            _to_null_device(self._stream)  # what is still buffered, and Python's flush at exit, fail no more

    def message(self) -> str:
        """The one line that says what was lost, and what to do."""
        reason = os.strerror(self.failure.errno) if self.failure and self.failure.errno else str(self.failure)
        return (f"standard output could not be written ({printable(reason, 200)}): what the command printed there "
                "is lost (a --dry-run plan, a --prompt answer, progress lines). Free space where it goes, or send it "
                "to another file or disk, and run the command again; a run folder's run.log keeps what the run "
                "said.")


def _to_null_device(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # a capture of a test or a notebook: no descriptor to redirect
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


@contextlib.contextmanager
def guarded_stdout() -> Iterator[GuardedStdout]:
    """sys.stdout guarded for one command (then given back); its buffer flushed at the end, inside the guard, so
    that a failure of the last write is seen too. sys.stderr is guarded too, quietly: a progress bar written to a
    pipe whose reader went away (``2>&1 | head``) must not stop a training run."""
    real, real_err = sys.stdout, sys.stderr
    guard = GuardedStdout(real)
    sys.stdout, sys.stderr = guard, GuardedStdout(real_err)
    try:
        yield guard
    finally:
        with contextlib.suppress(OSError):
            guard.flush()
        sys.stdout, sys.stderr = real, real_err


def lost_output(guard: GuardedStdout) -> bool:
    """Whether what the command printed was lost to a write that failed (a broken pipe is the reader's choice)."""
    return guard.failure is not None and not reader_went_away(guard)


def reader_went_away(guard: GuardedStdout) -> bool:
    """Whether stdout's reader went away while the command ran (a broken pipe: `| head`, a closed terminal)."""
    return guard.failure is not None and guard.failure.errno == errno.EPIPE


READER_GONE = ("standard output was closed by its reader (a broken pipe: the program reading it, `| head` or a closed "
               "notebook or terminal, went away); the command went on to its end, and what it printed after is lost "
               "(its run folder keeps its results and run.log what it said). Send its output where it can be written "
               "whole (a file) to see it.")


def guarded_call(work: Callable[[], T]) -> T:
    """``work`` (one command of run_mode) with stdout guarded as the command line guards it: a write that fails does not
    stop it, and when it ends OutputLost is raised with the message the command line gives (and its result kept on
    it), also where the reader went away (a broken pipe), never a raw BrokenPipeError or OSError."""
    with guarded_stdout() as guard:
        try:
            result = work()
        except BaseException as err:
            if guard.failure is not None:
                err.add_note(f"medqlora: (and {READER_GONE if reader_went_away(guard) else guard.message()})")
            raise
    if guard.failure is not None:
        raise OutputLost(READER_GONE if reader_went_away(guard) else guard.message(), result)
    return result
