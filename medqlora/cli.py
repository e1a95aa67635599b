"""The command line: arguments parsed and checked, then the mode run by medqlora/recipe.py; every failure a
user can cause ends in one message (exit 2), a bug of the kit in one line naming its traceback's file (exit 1).

    python medical_qlora_finetuning.py --mode full [--config FILE|PRESET] [--set k=v ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from . import distributed, signals
from .commands import MODES, Options, check_options, check_resume, check_start, command
from .config import DEFAULT_CONFIG, PATH_SHOWN, has_control_characters, load_config
from .errors import ConfigError, MedQLoRAError, TrainingInterrupted
from .runs import remove_empty_run_folders
from .secrets import RedactingFilter, printable, redact
from .stdout_guard import guarded_stdout, lost_output
from .write_errors import is_write_error, write_advice


class _Counted(argparse.Action):
    """Stores the flag's value as argparse does, and keeps every value given in ``<dest>_given`` so that a repeated
    flag is refused with the kit's message (check_arguments) instead of the last one winning without a word."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, f"{self.dest}_given", [*getattr(namespace, f"{self.dest}_given", []), values])
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse's parser; a flag's value that starts with '-' (which argparse takes for a flag) is said, with how to
    give it."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)

    def error(self, message: str) -> Any:
        flag = message.removeprefix("argument ").split(":", 1)[0].split("/")[-1]
        given = getattr(self, "_given", [])
        value = given[given.index(flag) + 1] if flag in given[:-1] else ""
        if message.startswith("unrecognized arguments:"):
            message += _config_flag_hint(message.split(":", 1)[1].split())
        if message.endswith("expected one argument") and value.startswith("-"):
            joined = shlex.quote(f"{flag}={value}")
            message += (f" (its value {printable(value, 60)} starts with '-', so it reads as a flag): join the value "
                        f"to the flag with '=', as in {printable(joined, 80)}")
        super().error(message)


# Flags of other trainers (Hugging Face's Trainer and TRL's scripts, axolotl, LLaMA-Factory, Unsloth's notebooks)
# that name a setting of the kit under another name: the setting, or the kit's own flag.
OTHER_TRAINERS_FLAGS = {
    "lr": "training.learning_rate", "epochs": "training.num_epochs", "num_train_epochs": "training.num_epochs",
    "batch_size": "training.micro_batch_size", "per_device_train_batch_size": "training.micro_batch_size",
    "grad_accum": "training.gradient_accumulation_steps", "lora_r": "lora.r", "rank": "lora.r",
    "lora_rank": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "max_seq_len": "model.max_seq_length", "seq_len": "model.max_seq_length", "max_length": "model.max_seq_length",
    "sequence_len": "model.max_seq_length", "cutoff_len": "model.max_seq_length",
    "model_name": "model.name", "model_name_or_path": "model.name", "base_model": "model.name", "model": "model.name",
    "optim": "training.optimizer", "warmup": "training.warmup_ratio", "lr_scheduler_type": "training.lr_scheduler",
    "per_device_eval_batch_size": "eval.batch_size", "run_name": "output.run_name",
    "hub_model_id": "export.push_to_hub", "dataset": "data.datasets", "dataset_name": "data.datasets",
    "train_file": "data.datasets", "data_path": "data.datasets", "bf16": "model.dtype", "fp16": "model.dtype",
    "output_dir": "--output-dir", "resume_from_checkpoint": "--resume", "do_train": "--mode", "do_eval": "--mode",
}
# The value a flag without one means, where the setting takes another word.
FLAG_VALUES = {"bf16": "bf16", "fp16": "fp16", "do_train": "train", "do_eval": "eval"}
SECTIONS_FIRST = ("training", "model", "lora")  # a field name in several sections: the one a trainer's flag means


def _config_flag_hint(unknown: list[str]) -> str:
    """Flags in the style of other trainers (--max-steps 4, --learning_rate=2e-4, --num_train_epochs 3) that name a
    setting of the kit's config, said as the kit's --set; a kit flag spelt with '_' (--output_dir), said as the flag."""
    from .commands import MODES

    found = []
    for at, arg in enumerate(unknown):
        if arg in MODES and not (at and unknown[at - 1].startswith("--")):  # `medical_qlora_finetuning.py train`
            found.append(f"--mode {arg}")
            continue
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0].lstrip("-").replace("-", "_").lower()
        value = (arg.split("=", 1)[1] if "=" in arg else unknown[at + 1]
                 if at + 1 < len(unknown) and not unknown[at + 1].startswith("-") else FLAG_VALUES.get(name, "VALUE"))
        target = OTHER_TRAINERS_FLAGS.get(name) or _config_keys().get(name)
        if f"--{name.replace('_', '-')}" in _KIT_FLAGS or (target or "").startswith("--"):
            flag = target if (target or "").startswith("--") else f"--{name.replace('_', '-')}"
            found.append(f"{flag} {value}" if value != "VALUE" or flag in _VALUED_FLAGS else flag)
        elif target == "data.datasets":
            found.append(f"--set 'data.datasets=[{{source: {value}, format: FORMAT}}]'")
        elif target:
            found.append(f"--set {target}={value}")
    if not found:
        return ""
    from .run_commands import kit_command

    return (f". The kit's way: {printable(', '.join(found[:3]), 240)} (settings of the config are given with --set, "
            f"or in the YAML file given as --config; {kit_command()} --help lists the flags)")


def _config_keys() -> dict[str, str]:
    """Each field name of the config's sections, as its dotted key (a name in several sections: SECTIONS_FIRST's)."""
    from .config import KitConfig

    sections = sorted(KitConfig.model_fields.items(), key=lambda item: item[0] not in SECTIONS_FIRST)
    keys: dict[str, str] = {}
    for section, info in sections:
        for field in getattr(info.annotation, "model_fields", {}):
            keys.setdefault(field, f"{section}.{field}")
    return keys


_KIT_FLAGS = ("--mode", "--config", "--set", "--output-dir", "--adapter", "--resume", "--no-baseline", "--prompt",
              "--dry-run")
_VALUED_FLAGS = ("--mode", "--config", "--set", "--output-dir", "--adapter", "--resume", "--prompt")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        allow_abbrev=False,  # '--r 8' is not '--resume 8', nor '--out' '--output-dir': flags are written whole
        prog="medqlora" if Path(sys.argv[0]).name == "medqlora" else "medical_qlora_finetuning.py",
        description="QLoRA fine-tuning of LLMs on medical data (Unsloth on NVIDIA GPUs, Hugging Face elsewhere).",
    )
    p.add_argument("--mode", choices=MODES, action=_Counted, default="full",
                   help="train: train an adapter; test: answer the sample queries with an adapter; eval: score the "
                   "base model and an adapter on the eval benchmarks; full: evaluate, train, evaluate, answer; export: write an "
                   "adapter's export.formats (adapter, merged 16-bit, gguf); chat: talk with the model and an adapter")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), action=_Counted,
                   help="YAML config file or preset name (config/presets/); one: change its values with --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set training.max_steps=60 (repeatable)")
    p.add_argument("--output-dir", action=_Counted, default=None, help="parent folder of run folders (default: output.dir)")
    p.add_argument("--adapter", action=_Counted, default=None,
                   help="test/eval/export/chat modes: adapter or run folder, 'latest' (default) or 'none' for the base model")
    p.add_argument("--resume", action=_Counted, default=None, metavar="RUN|latest",
                   help="train/full: continue a crashed or interrupted run from its last checkpoint, with its own "
                   "config.yaml")
    p.add_argument("--no-baseline", action="store_true", help="eval mode: score the adapter only, not the base model")
    p.add_argument("--prompt", action=_Counted, default=None, help="chat mode: answer this one question to stdout and exit")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; load nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_unwritable_output()
    _escape_what_the_terminal_cannot_show()
    if (gone := _working_folder_gone()) is not None:
        return gone
    if (undecodable := _not_utf8(sys.argv[1:] if argv is None else argv)) is not None:
        return undecodable
    threading.excepthook = _background_thread_failed
    # bitsandbytes' CPU backend looks for the optional `kernels` package when it loads and warns on every command
    # without it; the kit never multiplies 4-bit weights on the CPU, so the line tells its users nothing
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    args = parser().parse_args(argv)  # argparse's own errors exit 2 with its usage line
    with guarded_stdout() as stdout:
        code = _guarded_main(args, argv)
    if not lost_output(stdout):
        return code
    if code == 0:
        print(f"\nmedqlora: error: {stdout.message()}", file=sys.stderr)
        return 2
    print(f"medqlora: (and {stdout.message()})", file=sys.stderr)
    return code


OUT_OF_MEMORY = ("the machine ran out of memory (RAM, or the memory limit the command runs under: MemoryError). Give the command more memory (a larger machine, a higher limit: ulimit -v, the job's --mem), "
                 "close other programs, or choose a smaller model (model.name).")


def _guarded_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    earlier_logs = set(_run_logs())
    try:
        with command():
            return _main(args)
    except BrokenPipeError:  # a pipe the guards do not cover (a stream kept from before): nothing left to tell it
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())  # so that the exit flush is quiet
        return 1
    except MemoryError as err:  # the machine's memory (or the process's limit) ran out outside a training step
        logging.getLogger("medqlora").error("ran out of memory: MemoryError %s", printable(err, 200))
        print(f"medqlora: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except Exception as err:  # the last line of defence: a bug of the kit, not a problem the user can fix
        return _internal_error(err, earlier_logs, sys.argv[1:] if argv is None else argv)
    finally:
        distributed.stop()


def _background_thread_failed(hook: threading.ExceptHookArgs) -> None:
    """A library's background thread that fails (TensorBoard's event writer on a full disk or past a file-size
    limit) printed a whole traceback beside the kit's own message: one warning line instead, the traceback in
    run.log. The run goes on, or stops with its own message where the same cause reaches it."""
    if hook.exc_type is SystemExit:
        return
    thread = hook.thread.name if hook.thread is not None else "a background thread"
    err = hook.exc_value
    logging.getLogger("medqlora").debug("background thread %s failed", thread,
                                        exc_info=(hook.exc_type, err, hook.exc_traceback))
    shown = printable(f"{hook.exc_type.__name__}: {err}", 200)
    advice = f" {write_advice(err)}." if is_write_error(err) else ""
    with contextlib.suppress(OSError, ValueError):
        print(f"medqlora: warning: a background thread ({printable(thread, 60)}) stopped: {shown}; what it wrote "
              f"(such as the TensorBoard log) is incomplete.{advice}", file=sys.stderr)


def _quiet_unwritable_output() -> None:
    """Standard output and error closed by a launcher (``2>&-``) are often taken by a file opened read-only as the
    process started (a launcher script): writing a message there fails, which would turn a user's error (exit 2)
    into a crash (exit 1). Such a stream is pointed at the null device, as Python does with a closed one; standard
    output that cannot take what is written (a full disk) is left to stdout_guard, which says so."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # nothing written; fails (EBADF) on a closed or read-only descriptor
        except OSError as err:
            if fd == 1 and err.errno != errno.EBADF:  # a full disk, /dev/full: the guard of stdout reports it
                continue
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # a stream closed when Python started (`>&-`) is None in sys: written to, it would fail as a bug of the kit
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _working_folder_gone() -> int | None:
    """The folder the command was started in, deleted since (a shell left in a removed folder): every relative path
    and the libraries' own loading (torch's math library) fail there in their own words; one message instead."""
    try:
        os.getcwd()
    except FileNotFoundError:
        print("medqlora: error: the current folder no longer exists (it was deleted or moved after the shell entered "
              "it): cd to an existing folder and run the command again.", file=sys.stderr)
        return 2
    return None


def _not_utf8(argv: list[str]) -> int | None:
    """An argument holding bytes that are not UTF-8 (a file or folder named in Latin-1 on an old disk: Python keeps
    them as surrogates): a run records its paths as UTF-8 text (config.yaml, manifest.json, run.log), which such a
    name cannot be, and libraries fail on it in their own words. Refused here, once."""
    for arg in argv:
        if any("\udc80" <= char <= "\udcff" for char in arg):
            shown = printable(arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), 300)
            print(f"medqlora: error: the argument {shown} holds bytes that are not UTF-8 text (a file or folder "
                  "named in another encoding, or a terminal set to one?): a run records its paths, settings and "
                  "questions as UTF-8. Give it as UTF-8 text: rename a file or folder so named (or give a link to it "
                  "whose name is UTF-8).", file=sys.stderr)
            return 2
    return None


def _escape_what_the_terminal_cannot_show() -> None:
    """A terminal or pipe whose encoding is not UTF-8 (PYTHONIOENCODING=ascii, a C locale) cannot take every
    character of a reply, a path or a run name: such a character is written as its escape (\\u4fe1), never a
    UnicodeEncodeError halfway through a reply or a run."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def _run_logs() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger("medqlora").handlers if isinstance(h, logging.FileHandler)]


def _internal_error(err: Exception, earlier_logs: set[logging.Handler], argv: list[str]) -> int:
    """One line on stderr naming the error and where its traceback is: the run's run.log when this command
    got as far as a run folder, else a file in the system's temp folder (nothing is written into an earlier
    run's log). Exit code 1."""
    log = logging.getLogger("medqlora")
    ours = [h for h in _run_logs() if h not in earlier_logs]
    temporary = None
    if ours:
        handler: logging.Handler = ours[-1]
        where = handler.baseFilename  # type: ignore[attr-defined]
    else:
        fd, where = tempfile.mkstemp(prefix=f"medqlora-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
        os.close(fd)
        handler = temporary = logging.FileHandler(where, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(RedactingFilter())
    # the traceback goes to that file alone: never to the screen (Python's last-resort handler prints there)
    handlers, propagate = log.handlers[:], log.propagate
    log.handlers, log.propagate = [handler], False
    try:
        # formatted here, not by log.exception: the filter masks credentials in the message only, and a
        # traceback quotes the failing line and the exception's text (escape sequences included)
        trace = "".join(traceback.format_exception(err)).splitlines()
        log.error("internal error (arguments: %s)\n%s", " ".join(printable(a, PATH_SHOWN) for a in argv),
                  "\n".join(printable(line, 100_000) for line in trace))
    finally:
        log.handlers, log.propagate = handlers, propagate
        if temporary is not None:
            temporary.close()
    print(f"medqlora: internal error: {type(err).__name__}: {printable(err, 300)} (full traceback in "
          f"{printable(where, PATH_SHOWN)})", file=sys.stderr)
    return 1


def _shown(err: Exception) -> str:
    """A message for the terminal: credentials masked, and control characters that a value quoted in it may
    carry (an escape sequence in a file name) escaped, line by line, so the message keeps its own lines."""
    return "\n".join(printable(line, 100_000) for line in str(err).split("\n"))


# what the modes that use an adapter read of the training settings (the rest trains, which they do not)
_READ_WITHOUT_TRAINING = ("training.seed", "training.gpu_memory_gib", "training.init_adapter")
_TRAINING_SECTIONS = ("training.", "lora.", "grpo.", "preference.")


# the sections a mode does not read beyond training's, and why (export.* in train and full: export.left_for_export_mode)
_UNREAD_SECTIONS = {
    "test": (("eval.", "export."), "answers the sample queries: it scores and exports nothing"),
    "chat": (("eval.", "export."), "answers what is typed: it scores and exports nothing"),
    "eval": (("export.",), "scores the benchmarks: it exports nothing"),
    "export": (("eval.",), "exports the adapter: it scores no benchmark"),
    "train": (("generation.",), "trains and saves the adapter: it answers nothing (a later --mode test or chat takes "
                                "its own command's generation settings)"),
}


def _note_unused_overrides(args: argparse.Namespace) -> None:
    """--set of a setting the mode does not read (a training setting in test, eval, chat or export; eval.* in test;
    generation.* in train...): said, not dropped without a word."""
    from .commands import ADAPTER_MODES
    from .messages import say

    keys = list(dict.fromkeys(item.split("=", 1)[0].strip() for item in args.overrides))
    if args.mode in ADAPTER_MODES:
        unused = [key for key in keys if key.startswith(_TRAINING_SECTIONS) and
                  not key.startswith(_READ_WITHOUT_TRAINING)]
        if unused:
            shown = ", ".join(printable(key, 80) for key in unused)
            say(f"note: --set {shown}: --mode {args.mode} trains nothing, so "
                f"{'these are' if len(unused) > 1 else 'it is'} not used (an adapter keeps the settings it was trained "
                "with)")
    sections, why = _UNREAD_SECTIONS.get(args.mode, ((), ""))
    if unread := [key for key in keys if key.startswith(sections)]:
        shown = ", ".join(printable(key, 80) for key in unread)
        say(f"note: --set {shown}: not used by --mode {args.mode}, which {why}")


def _refuse_repeated_flags(args: argparse.Namespace) -> None:
    """A flag of one value given twice with two values (a wrapper adding its own --output-dir, --mode eval then
    --mode train): refused, naming both, instead of the last one winning without a word."""
    for flag in ("mode", "output_dir", "adapter", "resume", "prompt"):
        values = getattr(args, f"{flag}_given", [])
        if len(set(values)) > 1:
            shown = ", ".join(printable(value, PATH_SHOWN) for value in values)
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name} is given {len(values)} times with different values ({shown}): only one would be "
                              f"used, the last. Keep the one {name} meant.")


def check_arguments(args: argparse.Namespace) -> None:
    """The command line's own checks, before the config is read: --config (one, a file or a preset, no control
    characters, no --set beside --resume), then the options every command shares (commands.check_options:
    arguments the mode would ignore, paths with control characters; --resume RUN is checked with the config)."""
    if args.config is not None and has_control_characters(args.config):
        raise ConfigError(f"--config {printable(repr(args.config), PATH_SHOWN)}: contains control characters (newline, "
                          "NUL, escape...); give a plain path.")
    configs = getattr(args, "config_given", [])
    if len(configs) > 1:
        shown = ", ".join(printable(c, PATH_SHOWN) for c in configs)
        raise ConfigError(f"--config is given {len(configs)} times ({shown}): the kit reads one config and does not "
                          "merge them (the last would replace the others). Keep one --config and change its values "
                          "with --set section.key=value, or write the values you want into one YAML file.")
    _refuse_repeated_flags(args)
    check_options(args.mode, Options(output_dir=args.output_dir, adapter=args.adapter, resume=args.resume,
                                     baseline=not args.no_baseline, prompt=args.prompt))
    if args.resume is not None and args.overrides:
        raise ConfigError("--resume continues a run with its own config.yaml: leave out --set.")
    if args.config is not None and args.config.strip() and Path(args.config).is_dir():
        raise ConfigError(f"--config {printable(args.config, PATH_SHOWN)}: is a directory, expected a YAML file or "
                          "preset name.")


def _check_resume_config(args: argparse.Namespace, cfg: Any, options: Options) -> None:
    """--resume with a --config: the run continues with its own config.yaml, so a --config of other values (which
    would be ignored) is refused as --set is; the run's own file, or a copy of it, is taken."""
    if args.resume is None or not getattr(args, "config_given", []):
        return
    from . import recipe
    from .resume import refuse_other_config

    refuse_other_config(cfg, *recipe.Recipe(cfg, options).resumed()[:2], config_flag=args.config)


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        check_start()
        check_arguments(args)
        cfg = load_config(args.config, args.overrides)
        from . import recipe

        options = Options(output_dir=args.output_dir, adapter=args.adapter, resume=args.resume,
                          baseline=not args.no_baseline, prompt=args.prompt, started=started)
        check_resume(options, cfg)
        _check_resume_config(args, cfg, options)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries a plan or a one-shot answer alone
            _note_unused_overrides(args)
        if args.dry_run:
            planning = recipe.Recipe(cfg, options)
            planning.check_inputs(args.mode)
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the plan alone (JSON), notes go to stderr
                planned = planning.dry_run(args.mode)
            if distributed.is_main():  # under a launcher, one plan for all the processes
                print(redact(json.dumps(planned, indent=2)))  # a credential in a name never reaches the screen
            return 0
        recipe.Recipe(cfg, options).execute(args.mode)
        return 0
    except TrainingInterrupted as err:
        if distributed.is_main():  # Ctrl-C reaches every process: one message is enough
            print(f"\nmedqlora: {_shown(err)}", file=sys.stderr)
        return signals.exit_code()
    except ConfigError as err:
        if distributed.is_main():  # every process reads the same config: one message is enough
            print(f"\nmedqlora: error: {_shown(err)}", file=sys.stderr)
        return 2
    except MedQLoRAError as err:
        where = f"[process {distributed.rank()}] " if distributed.world_size() > 1 else ""
        print(f"\nmedqlora: error: {where}{_shown(err)}", file=sys.stderr)
        remove_empty_run_folders()
        return 2
    except RuntimeError as err:  # Python 3.11's pathlib reports a loop of symbolic links so, wherever a path resolves
        if not str(err).startswith("Symlink loop from"):
            raise
        print(f"\nmedqlora: error: a path given leads through symbolic links that loop back to themselves "
              f"({_shown(err)}). Point the link at a real file or folder, or give another path.", file=sys.stderr)
        return 2
    except OSError as err:
        if not is_write_error(err):
            raise
        print(f"\nmedqlora: error: cannot write {printable(err.filename or 'the run folder', PATH_SHOWN)}: "
              f"{err.strerror}. {write_advice(err)}; earlier runs are untouched.", file=sys.stderr)
        remove_empty_run_folders()
        return 2
    except KeyboardInterrupt:
        print(f"\nmedqlora: interrupted ({signals.name(signals.received())}). Nothing of earlier runs was changed."
              f"{_left_before_training()}", file=sys.stderr)
        return signals.exit_code()


def _left_before_training() -> str:
    """The run folder this command made, where it stopped before training: what it holds and how to train again."""
    from .run_files import stopped_before_training
    from .runs import made_here

    for made in made_here():
        if stopped_before_training(made):
            return (f" The run folder {printable(made)} keeps the records of this start, with nothing trained: remove "
                    "it to train again under its name, or choose another output.run_name.")
    return ""


if __name__ == "__main__":
    sys.exit(main())
