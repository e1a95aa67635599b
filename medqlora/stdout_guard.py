"""Standard output that cannot be written (``> plan.json`` on a full disk, ``> /dev/full``, an I/O error) ends the
command in exit 2 with a message on stderr (run_mode from Python: raises OutputLost, guarded_call): a script that saved ``--dry-run`` or a ``--prompt`` answer must not
get success and an empty file. The command itself goes on (a training run is not stopped by its progress lines),
what it prints after the failure goes to the null device, and the message comes when it ends. A reader that went
away (``| head -1``: a broken pipe) stays quiet: the command ends there with exit 1, as before.
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
            if isinstance(err, BrokenPipeError):
                raise  # the reader went away: the command line ends quietly (exit 1)

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
    that a failure of the last write is seen too."""
    real = sys.stdout
    guard = GuardedStdout(real)
    sys.stdout = guard
    try:
        yield guard
    finally:
        with contextlib.suppress(BrokenPipeError):
            guard.flush()
        sys.stdout = real


def lost_output(guard: GuardedStdout) -> bool:
    """Whether what the command printed was lost to a write that failed (a broken pipe is the reader's choice)."""
    return guard.failure is not None and guard.failure.errno != errno.EPIPE


def guarded_call(work: Callable[[], T]) -> T:
    """``work`` (one command of run_mode) with stdout guarded as the command line guards it: a write that fails does not
    stop it, and when it ends OutputLost is raised with the message the command line gives (and its result kept on
    it). A reader that went away (a broken pipe) stops it, as on the command line: OutputLost too, never a raw
    BrokenPipeError or OSError."""
    with guarded_stdout() as guard:
        try:
            result = work()
        except BrokenPipeError:
            raise OutputLost("standard output was closed by its reader (a broken pipe: the program reading it, `| head` "
                             "or a closed notebook or terminal, went away), so the command stopped at what it printed "
                             "next. Send its output where it can be written whole (a file), and run it again.") from None
        except BaseException as err:
            if lost_output(guard):
                err.add_note(f"medqlora: (and {guard.message()})")
            raise
    if lost_output(guard):
        raise OutputLost(guard.message(), result)
    return result
