"""Progress bars where the kit waits: evaluation, sample answers, export checks. Items/s and the time left, on
the main process only, and only on a terminal (a log file or a pipe gets no bar lines)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .distributed import is_main


def bar(total: int, what: str, stream: TextIO | None = None) -> Any:
    """A tqdm bar of ``total`` items, silent when ``stream`` (stderr) is not a terminal or this is not the main
    process; use it as a context manager and call ``update(n)``."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    return tqdm(total=total, desc=what, unit="item", file=stream, disable=not bars_shown(stream), leave=False, dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} {bar} [{elapsed}<{remaining}, {rate_fmt}]")


def bars_shown(stream: TextIO | None = None) -> bool:
    """Whether progress bars are drawn: on the main process, and only when ``stream`` (stderr) is a terminal."""
    return is_main() and (stream or sys.stderr).isatty()


def library_bars_follow_the_terminal() -> None:
    """transformers (loading weights) and huggingface_hub (downloads) draw bars of their own: shown where the kit's
    are, left out of a log file or a pipe (call it after Unsloth is imported: it imports transformers)."""
    from transformers.utils import logging as transformers_logging

    if bars_shown():
        transformers_logging.enable_progress_bar()
    else:
        transformers_logging.disable_progress_bar()
