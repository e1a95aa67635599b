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
    shown = is_main() and stream.isatty()
    return tqdm(total=total, desc=what, unit="item", file=stream, disable=not shown, leave=False, dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} {bar} [{elapsed}<{remaining}, {rate_fmt}]")
