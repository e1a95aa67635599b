"""One recipe owns every mode: a ``Recipe`` holds the resolved config, the run folder, the runtime (backend,
device, processes) and the model, and each mode is a short sequence of its stages.

    python medical_qlora_finetuning.py --mode full      # the CLI: parse arguments, then Recipe.full()
    python -c "import medqlora, medqlora.config as c; print(medqlora.run_full(c.load_config(None)).path)"

Stages: resolve (one final config, its run folder, the runtime), prepare data, load the model, evaluate
before, train (SFT, or GRPO / DPO / ORPO in rl.py), write the training reports, evaluate after, answer
the sample queries, export, summarize. Reports are rendered by report/, dry-run plans by plan.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    backends,
    data,
    distributed,
    evaluate,
    fit,
    generate,
    grpo,
    harness,
    messages,
    plan,
    report,
    resume,
    signals,
    tracking,
)
from .adapter_runs import (
    adapter_run_config,
    check_benchmarks_untrained,
    find_adapter,
    run_folder_for,
    start_adapter,
    with_init_adapter,
)
from .config import PATH_SHOWN, KitConfig
from .errors import ConfigError, MedQLoRAError, ModelError
from .messages import say
from .model_stages import ModelStages
from .run_lock import release_run_folders
from .run_records import RunRecords
from .runs import Files, RunDir, default_run_name
from .secrets import printable
from .stages import TrainingStages

ADAPTER_MODES = ("test", "eval", "export", "chat")


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
    """What a mode leaves: its run folder (None for chat) and the end-of-run summary (also its metrics)."""

    path: Path | None
    summary: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary


class Recipe(TrainingStages, ModelStages, RunRecords):
    """A run of one mode. ``cfg`` is the config this process works with, once resolved."""

    def __init__(self, cfg: KitConfig, options: Options | None = None) -> None:
        self.cfg, self.options = cfg, options or Options()
        self.saved_cfg = cfg  # the config in the terms of all processes together, as config.yaml holds it
        self.runtime: backends.Runtime | None = None
        self.run: RunDir | None = None
        self.checkpoint: Path | None = None
        self.facts: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.model: Any = None
        self.source: str | None = None  # the model source, resolved once (backends.resolve_model_source)
        self.tokenizer: Any = None
        self.benchmarks: dict[str, list] | None = None
        self.lm_eval_tasks: list[harness.HarnessTask] | None = None  # eval.harness: lm-eval
        self._resumed: tuple[RunDir, KitConfig, Path] | None = None
        # what the training stages hand on to the next
        self.collected: list = []
        self.prepared: data.PreparedData | None = None
        self.shape: fit.ModelShape | None = None
        self.after_load: dict[str, Any] = {}
        self.baseline: dict | None = None
        self.lm_eval_baseline: dict | None = None
        self.result: Any = None

    # ------------------------------------------------------------------ modes

    def full(self) -> Run:
        """--mode full: evaluate the base model, train, evaluate again, answer the sample queries."""
        with_eval = self.cfg.eval.in_full_mode  # as the given config says, also when --resume continues a run
        self.resolve_training()
        with self.recording_failures():
            self.prepare_data(with_benchmarks=with_eval)
            self.load_model()
            self.evaluate_before()
            self.train()
            self.write_training_reports()
            self.evaluate_after()
        with self.recorded_after_training():  # every process answers its share of the queries
            if self.model is None:  # sharded training, nothing evaluated: no whole model loaded yet
                self.load_inference_replica()
            self.summary["samples"] = self.answer_queries(
                f"Sample responses: {self.cfg.model.name} + adapter {self.run.path.name}")
        return self.finish()

    def train_mode(self) -> Run:
        """--mode train: train an adapter into a new run folder (or continue one: --resume)."""
        self.resolve_training()
        with self.recording_failures():
            self.prepare_data(with_benchmarks=False)
            self.load_model()
            self.train()
            self.write_training_reports()
        return self.finish()

    def test(self) -> Run:
        """--mode test: the sample queries answered by the base model with an adapter."""
        adapter = self.use_adapter()
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "base")
        self.start_runtime()
        self.load_for_inference(adapter, say_loading=True)
        title = f"Sample responses: {self.cfg.model.name}" + (
            f" + adapter {adapter.parent.name}" if adapter else " (base)")
        self.summary = self.header() | {"samples": self.answer_queries(title)}
        return self.finish()

    def eval(self) -> Run:
        """--mode eval: the base model and/or an adapter on the configured benchmarks."""
        adapter = self.use_adapter()
        benchmarks = evaluate.load_benchmarks(self.cfg)
        self.lm_eval_tasks = tasks = harness.load_tasks(self.cfg)
        if adapter is not None:
            check_benchmarks_untrained({**benchmarks, **harness.items_by_task(tasks)}, adapter)
        # None where reading it would convert or download
        self.tokenizer = plan.local_tokenizer(self.cfg, backends.config_source(self.cfg.model.name))
        evaluate.check_prompts_fit(self.cfg, self.tokenizer, benchmarks)
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "base-eval")
        # a folder per evaluation, as its report: an earlier report's task files are kept
        folder = self.run.fresh_dir(self.run.unique(Files.LM_EVAL_TASKS)) if tasks else self.run.path
        if tasks:
            harness.write_task_folder(folder, tasks)
        self.start_runtime()
        self.load_for_inference(None)
        with_base = self.options.baseline or adapter is None
        base = self.evaluate(benchmarks, "baseline") if with_base else None
        lm_eval_base = self.harness_scores(folder, "baseline") if with_base else None
        tuned = lm_eval_tuned = None
        if adapter is not None:
            self.model = backends.attach_adapter(self.model, adapter, self.cfg, self.runtime)
            tuned = self.evaluate(benchmarks, "fine-tuned")
            lm_eval_tuned = self.harness_scores(folder, "fine-tuned")
        title = self.cfg.model.name + (f" + {adapter.parent.name}" if adapter else " (base)")
        line = report.write_eval_report(self.cfg, self.run, evaluate.side_by_side(base, tuned), title, None,
                                        evaluate.side_by_side(lm_eval_base, lm_eval_tuned) if tasks else None, folder.name,
                                        baseline=report.baseline_of(start_adapter(adapter), self.cfg.model.name, False)
                                        if base is not None else None)
        self.summary = self.header() | {"eval": line}
        return self.finish()

    def export(self) -> Run:
        """--mode export: the adapter, a merged 16-bit model and/or GGUF, into the adapter's run folder (a new run
        folder under output.dir for an adapter that is not in one of the kit's run folders)."""
        from . import export

        adapter = self.use_adapter(required=True)
        export.check_before_export(self.cfg, adapter)  # refusals come before a run folder is made
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "export")
        say(f"exporting {printable(adapter)} ({', '.join(self.cfg.export.formats)})")
        self.summary = export.run_export(self.cfg, adapter, say, self.run)
        return self.finish()

    def chat(self) -> Run:
        """--mode chat: the base model with an adapter, its training chat template and system prompt. While the
        model loads, the kit's messages go to stderr: stdout carries the conversation (with --prompt, the answer
        alone). Writes no file; the summary says how many replies were given."""
        from . import chat

        with contextlib.redirect_stdout(sys.stderr):
            adapter = self.use_adapter()
            self.start_runtime()
            self.load_for_inference(adapter, say_loading=True)
        if self.options.prompt is not None:
            reply = chat.one_shot(self.cfg, self.model, self.tokenizer, self.options.prompt, sys.stdout, sys.stderr)
            print(reply.stats(), file=sys.stderr)
            return Run(None, {"replies": 1})
        title = f"{self.cfg.model.name}" + (f" + adapter {adapter.parent.name}" if adapter else " (base model)")
        replies = chat.interactive(self.cfg, self.model, self.tokenizer, sys.stdin, sys.stdout, sys.stderr, title)
        return Run(None, {"replies": replies})

    def dry_run(self, mode: str) -> dict[str, Any]:
        """--dry-run: the plan of ``mode``, checked as the run would check it; nothing is loaded or written."""
        o = self.options
        if mode in ADAPTER_MODES:
            return plan.adapter_mode_plan(self.cfg, mode, o.adapter, o.output_dir)
        cfg = self.cfg
        if cfg.training.init_adapter and not o.resume:  # found and checked as the run does, its LoRA settings taken
            cfg = with_init_adapter(cfg, o.output_dir)
        return plan.training_plan(cfg, mode, o.output_dir, resuming=bool(o.resume))

    # ------------------------------------------------------------------ resolve once

    def check_inputs(self, mode: str) -> None:
        """Everything the mode reads later that can be checked now, before a model loads: the output folder, and
        the sample-queries file of the modes that answer it (a resumed run answers with its own config.yaml)."""
        output = Path(self.options.output_dir or self.cfg.output.dir).expanduser()
        if output.exists() and not output.is_dir():
            raise ConfigError(f"output.dir {printable(output, PATH_SHOWN)}: is a file, expected the folder that holds "
                              "run folders.")
        if mode == "eval":
            evaluate.check_something_to_score(self.cfg)
        if mode in ("full", "test") or (mode == "export" and {"merged", "gguf"} & set(self.cfg.export.formats)):
            generate.check_queries(self.resumed()[1] if mode == "full" and self.options.resume else self.cfg)

    def resumed(self) -> tuple[RunDir, KitConfig, Path]:
        """--resume resolved once: the run folder, its own config and its newest checkpoint."""
        if self._resumed is None:
            self._resumed = resume.resumable_run(self.options.resume, self.options.output_dir, self.cfg)
        return self._resumed

    def resolve_training(self) -> None:
        """One final config: the resumed run's own (--resume), training.init_adapter resolved, the batch divided
        among the processes; then the run folder (new, or the resumed one) and the runtime."""
        o = self.options
        if o.resume:
            self.run, self.cfg, self.checkpoint = self.resumed()
            self.run.start_log()
            say(f"resuming {self.run.path} from {self.checkpoint.name}, with the run's own config.yaml")
        tracker_notes = tracking.check_trackers(self.cfg)
        self.start_runtime()
        grpo.check_vllm(self.cfg, self.runtime)  # before the run folder and the model
        backends.check_kernels(self.cfg, self.runtime)  # so is training.kernels: liger where it cannot run
        distributed.start()
        from .optimizers import check_optimizer

        say(f"optimizer: {check_optimizer(self.cfg, self.runtime)}")
        if self.cfg.training.scheduler_note():
            say(self.cfg.training.scheduler_note())
        for note in tracker_notes:
            say(note)
        self._say_if_gpus_idle()
        distributed.split_batch(self.cfg)  # before the run folder: a batch that does not divide stops here
        if self.cfg.training.init_adapter and not o.resume:  # checked before anything is created
            self.cfg = with_init_adapter(self.cfg, o.output_dir)
        output = self.run.path.parent if o.resume else Path(o.output_dir or self.cfg.output.dir)
        data.refuse_output_inside_data(self.cfg.data, output)  # the runs would be read as data
        if not o.resume:
            self.run = self._new_run()
        self._say_processes()
        self.saved_cfg, self.cfg = self.cfg, distributed.split_batch(self.cfg)
        self.facts = {"resumed_from": self.checkpoint.name} if self.checkpoint else {}
        for key in ("trained_settings", "data") if self.checkpoint else ():  # kept, should it stop before training
            if resume.recorded_settings(self.run, key) is not None:
                self.facts[key] = resume.recorded_settings(self.run, key)
        self.record("loading")

    def start_runtime(self) -> None:
        self.runtime = backends.activate(backends.detect(self.cfg), self.cfg)
        say(self.runtime.describe())

    def use_adapter(self, required: bool = False) -> Path | None:
        """--adapter found and checked (None: the base model); an adapter of a run folder brings that run's model
        and data sections, so that its prompts are rendered as it was trained."""
        adapter = find_adapter(self.cfg, self.options.adapter, self.options.output_dir)
        if adapter is None and required:
            raise ModelError("--mode export needs an adapter: --adapter RUN_FOLDER (or latest), not none.")
        if adapter is not None:
            self.cfg = adapter_run_config(adapter, self.cfg)
        return adapter

    def _new_run(self) -> RunDir:
        """A new run folder, created by the main process only; every process learns its name. Its config.yaml
        is written once the config is final (save_config)."""
        cfg, output_dir = self.cfg, self.options.output_dir
        name = distributed.share(cfg.output.run_name or default_run_name(cfg))
        named = cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": name})})
        error = None
        if distributed.is_main():
            try:  # a generated name taken by a run of the same second gets a suffix
                run = RunDir.create(named, output_dir, generated_name=not cfg.output.run_name)
                name = run.path.name
                say(f"run folder: {run.path}")
            except MedQLoRAError as err:
                error = str(err)
        error, name = distributed.share((error, name))
        if error:
            raise MedQLoRAError(error)
        return RunDir(Path(output_dir or cfg.output.dir).expanduser() / name)

    def save_config(self) -> None:
        """config.yaml, written once with the final config (a resumed run keeps its own): what --resume reads."""
        if self.options.resume:
            return
        error = None
        if distributed.is_main():
            try:
                self.run.write_text(Files.CONFIG, self.saved_cfg.to_yaml())
            except MedQLoRAError as err:
                error = str(err)
        error = distributed.share(error)  # every process waits for it (they read it next), and stops if it failed
        if error:
            raise MedQLoRAError(error)

    # ------------------------------------------------------------------ summary

    def header(self) -> dict[str, Any]:
        return {"run_dir": str(self.run.path), "backend": self.runtime.describe(), "model": self.cfg.model.name}

    def finish(self) -> Run:
        """The end-of-run summary, said line by line (and kept in run.log)."""
        self.summary["total_wall_s"] = round(time.perf_counter() - self.options.started, 1)
        for line in report.summary_lines(self.summary):
            say(line)
        return Run(self.run.path if self.run else None, self.summary)

    def _say_if_gpus_idle(self) -> None:
        import torch

        count = torch.cuda.device_count() if self.runtime.device == "cuda" else 0
        if count > 1 and distributed.world_size() == 1:
            say(f"{count} GPUs visible: this process trains on GPU 0 alone. To use them all, launch it with "
                f"torchrun --nproc_per_node {count} (or accelerate launch; docs/training.md: Several GPUs).")

    def _say_processes(self) -> None:
        if distributed.world_size() > 1:
            kind = distributed.sharding()
            how = f"sharded ({kind}): weights, LoRA and optimizer state split," if kind else "data parallel:"
            say(f"{how} {distributed.world_size()} processes share each batch")

MODES = {"train": "train_mode", "test": "test", "eval": "eval", "full": "full", "export": "export", "chat": "chat"}


def run_mode(mode: str, cfg: KitConfig, **options: Any) -> Run:
    """One mode from Python, as the command line runs it: ``run_mode("eval", cfg, adapter="latest")``."""
    messages.begin_command()
    recipe = Recipe(cfg, Options(**options))
    # Variable-length batches fragment PyTorch's default CUDA allocator (reserved memory up to 1.4x the
    # allocated peak in the bench); expandable segments keep the two close. Read at the first CUDA use.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    recipe.check_inputs(mode)
    from .export import left_for_export_mode
    from .methods import unused_method_settings

    if later := left_for_export_mode(cfg, mode):  # the dry-run plan says it under "export"
        say(f"warning: {later}")
    if mode in ("train", "full"):
        for unused in unused_method_settings(cfg):  # the dry-run plan says it under "unused"
            say(f"warning: {unused}")
    try:
        with signals.stop_like_ctrl_c():  # SIGTERM / SIGHUP (preemption) end a run the way Ctrl-C does
            return getattr(recipe, MODES[mode])()
    finally:
        release_run_folders()  # another command (a notebook cell's !python ... --resume) may use the run next


def run_full(cfg: KitConfig, **options: Any) -> Run:
    """--mode full from Python (the notebook): ``run = medqlora.run_full(cfg); run.path, run.metrics``."""
    return run_mode("full", cfg, **options)
