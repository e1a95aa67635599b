"""One recipe owns every mode: a ``Recipe`` holds the resolved config, the run folder, the runtime (backend,
device, processes) and the model, and each mode is a short sequence of its stages.

    python medical_qlora_finetuning.py --mode full      # the CLI: parse arguments, then Recipe.full()
    python -c "import medqlora, medqlora.config as c; print(medqlora.run_full(c.load_config(None)).path)"

Training modes (here): resolve the config, start the runtime, open the run folder, prepare the data, fit the
memory, save the config, load the model, record the training data, evaluate before, train (SFT, or GRPO / DPO /
ORPO in rl.py), write the training reports, get ready for inference, evaluate after, answer the sample queries,
finish. Stages live in stages.py and model_stages.py; the adapter modes (test, eval, export, chat) in
adapter_modes.py; reports are rendered by report/, dry-run plans by plan.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    backends,
    data,
    distributed,
    evaluate,
    generate,
    grpo,
    harness,
    plan,
    report,
    resume,
    tracking,
)
from .adapter_modes import AdapterModes
from .adapter_runs import (
    with_init_adapter,
)
from .commands import (
    ADAPTER_MODES,
    ANSWERING_MODES,
    TRAINING_MODES,
    Options,
    Run,
    check_options,
    check_resume,
    check_start,
    command,
    python_config,
    python_options,
)
from .config import PATH_SHOWN, KitConfig
from .errors import ConfigError, MedQLoRAError
from .inputs import evaluates_in_full_mode
from .messages import say
from .model_stages import ModelStages
from .run_commands import note_training_mode
from .run_records import RunRecords
from .resume import refuse_other_config
from .runs import Files, RunDir, default_run_name
from .secrets import printable
from .stages import TrainingStages
from .stdout_guard import guarded_call


class Recipe(AdapterModes, TrainingStages, ModelStages, RunRecords):  # their state: recipe_state.py
    """A run of one mode. ``cfg`` is the config this process works with, once resolved."""

    def __init__(self, cfg: KitConfig, options: Options | None = None) -> None:  # attributes: recipe_state.py
        self.cfg, self.saved_cfg, self.options = cfg, cfg, options or Options()
        self.runtime = self.run = self.checkpoint = self.source = self.prepared = self.shape = None
        self.model = self.tokenizer = self.result = self.benchmarks = self.lm_eval_tasks = None
        self.baseline = self.lm_eval_baseline = None
        self.facts, self.summary, self.after_load = {}, {}, {}
        self.collected = []
        self._resumed: tuple[RunDir, KitConfig, Path] | None = None

    # ------------------------------------------------------------------ modes

    def execute(self, mode: str) -> Run:
        """``mode`` (one of commands.MODES), its inputs checked first; inside a ``commands.command()`` scope."""
        # Variable-length batches fragment PyTorch's default CUDA allocator (reserved memory up to 1.4x the
        # allocated peak in the bench); expandable segments keep the two close. Read at the first CUDA use.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        self.check_inputs(mode)
        note_training_mode(mode)
        from .export import left_for_export_mode
        from .methods import unused_method_settings

        if later := left_for_export_mode(self.cfg, mode):  # the dry-run plan says it under "export"
            say(f"warning: {later}")
        if mode in TRAINING_MODES:
            for unused in unused_method_settings(self.cfg):  # the dry-run plan says it under "unused"
                say(f"warning: {unused}")
        for unused in harness.unused_harness_settings(self.cfg, mode):  # the plan says it under "unused" too
            say(f"warning: {unused}")
        return self.stages_of(mode)()

    def stages_of(self, mode: str) -> Callable[[], Run]:
        """The sequence of stages that is ``mode``."""
        return {"train": self.train_mode, "test": self.test, "eval": self.eval, "full": self.full,
                "export": self.export, "chat": self.chat}[mode]

    def full(self) -> Run:
        """--mode full: evaluate the base model, train, evaluate again, answer the sample queries."""
        # as the given config says, also when --resume continues a run
        with_eval = evaluates_in_full_mode(self.cfg)
        self.resolve_config()
        self.start_training_runtime()
        self.open_run_folder()
        with self.recording_failures():
            self.read_data(with_benchmarks=with_eval)
            self.load_tokenizer()
            self.tokenize_data()
            self.check_query_texts()
            self.fit_memory()
            self.save_config()
            self.load_model()
            self.record_training_data()
            self.evaluate_before()
            self.train()
            self.write_training_reports()
            self.ready_for_inference()
            self.evaluate_after()
        with self.recorded_after_training():  # every process answers its share of the queries
            self.summary["samples"] = self.answer_queries(
                f"Sample responses: {self.cfg.model.name} + adapter {self.run.path.name}")
        return self.finish()

    def train_mode(self) -> Run:
        """--mode train: train an adapter into a new run folder (or continue one: --resume)."""
        self.resolve_config()
        self.start_training_runtime()
        self.open_run_folder()
        with self.recording_failures():
            self.read_data(with_benchmarks=False)
            self.load_tokenizer()
            self.tokenize_data()
            self.fit_memory()
            self.save_config()
            self.load_model()
            self.record_training_data()
            self.train()
            self.write_training_reports()
        return self.finish()

    def dry_run(self, mode: str) -> dict[str, Any]:
        """--dry-run: the plan of ``mode``, checked as the run would check it; nothing is loaded or written."""
        o = self.options
        if mode in ADAPTER_MODES:
            return plan.adapter_mode_plan(self.cfg, mode, o.adapter, o.output_dir)
        if o.resume:
            return self._resume_plan(mode)
        cfg = self.cfg
        if cfg.training.init_adapter:  # found and checked as the run does, its LoRA settings taken
            cfg = with_init_adapter(cfg, o.output_dir)
        return plan.training_plan(cfg, mode, o.output_dir)

    def _resume_plan(self, mode: str) -> dict[str, Any]:
        """--resume --dry-run: the plan of the run continued, from its own config.yaml (as resolve_config takes
        it; --mode full evaluates as the given config says), into its own run folder; refused as the run refuses."""
        run, saved, checkpoint = self.resumed()
        cfg = saved.model_copy(update={
            "eval": saved.eval.model_copy(update={"in_full_mode": self.cfg.eval.in_full_mode}),
            "output": saved.output.model_copy(update={"run_name": run.path.name})})
        planned = plan.training_plan(cfg, mode, str(run.path.parent), resuming=True)
        return {"resumes": f"{run.path} from {checkpoint.name}, with the run's own {Files.CONFIG}", **planned}

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
        answering = self.resumed()[1] if mode == "full" and self.options.resume else self.cfg
        if mode in ANSWERING_MODES or (mode == "export" and {"merged", "gguf"} & set(self.cfg.export.formats)):
            generate.check_queries(answering)
        if mode == "full":  # the sample answers come after training: their generation settings are checked first
            plan.check_prompt_room(answering, "test", backends.config_source(answering.model.name))

    def resumed(self) -> tuple[RunDir, KitConfig, Path]:
        """--resume resolved once: the run folder, its own config and its newest checkpoint."""
        if self._resumed is None:
            self._resumed = resume.resumable_run(self.options.resume, self.options.output_dir, self.cfg)
        return self._resumed

    def resolve_config(self) -> None:
        """The config the run trains with: --resume's own config.yaml (and its run.log reopened), trackers checked,
        training.init_adapter found and checked (its LoRA settings taken), before anything is created."""
        o = self.options
        if o.resume:
            self.run, self.cfg, self.checkpoint = self.resumed()
            self.run.start_log()
            say(f"resuming {self.run.path} from {self.checkpoint.name}, with the run's own config.yaml")
        for note in tracking.check_trackers(self.cfg):
            say(note)
        if self.cfg.training.init_adapter and not o.resume:
            self.cfg = with_init_adapter(self.cfg, o.output_dir)

    def start_training_runtime(self) -> None:
        """The backend and device, the process group (several processes), the optimizer checked against them; a
        batch that the processes cannot share stops here."""
        self.start_runtime()
        grpo.check_vllm(self.cfg, self.runtime)  # before the run folder and the model
        backends.check_kernels(self.cfg, self.runtime)  # training.kernels: liger where it cannot run stops here
        distributed.start()
        from .optimizers import check_optimizer

        say(f"optimizer: {check_optimizer(self.cfg, self.runtime)}")
        if self.cfg.training.scheduler_note():
            say(self.cfg.training.scheduler_note())
        self._say_if_gpus_idle()
        distributed.split_batch(self.cfg)

    def open_run_folder(self) -> None:
        """The run folder (new, or the resumed one), its run.log and manifest "loading"; the config divided among
        the processes (``configure``)."""
        o = self.options
        output = self.run.path.parent if o.resume else Path(o.output_dir or self.cfg.output.dir)
        data.refuse_output_inside_data(self.cfg.data, output)  # the runs would be read as data
        if Path(self.cfg.model.name).expanduser().is_dir():  # a local model folder: its files and tokenizer checked
            self.load_tokenizer()  # before a run folder is made (or a resumed one is touched); loaded once
        if not o.resume:
            self.run = self._new_run()
            self.cfg = data.with_anchored_sources(self.cfg)  # config.yaml names the data it trains on from any folder
            if o.output_dir:  # config.yaml says where the run is: rerunning it (--config <run>/config.yaml) goes there
                self.cfg = self.cfg.model_copy(update={"output": self.cfg.output.model_copy(
                    update={"dir": o.output_dir})})
        self._say_processes()
        self.configure(self.cfg)
        self.facts = {"resumed_from": self.checkpoint.name} if self.checkpoint else {}
        for key in resume.KEPT_ON_RESUME if self.checkpoint else ():  # kept, should it stop before training
            if (value := resume.manifest_value(self.run, key)) is not None:
                self.facts[key] = value
        self.record("loading")

    def configure(self, saved_cfg: KitConfig) -> None:
        """The config from here on: ``saved_cfg`` in the terms of all processes together (as config.yaml holds it),
        ``cfg`` this process's share of each batch (distributed.split_batch)."""
        self.saved_cfg, self.cfg = saved_cfg, distributed.split_batch(saved_cfg)

    def start_runtime(self) -> None:
        self.runtime = backends.activate(backends.detect(self.cfg), self.cfg)
        say(self.runtime.describe())

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


def run_mode(mode: str, cfg: KitConfig, *, output_dir: str | os.PathLike | None = None,
             adapter: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
             baseline: bool | None = True, prompt: str | None = None) -> Run:
    """One mode from Python, as the command line runs it: ``run_mode("eval", cfg, adapter="latest")``. The
    keywords are the command line's --output-dir, --adapter, --resume (a str or a pathlib.Path), --no-baseline
    (baseline=False), --prompt. ``cfg`` is checked again as a whole, as load_config checks it."""
    options = python_options(output_dir, adapter, resume, baseline, prompt)
    check_start()  # as the command line starts: the environment, then the options and the config
    check_options(mode, options)
    cfg = python_config(cfg)
    check_resume(options, cfg)
    return guarded_call(lambda: _run_command(mode, cfg, options))  # stdout guarded as the command line guards it


def _run_command(mode: str, cfg: KitConfig, options: Options) -> Run:
    with command():
        recipe = Recipe(cfg, options)
        if options.resume:  # the command line refuses --set beside --resume: a cfg of other values is refused too
            refuse_other_config(cfg, *recipe.resumed()[:2])
        return recipe.execute(mode)


def run_full(cfg: KitConfig, *, output_dir: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None) -> Run:
    """--mode full from Python (the notebook): ``run = medqlora.run_full(cfg); run.path, run.adapter, run.metrics``."""
    return run_mode("full", cfg, output_dir=output_dir, resume=resume)
