"""The commands the kit's messages suggest for an existing run folder: finish its evaluation or its sample answers,
continue its training from a checkpoint, use its adapter as it is. Each one carries the run's own config.yaml
(``--config RUN/config.yaml``), so that, run as printed, it works with the run's settings (its benchmarks and their
max_items, its queries file, where runs go, whether --mode full evaluates), not with the default config's.

    python medical_qlora_finetuning.py --mode eval --config outputs/<run>/config.yaml --adapter outputs/<run>
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from .config.base import PATH_SHOWN
from .run_files import Files, manifest_value
from .secrets import printable

SCRIPT = "medical_qlora_finetuning.py"


def kit_command() -> str:
    """How to start the kit again from the folder this command runs in: ``medqlora`` where it was started by that
    name, the script's own path where it was run from another folder (``python /opt/kit/medical_qlora_finetuning.py``),
    else ``python medical_qlora_finetuning.py``."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path(SCRIPT)
    if started.name == "medqlora":
        return "medqlora"
    if started.name == SCRIPT:
        try:
            if started.resolve().parent != Path.cwd().resolve():
                return f"python {shell_word(started.resolve())}"
        except OSError:  # the working folder removed meanwhile
            return f"python {shell_word(started.absolute())}"
    return f"python {SCRIPT}"


def shell_word(path: str | os.PathLike) -> str:
    """``path`` as one word of a shell command (quoted where it holds blanks or quotes), printable."""
    return shlex.quote(printable(os.fspath(path), PATH_SHOWN))


def on_run(flag: str, run: str | os.PathLike) -> str:
    """``--config RUN/config.yaml FLAG RUN``: the options of a command that works on the run folder ``run`` (FLAG:
    --adapter or --resume) with the settings it ran with."""
    return f"--config {shell_word(Path(run) / Files.CONFIG)} {flag} {shell_word(run)}"


_resuming_mode = ["train"]  # the mode of this command where it trains (train or full): the one a resume repeats


def note_training_mode(mode: str) -> None:
    """Remember this command's mode where it trains, for the advice on continuing the run (--mode full resumes as
    full: evaluation after training included; --mode train as train)."""
    if mode in ("train", "full"):
        _resuming_mode[0] = mode


def resume_command(run: str | os.PathLike) -> str:
    """The whole command line that continues the run ``run`` in this command's mode."""
    return command_on_run(_resuming_mode[0], "--resume", run)


def continue_advice(run: str | os.PathLike) -> str:
    """How to finish the run ``run`` whose training stopped: its --resume where it saved a checkpoint; else, as
    --resume would refuse it, training it again."""
    from .checkpoint_files import checkpoint_folders

    if any((folder / "trainer_state.json").is_file() for folder in checkpoint_folders(Path(run) / Files.CHECKPOINTS)):
        return f"Continue from its last checkpoint with {resume_command(run)}"
    return ("It stopped before its first checkpoint (training.save_steps), so --resume cannot continue it: run the "
            "same command again to train it from the start as a new run")


def recorded_resume_command(run: str | os.PathLike) -> str:
    """The command line that continues the run ``run`` in the mode its manifest.json records it was run in (full or
    train; train where none is recorded)."""
    command = manifest_value(run, "command")
    mode = "train"
    if isinstance(command, list):
        words = [str(word) for word in command]
        given = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--mode"]
        given += [word.split("=", 1)[1] for word in words if word.startswith("--mode=")]
        mode = "full" if (given[-1] if given else "full") == "full" else "train"  # the command line's default: full
    return command_on_run(mode, "--resume", run)


def command_on_run(mode: str, flag: str, run: str | os.PathLike) -> str:
    """The whole command line: ``python medical_qlora_finetuning.py --mode MODE`` and :func:`on_run`."""
    return f"{kit_command()} --mode {mode} {on_run(flag, run)}"
