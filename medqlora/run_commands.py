"""The commands the kit's messages suggest for an existing run folder: finish its evaluation or its sample answers,
continue its training from a checkpoint, use its adapter as it is. Each one carries the run's own config.yaml
(``--config RUN/config.yaml``), so that, run as printed, it works with the run's settings (its benchmarks and their
max_items, its queries file, where runs go, whether --mode full evaluates), not with the default config's.

    python medical_qlora_finetuning.py --mode eval --config outputs/<run>/config.yaml --adapter outputs/<run>
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .config.base import PATH_SHOWN
from .run_files import Files
from .secrets import printable

KIT = "python medical_qlora_finetuning.py"


def shell_word(path: str | os.PathLike) -> str:
    """``path`` as one word of a shell command (quoted where it holds blanks or quotes), printable."""
    return shlex.quote(printable(os.fspath(path), PATH_SHOWN))


def on_run(flag: str, run: str | os.PathLike) -> str:
    """``--config RUN/config.yaml FLAG RUN``: the options of a command that works on the run folder ``run`` (FLAG:
    --adapter or --resume) with the settings it ran with."""
    return f"--config {shell_word(Path(run) / Files.CONFIG)} {flag} {shell_word(run)}"


def command_on_run(mode: str, flag: str, run: str | os.PathLike) -> str:
    """The whole command line: ``python medical_qlora_finetuning.py --mode MODE`` and :func:`on_run`."""
    return f"{KIT} --mode {mode} {on_run(flag, run)}"
