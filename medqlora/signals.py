"""Preemption: SIGTERM and SIGHUP end a run the way Ctrl-C does.

Colab, SLURM and Kubernetes send SIGTERM (a closed terminal sends SIGHUP) some seconds before they take
the machine away. The first signal raises KeyboardInterrupt in the main thread, so training saves the
adapter trained so far and the manifest says "interrupted"; a second signal, of any of the three, ends
the process at once (exit code 128 + the signal's number).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: int | None = None


def received() -> int | None:
    """The first signal this process was stopped by (None: none)."""
    return _received


def name(signum: int | None) -> str:
    return "Ctrl-C" if signum in (None, signal.SIGINT) else signal.Signals(signum).name


def exit_code() -> int:
    return 128 + (_received or signal.SIGINT)


def _stop(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        os._exit(128 + signum)  # the second signal: the user (or the scheduler) wants out now
    else:
        _received = signum
        raise KeyboardInterrupt


@contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """While the kit runs, the three signals interrupt it like Ctrl-C (the handlers before are put back)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {sig: signal.signal(sig, _stop) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_at_once() -> Iterator[None]:
    """For a wait inside C code (the process group's rendezvous), where Python's handlers never get to run: the
    three signals end the process at once, as they would without the kit (nothing is trained yet to save)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
