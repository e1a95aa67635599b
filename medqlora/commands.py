"""What every command of the kit shares, from the command line or from Python: the names of the modes, the options
the command line adds to the config, the Run a mode returns, and the scope one command runs in (its own run.log,
SIGTERM / SIGHUP / SIGUSR1 / SIGUSR2 ending it like Ctrl-C, its run folders released at the end). Light on
purpose: ``--help`` and argument checks import it before any model code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed, environment, json_text, messages, signals
from .config import PATH_SHOWN, KitConfig, has_control_characters, revalidate
from .errors import ConfigError
from .rows import invisible
from .run_files import Files
from .run_lock import release_run_folders
from .secrets import printable, unpaired_surrogate
from .shown_paths import quoted_path, spelling_problem

MODES = ("train", "test", "eval", "full", "export", "chat")
TRAINING_MODES = ("train", "full")  # train an adapter; --resume continues one of theirs
ADAPTER_MODES = ("test", "eval", "export", "chat")  # use an adapter: --adapter
ANSWERING_MODES = ("full", "test")  # answer generation.queries_file into sample_responses.md / .jsonl


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
    def samples(self) -> Path | None:
        """sample_responses.md, where the mode answered the sample queries (full, test)."""
        return Path(self.summary["samples"]) if self.summary.get("samples") else None

    @property
    def export_dir(self) -> Path | None:
        """The export folder --mode export wrote."""
        return Path(self.summary["export_dir"]) if self.summary.get("export_dir") else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The training figures of metrics.json (loss, steps, tokens/s, perplexity...); {} where none were trained."""
        file = self.path / Files.METRICS if self.path else None
        if file is None or not file.is_file():
            return {}
        return json_text.loads(file.read_text(encoding="utf-8")).get("metrics", {})


def python_options(output_dir: Any = None, adapter: Any = None, resume: Any = None, baseline: Any = True,
                   prompt: Any = None) -> Options:
    """run_mode's keywords as the command line's options: a path as text or a path object (pathlib.Path, a Run's
    ``path`` / ``adapter``), ``baseline=None`` as not given, the prompt as text; anything else is refused, naming
    the keyword."""
    paths = {name: _path_keyword(name, value) for name, value in
             (("output_dir", output_dir), ("adapter", adapter), ("resume", resume))}
    if baseline is not None and not isinstance(baseline, bool):
        raise ConfigError(f"run_mode: baseline={printable(repr(baseline), 60)} ({type(baseline).__name__}): give "
                          "True (score the base model too) or False (the command line's --no-baseline).")
    if prompt is not None and not isinstance(prompt, str):
        tip = " (decode it first: prompt.decode())" if isinstance(prompt, (bytes, bytearray)) else ""
        raise ConfigError(f"run_mode: prompt is {type(prompt).__name__}, not text: give the question as a "
                          f"str{tip}.")
    return Options(**paths, baseline=baseline is not False, prompt=prompt)


def _path_keyword(name: str, value: Any) -> str | None:
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if path is None or isinstance(path, str):
        return path
    raise ConfigError(f"run_mode: {name}={printable(repr(value), PATH_SHOWN)} ({type(value).__name__}): give a "
                      "path, as a str or a pathlib.Path.")


def python_config(cfg: Any) -> KitConfig:
    """run_mode's config, validated again as a whole: a setting changed by assignment (cfg.training.method =
    "dpo") is checked alone when assigned, so the rules across sections that load_config applies are applied
    here, before any work; the run's config.yaml is then one the kit reads back."""
    if not isinstance(cfg, KitConfig):
        raise ConfigError(f"run_mode: cfg is {type(cfg).__name__}, not the kit's config: build it with "
                          "medqlora.config.load_config(path or preset, overrides), then change settings by "
                          "assignment (cfg.training.max_steps = 60).")
    return revalidate(cfg, "the config given to run_mode")


def check_start() -> None:
    """The environment a command starts in, checked first by the command line and by run_mode alike: launch
    variables (every process says why a stray launch is refused), the cache folders and the Hub endpoint."""
    distributed.check_launch()
    environment.check_environment()


def check_options(mode: str, options: Options) -> None:
    """The options of a command, from the command line's flags or run_mode's keywords of the same names: those the
    mode would ignore are refused (saying which modes they are for), and so are paths with control characters,
    quote marks around them or an environment variable in them (shown_paths.spelling_problem), an empty or file
    --output-dir, an empty or undecodable --prompt (--resume RUN: check_resume, with the config)."""
    if mode not in MODES:
        raise ConfigError(f"mode {printable(repr(mode), 40)}: not a mode of the kit; choose one of {', '.join(MODES)}.")
    for flag in ("output_dir", "adapter", "resume"):
        value = getattr(options, flag)
        if value is not None and has_control_characters(value):
            raise ConfigError(f"--{flag.replace('_', '-')} {printable(repr(value), PATH_SHOWN)}: contains control "
                              "characters (newline, NUL, escape...); give a plain path.")
        problem = spelling_problem(value) if value is not None else None
        if problem:  # quote marks around it, $HOME in it: taken as written, a path of those characters
            raise ConfigError(f"--{flag.replace('_', '-')} {printable(repr(value), PATH_SHOWN)}: {problem}.")
    _check_flags_of_mode(mode, options)
    prompt, output_dir = options.prompt, options.output_dir
    if prompt is not None and unpaired_surrogate(prompt):  # undecodable bytes arrive as lone surrogates
        raise ConfigError("--prompt is not UTF-8 text (it holds undecodable bytes): give the question as text.")
    if prompt is not None and invisible(prompt):  # blank, or only zero-width / format characters
        raise ConfigError("--prompt is empty: give the question to answer.")
    if output_dir is not None and not output_dir.strip():
        raise ConfigError("--output-dir is empty: give the folder that holds run folders, or leave the flag out for "
                          "output.dir.")
    if output_dir is not None and Path(output_dir).expanduser().exists() and not Path(output_dir).expanduser().is_dir():
        raise ConfigError(f"--output-dir {printable(output_dir, PATH_SHOWN)}: is a file, expected the folder "
                          "that holds run folders.")


def _check_flags_of_mode(mode: str, options: Options) -> None:
    if options.resume is not None and mode not in TRAINING_MODES:
        raise ConfigError(f"--resume continues an interrupted training run: it is for --mode train and --mode full, "
                          f"and --mode {mode} would ignore it. Leave out --resume.")
    if options.adapter is not None and mode not in ADAPTER_MODES:
        raise ConfigError(f"--adapter chooses the adapter of --mode test, eval, export and chat; --mode {mode} trains "
                          "a new one and would ignore it. Leave out --adapter (to continue an interrupted run: "
                          "--resume RUN).")
    if not options.baseline and mode != "eval":
        tip = " (--set eval.in_full_mode=false skips both evaluations of --mode full)" if mode == "full" else ""
        raise ConfigError(f"--no-baseline is for --mode eval; --mode {mode} would ignore it. Leave out "
                          f"--no-baseline{tip}.")
    if not options.baseline and options.adapter == "none":
        raise ConfigError("--no-baseline scores the adapter alone, and --adapter none gives no adapter: the base model "
                          "would be all there is to score. Leave out --no-baseline to score the base model alone, or "
                          "give --adapter RUN_FOLDER (or latest) to score an adapter without the base model beside it.")
    if options.prompt is not None and mode != "chat":
        raise ConfigError(f"--prompt is the one-shot question of --mode chat; --mode {mode} would ignore it. Use "
                          "--mode chat --prompt \"...\", or generation.queries_file for --mode test.")
    if mode == "chat" and options.prompt is None and sys.stdin is None:
        raise ConfigError("--mode chat reads its questions from standard input, which is closed here (a job runner or "
                          "service started the kit without one): give the question with --prompt \"...\", or the "
                          "questions on standard input (< questions.txt), one a line.")


def check_resume(options: Options, cfg: KitConfig) -> None:
    """--resume RUN, once the config says where runs go: a run folder of this kit (the advice names that folder,
    output.dir or --output-dir), and --output-dir beside it only where it is the run's own parent folder (a resumed
    run stays in its folder: another --output-dir would be ignored, as --set and another --config would)."""
    if options.resume in (None, "latest"):
        return
    root = Path(options.output_dir or cfg.output.dir).expanduser()
    _check_run_folder(options.resume, root)
    run = Path(options.resume).expanduser()
    if options.output_dir is not None and run.absolute().parent.resolve() != root.resolve():
        raise ConfigError(f"--resume {quoted_path(options.resume)} continues the run in its own folder, under "
                          f"{quoted_path(run.absolute().parent)}, so --output-dir {quoted_path(options.output_dir)} "
                          "would be ignored. Leave out --output-dir (it chooses where new runs go, and where --resume "
                          "latest looks).")


def _check_run_folder(resume: str, root: Path) -> None:
    shown = quoted_path(resume)
    path = Path(resume).expanduser()
    fix = (f"Give the run's folder ({quoted_path(root / '<run>')}, the path printed when it started), or latest "
           f"for the newest run under {quoted_path(root)} with a checkpoint.")
    if not resume.strip() or not path.exists():
        named = root / resume.strip() if resume.strip() else None
        if named is not None and named.is_dir() and not path.is_absolute():
            fix = f"A run of that name is in {quoted_path(root)}: --resume {quoted_path(named)}."
        raise ConfigError(f"--resume {shown}: no such folder. {fix}")
    if not path.is_dir():
        raise ConfigError(f"--resume {shown}: is a file, not a run folder. {fix}")
    if not (path / Files.CONFIG).is_file() and not (path / Files.MANIFEST).is_file():
        # (a run that stopped before its config was final has a manifest alone: --resume says it has no checkpoint)
        raise ConfigError(f"--resume {shown}: is not a run folder of this kit (no config.yaml / manifest.json). {fix}")


@contextmanager
def command() -> Iterator[None]:
    """One command: an earlier command's run.log (in this process) gets nothing of it, a preemption signal ends it
    the way Ctrl-C does, and another command (a notebook cell's ``!python ... --resume``) may use its run folders
    once it is over."""
    from .runs import forget_run_folders_made

    messages.begin_command()
    forget_run_folders_made()  # an earlier command of this process (a notebook's) made its own
    try:
        with signals.stop_like_ctrl_c():
            yield
    finally:
        release_run_folders()
