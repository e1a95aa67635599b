"""Preemption: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 end a run the way Ctrl-C does.

Colab, SLURM and Kubernetes send SIGTERM (a closed terminal sends SIGHUP) some seconds before they take
the machine away; SLURM's --signal=USR1@<seconds> sends SIGUSR1 (or the one named) before a time limit,
whose default action would kill the process without a word. The first signal raises KeyboardInterrupt in
the main thread, so training saves the adapter trained so far and the manifest says "interrupted"; a second
signal, of any of these, ends the process at once (exit code 128 + the signal's number), after a quick record of
the stop in the run's manifest (on_second_signal).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_received: int | None = None
_exiting = False
_last_words: list[Callable[[int], str | None]] = []  # what to record and say before a second signal's exit


def received() -> int | None:
    """The first signal this process was stopped by (None: none)."""
    return _received


def name(signum: int | None) -> str:
    return "Ctrl-C" if signum in (None, signal.SIGINT) else signal.Signals(signum).name


def exit_code() -> int:
    return 128 + (_received or signal.SIGINT)


def _stop(signum: int, frame: Any) -> None:
    global _received, _exiting
    if _exiting:
        os._exit(128 + signum)
    if _received is not None:  # the second signal: the user (or the scheduler) wants out now
        _exiting = True
        _say_last_words(signum)
        os._exit(128 + signum)
    else:
        _received = signum
        raise KeyboardInterrupt


@contextmanager
def on_second_signal(last_words: Callable[[int], str | None]) -> Iterator[None]:
    """In the block, a second signal (which ends the process at once) first calls ``last_words``: a quick record of
    the stop (the manifest's status), returning the one line to print, or None."""
    _last_words.append(last_words)
    try:
        yield
    finally:
        _last_words.remove(last_words)


def _say_last_words(signum: int) -> None:
    for last_words in reversed(_last_words):
        try:
            said = last_words(signum)
        except BaseException:  # noqa: BLE001 (exiting anyway: a record that fails must not stop the exit)
            continue
        if said:
            with suppress(OSError):
                os.write(2, f"medqlora: {said}\n".encode("utf-8", "replace"))


@contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """While the kit runs, these signals interrupt it like Ctrl-C (the handlers before are put back)."""
    global _received, _exiting
    if threading.current_thread() is threading.main_thread():
        _received, _exiting = None, False  # this command's signal, not one an earlier command in this process got
    with _handled_by(_stop):
        yield


@contextmanager
def stop_at_once() -> Iterator[None]:
    """For a wait inside C code (the process group's rendezvous), where Python's handlers never get to run: the
    signals end the process at once, as they would without the kit (nothing is trained yet to save)."""
    with _handled_by(signal.SIG_DFL):
        yield


@contextmanager
def deferred() -> Iterator[None]:
    """Signals that arrive in the block act at its end, as the handlers outside it take them: for starting a child
    process, whose handle must exist before an interruption can stop it."""
    caught: list[int] = []
    with _handled_by(lambda signum, frame: caught.append(signum)):
        yield
    if caught:
        signal.raise_signal(caught[0])


@contextmanager
def _handled_by(handler: Any) -> Iterator[None]:
    """The signals go to ``handler`` for the block, then to the handlers before (only the main thread may
    set handlers: elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
