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


def test_training_off_a_terminal_prints_its_logged_lines_without_bar_lines(tiny_model_dir, tmp_path, capsys):
    from medqlora.cli import main

    from .conftest import kit_argv

    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"training.max_steps": "2",
                                                                         "training.logging_steps": "1"})) == 0
    captured = capsys.readouterr()
    assert "'loss':" in captured.out  # each logged step, as the Trainer prints it
    assert "it/s]" not in captured.err + captured.out and "s/it]" not in captured.err + captured.out
