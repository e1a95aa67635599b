"""What every command of the kit shares, from the command line or from Python: the names of the modes, the options
the command line adds to the config, the Run a mode returns, and the scope one command runs in (its own run.log,
SIGTERM / SIGHUP / SIGUSR1 / SIGUSR2 ending it like Ctrl-C, its run folders released at the end). Light on
purpose: ``--help`` and argument checks import it before any model code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import messages, signals
from .run_files import Files
from .run_lock import release_run_folders

MODES = ("train", "test", "eval", "full", "export", "chat")
TRAINING_MODES = ("train", "full")  # train an adapter; --resume continues one of theirs
ADAPTER_MODES = ("test", "eval", "export", "chat")  # use an adapter: --adapter


@dataclass
class Options:
    """What the command line adds to the config: where runs go, which adapter, which run to continue."""

    output_dir: str | None = None
    adapter: str | None = None  # test, eval, export, chat: a run folder, an adapter folder, latest or none
    resume: str | None = None  # train, full: a run folder or latest
    baseline: bool = True  # eval: score the base model too
    prompt: str | None = None  # chat: one question, answered to stdout
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    """What a mode leaves: its run folder (None for chat) and the end-of-run summary it printed (text lines)."""

    path: Path | None
    summary: dict[str, Any]

    @property
    def adapter(self) -> Path | None:
        """The adapter a training run saved (its adapter/ folder); None where the mode trained none."""
        folder = self.path / Files.ADAPTER if self.path else None
        return folder if folder is not None and folder.is_dir() else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The training figures of metrics.json (loss, steps, tokens/s, perplexity...); {} where none were trained."""
        file = self.path / Files.METRICS if self.path else None
        if file is None or not file.is_file():
            return {}
        return json.loads(file.read_text(encoding="utf-8")).get("metrics", {})


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
