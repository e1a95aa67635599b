"""Progress bars: shown with items/s and the time left on a terminal, silent in a pipe or a log file."""

from __future__ import annotations

import io

from medqlora.progress import bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_items_per_second_and_the_time_left():
    stream = Terminal()
    with bar(10, "scoring", stream) as progress:
        for _ in range(10):
            progress.update(1)
    shown = stream.getvalue()
    assert "scoring: " in shown and "/10" in shown and "item/s" in shown and "<" in shown


def test_a_pipe_gets_nothing():
    stream = io.StringIO()
    with bar(10, "scoring", stream) as progress:
        progress.update(10)
    assert stream.getvalue() == ""
