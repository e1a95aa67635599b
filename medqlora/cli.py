"""Command line: python medical_qlora_finetuning.py --mode full [--config FILE|PRESET] [--set k=v ...]."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time

from . import distributed
from .config import DEFAULT_CONFIG, load_config
from .errors import ConfigError, MedQLoRAError, TrainingInterrupted
from .secrets import redact

MODES = ["train", "test", "eval", "full", "export"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medical_qlora_finetuning.py",
        description="QLoRA fine-tuning of LLMs on medical data (Unsloth on NVIDIA GPUs, Hugging Face elsewhere).",
    )
    p.add_argument("--mode", choices=MODES, default="full",
                   help="train: train an adapter; test: answer the sample queries with an adapter; eval: score the "
                   "base model and an adapter on the eval benchmarks; full: evaluate, train, evaluate, answer; export: write an "
                   "adapter's export.formats (adapter, merged 16-bit, gguf)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file or preset name (config/presets/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set training.max_steps=60 (repeatable)")
    p.add_argument("--output-dir", default=None, help="parent folder of run folders (default: output.dir)")
    p.add_argument("--adapter", default=None,
                   help="test/eval/export modes: adapter or run folder, 'latest' (default) or 'none' for the base model")
    p.add_argument("--resume", default=None, metavar="RUN|latest",
                   help="train/full: continue a crashed or interrupted run from its last checkpoint, with its own "
                   "config.yaml")
    p.add_argument("--no-baseline", action="store_true", help="eval mode: score the adapter only, not the base model")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; load nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    finally:
        distributed.stop()


def _main(args: argparse.Namespace) -> int:
    # Variable-length batches fragment PyTorch's default CUDA allocator (reserved memory up to 1.4x the
    # allocated peak in the bench); expandable segments keep the two close. Read at the first CUDA use.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    started = time.perf_counter()
    try:
        cfg = load_config(args.config, args.overrides)
        from . import pipeline

        if args.dry_run:
            planned = pipeline.plan(cfg, args.mode, args.output_dir)
            if distributed.is_main():  # under a launcher, one plan for all the processes
                print(json.dumps(planned, indent=2))
            return 0
        if args.mode == "test":
            summary = pipeline.run_test(cfg, args.adapter, args.output_dir)
        elif args.mode == "export":
            summary = pipeline.run_export(cfg, args.adapter, args.output_dir)
        elif args.mode == "eval":
            summary = pipeline.run_eval(cfg, args.adapter, args.output_dir, baseline=not args.no_baseline)
        else:
            with_eval = args.mode == "full" and cfg.eval.in_full_mode
            if args.resume and args.overrides:
                raise ConfigError("--resume continues a run with its own config.yaml: leave out --set.")
            run, summary, (model, tokenizer, cfg, runtime) = pipeline.run_train(cfg, args.output_dir, started,
                                                                                with_eval, args.resume)
            if args.mode == "full":  # every process answers its share of the queries
                if model is None:  # sharded training, nothing evaluated: no whole model loaded yet
                    model = pipeline.inference_replica(cfg, runtime, run)
                summary["samples"] = pipeline.run_samples(
                    cfg, run, model, tokenizer, f"Sample responses: {cfg.model.name} + adapter {run.path.name}"
                )
        summary["total_wall_s"] = round(time.perf_counter() - started, 1)
        from .report import summary_lines

        for line in summary_lines(summary):
            pipeline.say(line)
        return 0
    except TrainingInterrupted as err:
        if distributed.is_main():  # Ctrl-C reaches every process: one message is enough
            print(f"\nmedqlora: {err}", file=sys.stderr)
        return 130
    except ConfigError as err:
        if distributed.is_main():  # every process reads the same config: one message is enough
            print(f"\nmedqlora: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except MedQLoRAError as err:
        where = f"[process {distributed.rank()}] " if distributed.world_size() > 1 else ""
        print(f"\nmedqlora: error: {where}{redact(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        print(f"\nmedqlora: error: cannot write {err.filename or 'the run folder'}: {err.strerror}. Free some "
              "space or choose another --output-dir; earlier runs are untouched.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmedqlora: interrupted (Ctrl-C). Nothing of earlier runs was changed.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
