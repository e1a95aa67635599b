"""What every command of the kit shares, from the command line or from Python: the names of the modes, and the
scope one command runs in (its own run.log, SIGTERM / SIGHUP / SIGUSR1 / SIGUSR2 ending it like Ctrl-C, its run
folders released at the end). Light on purpose: ``--help`` and argument checks import it before any model code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import messages, signals
from .run_lock import release_run_folders

MODES = ("train", "test", "eval", "full", "export", "chat")
TRAINING_MODES = ("train", "full")  # train an adapter; --resume continues one of theirs
ADAPTER_MODES = ("test", "eval", "export", "chat")  # use an adapter: --adapter


@contextmanager
def command() -> Iterator[None]:
    """One command: an earlier command's run.log (in this process) gets nothing of it, a preemption signal ends it
    the way Ctrl-C does, and another command (a notebook cell's ``!python ... --resume``) may use its run folders
    once it is over."""
    messages.begin_command()
    try:
        with signals.stop_like_ctrl_c():
            yield
    finally:
        release_run_folders()
