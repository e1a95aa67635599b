"""The modes: train, test, full, and the dry-run plan. Setup -> work -> report, each step logged."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import (adapters, backends, data, distributed, evaluate, fit, generate, harness, leakage, memory, report,
               signals, tracking)
from .config import KitConfig, load_config
from .errors import MedQLoRAError, ModelError, TrainingInterrupted
from .runs import RunDir, check_output_dir, size_mb, latest_run_with_adapter, log, manifest
from .secrets import printable, redact, slug


def say(message: str) -> None:
    if not distributed.is_main():  # data parallel: the main process speaks for all
        return
    print(f"[medqlora] {message}", flush=True)
    log.info(message)


def plan(cfg: KitConfig, mode: str, output_dir: str | None) -> dict[str, Any]:
    """What a run would do, without loading any model (for --dry-run)."""
    from .train import check_optimizer, planned_steps

    runtime = backends.detect(cfg)
    tracker_notes = tracking.check_trackers(cfg)  # a tracker without its key or package stops here, as in a run
    optimizer = check_optimizer(cfg, runtime)  # a bitsandbytes optimizer without bitsandbytes too
    backends.check_model_source(cfg.model.name)  # a damaged model file is refused here, as in a run
    source = backends.config_source(cfg.model.name)
    # a local tokenizer and chat template load in a second: checked, and the data tokenized with them as a run does
    tokenizer = backends.load_tokenizer(cfg, source) if source and Path(source).is_dir() else None
    check_output_dir(Path(output_dir or cfg.output.dir).expanduser())
    # the rows and the leakage guard a run would check, benchmarks (local ones) included
    with_eval = mode == "full" and cfg.eval.in_full_mode
    benchmarks = _local_benchmarks(cfg) if with_eval else {}
    sizes, n_train = planned_examples(cfg, tokenizer, benchmark_guard_items(benchmarks))
    t = cfg.training
    gpu_only = backends.gpu_only_checkpoint(cfg.model.name) if runtime.device != "cuda" else None
    if gpu_only:
        print(f"medqlora: warning: a run on this machine would stop: {gpu_only}", file=sys.stderr)
    planned = {
        "mode": mode,
        **({"runs_here": f"no: {gpu_only}"} if gpu_only else {}),
        "backend": runtime.describe(),
        "model": cfg.model.name,
        "quantization": "4-bit NF4" if cfg.model.load_in_4bit and runtime.device == "cuda" else "none",
        "lora": f"r={cfg.lora.r} alpha={cfg.lora.alpha} dropout={cfg.lora.dropout} on {','.join(cfg.lora.target_modules)}",
        "datasets": sizes,
        "training_examples": n_train if n_train is not None else "unknown until hub data is downloaded",
        "effective_batch": f"{t.micro_batch_size} x {t.gradient_accumulation_steps} = "
        f"{t.micro_batch_size * t.gradient_accumulation_steps}",
        "optimizer_steps": planned_steps(cfg, n_train) if n_train is not None or t.max_steps > 0 else "unknown",
        "max_seq_length": cfg.model.max_seq_length,
        "training": {
            "length": f"max_steps {t.max_steps}" if t.max_steps > 0 else f"{t.num_epochs:g} epochs",
            "learning_rate": t.learning_rate,
            "lr_scheduler": t.lr_scheduler,
            "warmup": t.warmup_text(),
            "optimizer": optimizer,
            "weight_decay": t.weight_decay,
            "precision": runtime.dtype if cfg.model.dtype in ("auto", runtime.dtype) or runtime.device == "cuda"
            else f"{runtime.dtype} here; model.dtype {cfg.model.dtype} on a GPU",
            "gradient_checkpointing": t.gradient_checkpointing,
        },
        "validation": validation_plan(cfg),
        "prompts": prompt_plan(cfg),
        "trackers": {"report_to": t.report_to, **({"notes": tracker_notes} if tracker_notes else {})},
        "gpu_memory": memory_plan(cfg, runtime),
        "processes": distributed.plan(cfg, n_train, {b.name: b.max_items for b in cfg.eval.benchmarks}
                                      if mode in ("full", "eval") else {}),
        "evaluation": [f"{b.name} ({b.kind}, {b.max_items or 'all'} items, {cfg.eval.method})" for b in cfg.eval.benchmarks]
        + _cot_plan(cfg) + harness.plan(cfg) if mode in ("full", "eval") else [],
        "outputs": str(Path(output_dir or cfg.output.dir) / (cfg.output.run_name or "<model>-<data>-<timestamp>"))
        + "/ {adapter/, config.yaml, manifest.json, metrics.json, loss.png, memory.json, data_stats.json, "
        "training_items.jsonl, tensorboard/, eval_report.md, eval.json, eval_chart.png, sample_responses.md/.jsonl, "
        "run.log}",
    }
    return planned


def planned_examples(cfg: KitConfig, tokenizer: Any, guarded: list[leakage.Item]) -> tuple[dict[str, Any], int | None]:
    """The dataset sizes and the number of training examples a run would train on (None: hub data not downloaded).
    With the model's tokenizer at hand the examples are tokenized and fitted to max_seq_length and the validation
    split taken off exactly as in a run, so what a run refuses is refused here, with the same message."""
    collected = data.collect(cfg.data, cfg.training.seed, guarded, local_only=True)
    sizes = data.count_rows(cfg.data, cfg.training.seed, collected=collected)
    if len(collected) < len(cfg.data.datasets):
        return sizes, None
    if tokenizer is not None:
        return sizes, len(_tokenize(cfg, collected, tokenizer).train)
    pool = sum(ex.role != "validation" for c in collected for ex in c.examples)
    n_train = pool - int(round(pool * cfg.data.val_ratio))
    if n_train == 0:
        data.refuse_no_training_examples(cfg.data, cfg.model.max_seq_length, collected)
    return sizes, n_train


def _cot_plan(cfg: KitConfig) -> list[str]:
    """--mode full on medical-o1 rows with a validation set: their generation before and after training."""
    from .config import has_validation

    if not (cfg.eval.in_full_mode and cfg.eval.cot_items and has_validation(cfg.data)
            and any(d.format == "medical_o1" for d in cfg.data.datasets)):
        return []
    return [f"{evaluate.COT_VALIDATION} (up to {cfg.eval.cot_items} held-out medical-o1 rows, generated before and "
            "after training: format compliance, reasoning length, ROUGE-L of the final response)"]


def validation_plan(cfg: KitConfig) -> dict[str, Any]:
    """Where the validation items come from, and when their loss is computed."""
    sources = [f"data.val_ratio {cfg.data.val_ratio} of the training rows, drawn at random (seeded)"] \
        if cfg.data.val_ratio else []
    for i, spec in enumerate(cfg.data.datasets):
        name = f"{i}:{spec.source}"
        if spec.val_first_n:
            sources.append(f"the first {spec.val_first_n} rows of {name} (file order)")
        if spec.cv_fold is not None:
            sources.append(f"PubMedQA CV fold {spec.cv_fold} of {name}")
        if spec.use_for == "validation":
            sources.append(f"all of {name}")
    every = cfg.training.eval_steps
    return {"items": sources or ["none"],
            "loss": (f"every {every} steps during training, and before and after" if every else "before and after "
                     "training") if sources else "none"}


def prompt_plan(cfg: KitConfig) -> list[dict[str, Any]]:
    """How each dataset's prompt is written: chat template, system prompt, prompt template."""
    chat = {False: "none (plain text, model.chat_template: false)", "auto": "the tokenizer's own (ChatML if none)"}
    shown = []
    for i, spec in enumerate(cfg.data.datasets):
        system = data.system_prompt_of(cfg.data, spec)
        shown.append({"dataset": f"{i}:{spec.source}",
                      "chat_template": chat.get(cfg.model.chat_template, cfg.model.chat_template),
                      "system_prompt": system if system else "none",
                      "prompt_template": spec.prompt_template if spec.prompt_template is not None
                      else f"the {spec.format} format's own"})
    return shown


def plan_with_adapter(cfg: KitConfig, mode: str, adapter_arg: str | None, output_dir: str | None) -> dict[str, Any]:
    """--dry-run of test, eval and export: the adapter checked as the mode would check it, the base model its run
    was trained on, and what the mode would write (nothing is trained)."""
    adapter = _find_adapter(cfg, adapter_arg, output_dir)
    if adapter is None and mode == "export":
        raise ModelError("--mode export needs an adapter: --adapter RUN_FOLDER (or latest), not none.")
    if adapter is not None:
        cfg = adapter_run_config(adapter, cfg)
    backends.check_model_source(cfg.model.name)
    lm_eval_tasks = None
    if mode == "eval":  # local benchmark rows are read and checked, as the run reads them
        benchmarks = _local_benchmarks(cfg)
        lm_eval_tasks = harness.load_tasks(cfg)
        if adapter is not None:
            _check_not_trained_on({**benchmarks, **harness.guard_items(lm_eval_tasks)}, adapter)
    if mode == "export" and "gguf" in cfg.export.formats:
        from .export import llama_cpp_dir

        llama_cpp_dir()  # a LLAMA_CPP_DIR that names no converter is refused, as in the export
    run_folder = adapters.kit_run_folder(adapter) if adapter is not None else None
    does = {"test": f"answers the {len(generate.load_queries(cfg.generation.queries_file))} queries of "
                    f"{cfg.generation.queries_file}",
            "eval": "scores " + ", ".join(f"{b.name} ({b.kind}, {b.max_items or 'all'} items, {cfg.eval.method})"
                                          for b in cfg.eval.benchmarks)
                    + "".join(f", {line}" for line in harness.plan(cfg, lm_eval_tasks or [])),
            "export": f"writes {', '.join(cfg.export.formats)} into an export folder",
            "chat": "talks with the model (history, streamed replies; --prompt: one answer to stdout)"}[mode]
    return {
        "mode": mode,
        "backend": backends.detect(cfg).describe(),
        "model": cfg.model.name,
        "adapter": str(adapter) if adapter is not None else "none: the base model alone",
        "does": does + "; trains nothing",
        "outputs": "none: a conversation writes no file" if mode == "chat" else str(run_folder)
        if run_folder is not None else str(Path(output_dir or cfg.output.dir) / "<new run folder>"),
    }


def _check_not_trained_on(benchmarks: dict[str, list], adapter: Path) -> None:
    """The trained-on guard: an adapter in a run folder of the kit must have its run's training_items.jsonl."""
    run_folder = adapters.kit_run_folder(adapter)
    folder = run_folder if run_folder is not None else adapter.parent
    evaluate.check_not_trained_on(benchmarks, folder / "training_items.jsonl", required=run_folder is not None)


def _local_benchmarks(cfg: KitConfig) -> dict[str, list]:
    """The benchmarks that can be read without a download (PubMedQA's shipped test split, local files)."""
    return {b.name: evaluate.load_items(b, cfg.training.seed) for b in cfg.eval.benchmarks
            if b.source is None or data.resolve_local(b.source) is not None or data.looks_local(b.source)}


def benchmark_guard_items(benchmarks: dict[str, list] | None) -> list[leakage.Item]:
    """The questions of the benchmarks a run evaluates on, for the leakage guard."""
    return [leakage.Item(name, i.uid, i.example.question) for name, items in (benchmarks or {}).items() for i in items]


def memory_plan(cfg: KitConfig, runtime: backends.Runtime) -> dict[str, Any] | str:
    """The preflight for --dry-run: estimated peak GPU memory (every micro-batch max_seq_length long), and
    what auto-fit would choose. Refuses, with the options to change, when training cannot fit."""
    card = fit.card_gib(cfg)
    if runtime.device != "cuda" and card is None:
        return ("not used: this machine has no CUDA GPU, so the run trains on the CPU (hf backend). "
                "--set training.gpu_memory_gib=15 plans the GPU memory of a 15 GiB card (a Colab T4) instead")
    source = backends.config_source(cfg.model.name)
    shape, unknown = fit.model_shape_offline_first(source, cfg.model.trust_remote_code) if source else (
        None, "the model is converted from its GGUF file when the run starts")
    if shape is None:
        return f"unknown: {unknown}"
    backend = runtime.backend if runtime.device == "cuda" or distributed.sharding() else (
        "hf" if cfg.backend == "hf" else "unsloth")
    t = cfg.training
    configured = fit.estimate(shape, cfg, backend, t.micro_batch_size, t.gradient_checkpointing)
    planned: dict[str, Any] = {"backend": backend if runtime.device == "cuda" else f"{backend} (on the planned GPU)",
                               "configured": configured.describe()}
    if distributed.sharding():
        n = distributed.world_size()
        spread = (configured.weights_gib + configured.lora_gib) * (1 - 1 / n)
        planned["sharded"] = (f"loading holds the whole model on each GPU ({configured.weights_gib:.1f} GiB of "
                              f"weights); training then keeps 1/{n} of the weights, LoRA and optimizer state: about "
                              f"{configured.total_gib - spread:.1f} GiB a GPU (the figures above are for one GPU)")
    planned["card_gib"] = round(card, 1)
    if t.auto_fit:
        choice = fit.auto_fit(shape, cfg, backend, card)
        planned["auto_fit"] = (f"micro-batch {choice.micro_batch_size} x {choice.gradient_accumulation_steps} "
                               f"accumulation, checkpointing {fit.checkpointing_name(choice.gradient_checkpointing)}: "
                               f"{choice.estimate.describe()}")
    else:
        fit.refuse_if_it_cannot_fit(configured, card, cfg, backend)
    return planned


def resumable_run(resume: str, output_dir: str | None, cfg: KitConfig) -> tuple[RunDir, KitConfig, Path]:
    """The run folder to continue (a path, or 'latest'), its own config, and its newest checkpoint."""
    from .train import latest_checkpoint

    if resume == "latest":
        root = Path(output_dir or cfg.output.dir)
        candidates = [RunDir(p.parent) for p in root.glob("*/checkpoints")] if root.is_dir() else []
        candidates = [r for r in candidates if latest_checkpoint(r) is not None]
        if not candidates:
            raise ModelError(f"--resume latest: no run under {root} has a checkpoint to continue from.")
        run = max(candidates, key=lambda r: latest_checkpoint(r).stat().st_mtime)
    else:
        run = RunDir(Path(resume))
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        done = (run.adapter / "adapter_config.json").is_file()
        raise ModelError(f"--resume {resume}: {run.path} has no checkpoint to continue from"
                         + (" (it finished training: its adapter is saved)." if done else
                            "; it crashed before its first checkpoint (training.save_steps): train it again."))
    saved = run.path / "config.yaml"
    if not saved.is_file():
        raise ModelError(f"--resume {resume}: {run.path} is not a run folder of this kit (no config.yaml).")
    cfg = load_config(saved)
    _check_resumable_config(run, cfg, checkpoint)
    _check_resumable_data(run, cfg)
    return run, cfg, checkpoint


# The config sections that shape the training a checkpoint continues (not output, generation, eval, export).
TRAINING_SECTIONS = ("backend", "model", "lora", "data", "training")


def trained_settings(cfg: KitConfig) -> dict[str, Any]:
    """The settings a run trains with, flattened (training.max_steps: 4), as the manifest records them."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        else:
            flat[key] = value

    dumped = cfg.model_dump(mode="json")
    walk({k: dumped[k] for k in TRAINING_SECTIONS if k in dumped}, "")
    return flat


def recorded_settings(run: RunDir, key: str = "trained_settings") -> dict[str, Any] | None:
    """The settings the run's manifest says its training started with (None: not recorded); key "data": the
    fingerprints of the data it trained on."""
    try:
        recorded = json.loads((run.path / "manifest.json").read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _check_resumable_data(run: RunDir, cfg: KitConfig) -> None:
    """Every local data file the run trained on must still hold what it held (the manifest records its sha256):
    a checkpoint continues the data order of the rows it started with, not of another file."""
    recorded = recorded_settings(run, "data")
    for name, was in (recorded or {}).items():
        index = name.split(":", 1)[0]
        if not (isinstance(was, str) and was.startswith("sha256:") and index.isdigit()
                and int(index) < len(cfg.data.datasets)):
            continue
        spec = cfg.data.datasets[int(index)]
        try:
            now = data.fingerprint(spec)
        except OSError:
            now = None
        if now != was:
            how = "is gone" if now is None or data.resolve_local(spec.source) is None else "was changed"
            raise ModelError(
                f"--resume: the training data of data.datasets.{index} ({printable(spec.source, 160)}) {how} since "
                f"the run started training (its manifest records {was[:19]}...). A checkpoint continues the training "
                "of the rows it started with: restore that file, or train a new run on the new data (without "
                "--resume).")


def _check_resumable_config(run: RunDir, cfg: KitConfig, checkpoint: Path) -> None:
    """The run's config.yaml must still say what its training started with (the manifest records it), and its
    max_steps must lie beyond the checkpoint: an edited config.yaml would continue another training."""
    step = int(checkpoint.name.rsplit("-", 1)[1])
    shown = printable(run.path / "config.yaml")
    if 0 < cfg.training.max_steps < step:
        raise ModelError(f"--resume: {shown} says training.max_steps: {cfg.training.max_steps}, but its checkpoint "
                         f"{checkpoint.name} is already at step {step}. Restore the max_steps the run started with, or "
                         "train a new run (without --resume).")
    recorded = recorded_settings(run)
    if recorded is None:
        return  # a run of an earlier version: nothing recorded to compare with
    now = trained_settings(cfg)
    changed = [k for k in sorted(set(now) | set(recorded)) if now.get(k) != recorded.get(k)]
    if changed:
        listed = "; ".join(f"{k}: {printable(json.dumps(now.get(k)), 60)} (the run started with "
                           f"{printable(json.dumps(recorded.get(k)), 60)})" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ModelError(f"--resume: {shown} was changed since the run started training: {listed}{more}. A checkpoint "
                         "continues the training it was saved from: restore those values, or train a new run with "
                         "the new ones (without --resume).")


def run_train(
    cfg: KitConfig, output_dir: str | None, started: float, with_eval: bool = False, resume: str | None = None
) -> tuple[RunDir, dict[str, Any], Any]:
    """Train an adapter into a new run folder (or continue one: resume); with_eval: benchmark before and after."""
    from .train import check_optimizer

    checkpoint = None
    if resume:
        run, cfg, checkpoint = resumable_run(resume, output_dir, cfg)
        run.start_log()
        say(f"resuming {run.path} from {checkpoint.name}, with the run's own config.yaml")
    tracker_notes = tracking.check_trackers(cfg)
    runtime = backends.activate(backends.detect(cfg), cfg)
    distributed.start()
    say(runtime.describe())
    say(f"optimizer: {check_optimizer(cfg, runtime)}")
    for note in tracker_notes:
        say(note)
    _say_if_gpus_idle(runtime)
    per_process = distributed.split_batch(cfg)  # before the run folder: a batch that does not divide stops here
    if cfg.training.init_adapter and not resume:  # the earlier run's adapter, checked before anything is created
        cfg = with_init_adapter(cfg, output_dir)
        per_process = per_process.model_copy(update={"training": per_process.training.model_copy(
            update={"init_adapter": cfg.training.init_adapter})})
    if not resume:
        run = _new_run(cfg, output_dir)
    if distributed.world_size() > 1:
        kind = distributed.sharding()
        how = f"sharded ({kind}): weights, LoRA and optimizer state split," if kind else "data parallel:"
        say(f"{how} {distributed.world_size()} processes share each batch")
    cfg = per_process
    facts: dict[str, Any] = {"resumed_from": checkpoint.name} if checkpoint else {}
    if checkpoint:  # kept, should the resumed run stop before training
        for key in ("trained_settings", "data"):
            if recorded_settings(run, key) is not None:
                facts[key] = recorded_settings(run, key)

    def record(status: str, **extra: Any) -> None:
        facts.update(extra, status=status)
        run.write_json("manifest.json", manifest(cfg, runtime.to_dict(), facts))

    record("loading")
    try:
        # bad data stops here, before the model loads
        benchmarks = evaluate.load_benchmarks(cfg) if with_eval else None
        lm_eval_tasks = harness.load_tasks(cfg) if with_eval else None
        collected = data.collect(cfg.data, cfg.training.seed,
                                 benchmark_guard_items({**(benchmarks or {}), **harness.guard_items(lm_eval_tasks)}))
        return _train_in(cfg, runtime, run, record, started, collected, benchmarks, checkpoint, lm_eval_tasks)
    except BaseException as err:  # record why the run stopped, then let the CLI report it
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, TrainingInterrupted)) else "failed"
        stage = {"trained": "interrupted during evaluation after training: the adapter is saved"
                 if status == "interrupted" else "failed during evaluation after training: the adapter is saved",
                 "loading": f"{status} before training"}.get(facts.get("status"))
        reason = str(err) or f"interrupted ({signals.name(signals.received())})"
        log.error("run %s: %s", status, reason)
        record(status, error=reason[:2000], **({"stage": stage} if stage else {}))
        raise


def with_init_adapter(cfg: KitConfig, output_dir: str | None) -> KitConfig:
    """training.init_adapter resolved (latest: the newest run with an adapter) and checked at the adapter boundary
    (safetensors, LoRA config, shapes that fit this base model), its path written into the config the run saves,
    so that --resume starts from the same adapter."""
    adapter = _find_adapter(cfg, cfg.training.init_adapter, output_dir)
    if adapter is None:
        return cfg.model_copy(update={"training": cfg.training.model_copy(update={"init_adapter": None})})
    trained = _trained_model(adapter, cfg)
    if trained.name != cfg.model.name:
        raise ModelError(f"training.init_adapter {printable(adapter)} was trained on {printable(trained.name)}, not on "
                         f"model.name {printable(cfg.model.name)}: set model.name to the model it was trained on.")
    say(f"starting from the adapter of {printable(adapter)} (training.init_adapter)")
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"init_adapter": str(adapter.resolve())})})


def _say_if_gpus_idle(runtime: backends.Runtime) -> None:
    import torch

    count = torch.cuda.device_count() if runtime.device == "cuda" else 0
    if count > 1 and distributed.world_size() == 1:
        say(f"{count} GPUs visible: this process trains on GPU 0 alone. To use them all, launch it with "
            f"torchrun --nproc_per_node {count} (or accelerate launch; README: Several GPUs).")


def _new_run(cfg: KitConfig, output_dir: str | None) -> RunDir:
    """A new run folder, created by the main process only; every process learns its name."""
    from .runs import default_run_name

    name = distributed.share(cfg.output.run_name or default_run_name(cfg))
    named = cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": name})})
    error = None
    if distributed.is_main():
        try:  # a generated name taken by a run of the same second gets a suffix
            run = RunDir.create(named, output_dir, generated_name=not cfg.output.run_name)
            name = run.path.name
            say(f"run folder: {run.path}")
            run.write_text("config.yaml", cfg.to_yaml())
        except MedQLoRAError as err:
            error = str(err)
    error, name = distributed.share((error, name))
    if error:
        raise MedQLoRAError(error)
    return RunDir(Path(output_dir or cfg.output.dir).expanduser() / name)


def _train_in(
    cfg: KitConfig, runtime: backends.Runtime, run: RunDir, record: Any, started: float, collected: list,
    benchmarks: dict[str, list] | None, checkpoint: Path | None, lm_eval_tasks: list | None = None,
) -> tuple:
    from .train import planned_steps, train

    source = backends.resolve_model_source(cfg.model.name)
    shape = fit.model_shape(source, cfg.model.trust_remote_code)
    tokenizer = backends.load_tokenizer(cfg, source)
    prepared = _tokenize(cfg, collected, tokenizer)
    cfg = fit_memory(cfg, runtime, source, prepared, run, record)
    model, model_tokenizer, source = backends.load_for_training(cfg, runtime)
    after_load = memory.snapshot()
    say(f"loaded {cfg.model.name} ({source}); trainable parameters: {_trainable(model)}")
    if not _same_tokens(tokenizer, model_tokenizer, cfg):
        say("the backend's tokenizer differs from the checkpoint's: tokenizing the data again with it")
        prepared = _tokenize(cfg, collected, model_tokenizer)
    tokenizer = model_tokenizer
    run.write_json("data_stats.json", prepared.stats)
    run.write_text("training_items.jsonl", "".join(
        json.dumps({"source": r["source"], "uid": r["uid"], "question_sha1_16": r["question_hash"]}) + "\n"
        for r in prepared.train))
    for name, stats in prepared.stats.items():
        say(f"data {name}: {stats}")
    for warning in prepared.stats.get("total", {}).get("warnings", []):
        say(f"warning: {warning}")
    record("training", model_source=source, data=prepared.fingerprints,
           trained_settings=trained_settings(load_config(run.path / "config.yaml")))

    if benchmarks is not None:
        benchmarks.update(_cot_validation(cfg, prepared))
    baseline = None
    saved_baseline = run.path / "eval_baseline.json"
    if benchmarks and saved_baseline.is_file():  # a resumed run scored its base model before the crash
        baseline = json.loads(saved_baseline.read_text())
    elif benchmarks:  # the LoRA weights start at zero: this is the base model's score
        say("evaluating the base model before training: " + ", ".join(
            f"{name} ({len(items)} items)" for name, items in benchmarks.items()))
        backends.prepare_for_generation(model, runtime)
        baseline = _evaluate(cfg, model, tokenizer, benchmarks, "baseline")  # items shared among processes
        run.write_json("eval_baseline.json", baseline)
        backends.prepare_for_training(model, runtime)
    lm_eval_base = _harness_baseline(cfg, run, model, tokenizer, runtime, lm_eval_tasks)
    say(f"training {len(prepared.train)} examples for {planned_steps(cfg, len(prepared.train))} optimizer steps")
    _say_if_the_epoch_tail_repeats(cfg, prepared)
    result = train(cfg, runtime, model, tokenizer, prepared, run, checkpoint)
    if distributed.sharding():
        del model  # the sharded model goes before a whole one comes, if anything is evaluated
        model = inference_replica(cfg, runtime, run) if benchmarks else None
    memory_report = memory.training_report(after_load, result.memory_after_train)
    if distributed.world_size() > 1:  # each GPU's own peak (sharded runs are not symmetric)
        peaks = distributed.gather([result.memory_after_train.get("gpu_peak_reserved_gib")])
        memory_report["summary"]["peak_reserved_gib_per_process"] = [p[0] for p in peaks]
    table = memory_table(cfg, runtime, shape, model, memory_report) if model is not None else None
    if table is not None:
        memory_report["qlora_vs_full_finetuning"] = table
        if distributed.is_main():
            run.write_text("memory_table.md", memory_table_markdown(table))
    run.write_json("memory.json", memory_report)
    run.write_json("metrics.json", {"metrics": result.metrics, "log_history": result.log_history})
    if distributed.is_main():
        report.plot_loss(result.log_history, run.path / "loss.png")
    adapter_mb = size_mb(run.adapter / "adapter_model.safetensors")
    summary = {
        "run_dir": str(run.path),
        "backend": runtime.describe(),
        "model": cfg.model.name,
        "train_examples": len(prepared.train),
        "steps": result.metrics.get("steps"),
        "loss": report.loss_trend(result.log_history),
        **({"validation_loss": report.eval_loss_text(result.log_history)}
           if report.eval_loss_curve(result.log_history) else {}),
        "train_wall_s": result.metrics.get("train_wall_s"),
        "tokens_per_second": result.metrics.get("tokens_per_second"),
        "memory": memory.format_summary(memory_report),
        **({"memory_table": memory_table_line(table)} if table else {}),
        "adapter_mb": adapter_mb,
    }
    if result.metrics.get("rewards"):  # GRPO: each reward's mean over the first and last fifth of the steps
        summary["rewards"] = "; ".join(f"{k.removeprefix('rewards/').removesuffix('/mean')} {v['first']} -> {v['last']}"
                                       for k, v in result.metrics["rewards"].items())
    record("trained", adapter_mb=adapter_mb, train_wall_s=result.metrics.get("train_wall_s"),
           start_to_trained_s=round(time.perf_counter() - started, 2))
    if model is not None:
        backends.prepare_for_generation(model, runtime)
    if benchmarks or lm_eval_tasks:
        try:
            tuned = _evaluate(cfg, model, tokenizer, benchmarks, "fine-tuned")
            lm_eval_tuned = _harness(cfg, run.path / HARNESS_FOLDER, model, tokenizer, lm_eval_tasks, "fine-tuned")
        except KeyboardInterrupt:
            raise interrupted_after_training(run, "the evaluation", "eval") from None
        m = result.metrics
        perplexity = {"before": m["perplexity_before"], "after": m["perplexity_after"]} if "eval_loss" in m else None
        summary["eval"] = write_eval_report(cfg, run, evaluate.merge(baseline, tuned),
                                            f"{cfg.model.name} + {run.path.name}", perplexity,
                                            harness.merge(lm_eval_base, lm_eval_tuned) if lm_eval_tasks else None)
        advice = format_not_learned(cfg, tuned, result.metrics.get("steps"))
        if advice:
            summary["format_not_learned"] = advice
            say(f"warning: {advice}")
    return run, summary, (model, tokenizer, cfg, runtime)


COMPLIANCE_LEARNED = 20.0  # % of replies in the reasoning format below which the run did not learn it


def format_not_learned(cfg: KitConfig, tuned: dict[str, dict], steps: int | None) -> str | None:
    """What to change when the fine-tuned model's chain-of-thought format compliance stayed near zero.
    Measured with SmolLM2-135M on the 198 medical-o1 demo rows: 60 steps at lr 2e-4 left it at 0%; 150 steps at
    lr 1e-3 reached 75%."""
    low = {name: m["format_compliance"] for name, m in tuned.items()
           if isinstance(m.get("format_compliance"), (int, float)) and m["format_compliance"] < COMPLIANCE_LEARNED}
    if not low:
        return None
    t = cfg.training
    shown = ", ".join(f"{name} {value}%" for name, value in low.items())
    return (f"the chain-of-thought format was not learned ({shown} of replies follow it after {steps} steps at "
            f"learning rate {t.learning_rate:g}): train longer and with a higher learning rate, e.g. --set "
            f"training.max_steps={max(150, 2 * (steps or 0))} --set training.learning_rate={max(t.learning_rate * 5, 1e-3):g} "
            "for a small model (SmolLM2-135M on the 198 demo rows: 60 steps at 2e-4 gave 0%, 150 steps at 1e-3 gave "
            "75%), or more epochs for a 3-8B model.")


def memory_table(cfg: KitConfig, runtime: backends.Runtime, shape: fit.ModelShape | None, model: Any,
                 memory_report: dict[str, Any]) -> dict[str, Any] | None:
    """The table the setups report: trainable parameters, and QLoRA's peak memory (measured on a GPU, estimated
    by the kit's memory model too) against full fine-tuning with the same batch (estimated: never measured)."""
    if shape is None:
        return None
    trainable, total = _counts(model)
    t = cfg.training
    qlora = fit.estimate(shape, cfg, runtime.backend, t.micro_batch_size, t.gradient_checkpointing)
    full = fit.full_finetune_estimate(shape, cfg, t.micro_batch_size, t.gradient_checkpointing)
    return {
        "trainable_parameters": trainable,
        "total_parameters": shape.total_params(),
        "trainable_percent": round(100 * trainable / max(shape.total_params(), 1), 3),
        "lora_parameters_by_shape": shape.lora_params(cfg.lora.r, cfg.lora.target_modules),
        "qlora_peak_reserved_gib_measured": memory_report.get("summary", {}).get("peak_reserved_gib"),
        "qlora_estimated_gib": qlora.total_gib,
        "full_finetuning_estimated_gib": full["total_gib"],
        "full_finetuning_estimate": full,
        "full_finetuning_note": fit.FULL_FT_NOTE,
        "batch": f"{t.micro_batch_size} x {cfg.model.max_seq_length} tokens, checkpointing "
                 f"{fit.checkpointing_name(t.gradient_checkpointing)}, optimizer {t.optimizer}",
    }


def memory_table_markdown(table: dict[str, Any]) -> str:
    measured = table["qlora_peak_reserved_gib_measured"]
    full = table["full_finetuning_estimate"]
    return "\n".join([
        "# Memory: QLoRA against full fine-tuning", "",
        f"Batch: {table['batch']}.", "",
        "| method | peak GPU memory (GiB) | trainable parameters |", "|---|---|---|",
        f"| QLoRA (4-bit base + LoRA), measured | {measured if measured is not None else 'not measured (no GPU)'} | "
        f"{table['trainable_parameters']:,} ({table['trainable_percent']}%) |",
        f"| QLoRA, the kit's estimate | {table['qlora_estimated_gib']} | |",
        f"| full fine-tuning, ESTIMATED | {table['full_finetuning_estimated_gib']} (weights {full['weights_gib']}, gradients "
        f"{full['gradients_gib']}, optimizer + fp32 master {full['optimizer_and_master_gib']}, activations "
        f"{full['activations_gib']}) | {table['total_parameters']:,} (100%) |", "",
        f"Full fine-tuning: {table['full_finetuning_note']}.", ""])


def memory_table_line(table: dict[str, Any]) -> str:
    measured = table["qlora_peak_reserved_gib_measured"]
    qlora = f"{measured} GiB measured" if measured is not None else f"{table['qlora_estimated_gib']} GiB estimated"
    return (f"QLoRA {qlora} vs full fine-tuning {table['full_finetuning_estimated_gib']} GiB (an estimate, not measured); "
            f"trainable parameters {table['trainable_parameters']:,} ({table['trainable_percent']}%) (memory_table.md)")


def inference_replica(cfg: KitConfig, runtime: backends.Runtime, run: RunDir) -> Any:
    """After sharded training every forward pass needs all processes in step, which generation cannot
    promise: with the sharded model freed, load the saved adapter onto a whole 4-bit base in each process
    (each GPU held one while loading, so it fits) to evaluate and answer in parallel."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    say("sharded training done: loading the base model with the saved adapter in every process to evaluate and answer")
    model, _ = backends.load_for_inference(cfg, runtime, run.adapter)
    return model


def _tokenize(cfg: KitConfig, collected: list, tokenizer: Any) -> data.PreparedData:
    if cfg.training.method != "sft":  # prompts (GRPO) or prompt / chosen / rejected rows (DPO, ORPO)
        from . import rl

        return rl.prepare(cfg, collected, tokenizer)
    return data.tokenize_collected(collected, cfg.data, tokenizer, cfg.model.max_seq_length, cfg.training.seed,
                                   cfg.training.micro_batch_size)


def _same_tokens(first: Any, second: Any, cfg: KitConfig) -> bool:
    probe = data.render_prompt(first, cfg.data.system_prompt, "Is aspirin useful after a myocardial infarction?")
    other = data.render_prompt(second, cfg.data.system_prompt, "Is aspirin useful after a myocardial infarction?")
    return probe == other and first(probe)["input_ids"] == second(other)["input_ids"]


def fit_memory(cfg: KitConfig, runtime: backends.Runtime, source: str, prepared: data.PreparedData, run: RunDir,
               record: Any) -> KitConfig:
    """GPU only: the memory preflight, and auto-fit of micro-batch and checkpointing (written to config.yaml)."""
    shape = fit.model_shape(source, cfg.model.trust_remote_code)
    card = fit.card_gib(cfg)
    if runtime.device != "cuda" or shape is None or card is None:
        return cfg
    fit.cap_gpu_memory(cfg)
    t = cfg.training
    lengths = [len(r["input_ids"]) for r in prepared.train]
    seq = fit.longest_batch_len(lengths, cfg.model.max_seq_length, t.packing)
    configured = fit.estimate(shape, cfg, runtime.backend, t.micro_batch_size, t.gradient_checkpointing, seq)
    facts: dict[str, Any] = {"card_gib": round(card, 2), "longest_row_tokens": seq, "configured": configured.describe()}
    if t.auto_fit:
        choice = fit.auto_fit(shape, cfg, runtime.backend, card, seq)
        training = t.model_copy(update={"micro_batch_size": choice.micro_batch_size,
                                        "gradient_accumulation_steps": choice.gradient_accumulation_steps,
                                        "gradient_checkpointing": choice.gradient_checkpointing, "auto_fit": False})
        cfg = cfg.model_copy(update={"training": training})
        effective = training.model_copy(update={  # in the config's terms: all processes together
            "gradient_accumulation_steps": training.gradient_accumulation_steps * distributed.world_size()})
        run.write_text("config.yaml", cfg.model_copy(update={"training": effective}).to_yaml())  # for --resume
        prepared.stats["total"]["padding_fraction"] = data.padding_report(
            lengths, choice.micro_batch_size, cfg.model.max_seq_length, t.seed)
        facts.update(auto_fit=choice.to_dict(), estimate_gib=choice.estimate.total_gib)
        say(f"auto-fit on {card:.1f} GiB: micro-batch {choice.micro_batch_size} x {choice.gradient_accumulation_steps}"
            f" accumulation, gradient checkpointing {fit.checkpointing_name(choice.gradient_checkpointing)}; "
            f"estimated peak {choice.estimate.describe()}")
    else:
        fit.refuse_if_it_cannot_fit(configured, card, cfg, runtime.backend)
        facts.update(estimate_gib=configured.total_gib)
        say(f"memory preflight: estimated peak {configured.describe()} of {card:.1f} GiB")
    record("loading", preflight=facts)
    return cfg


def _cot_validation(cfg: KitConfig, prepared: data.PreparedData) -> dict[str, list]:
    """The run's held-out medical-o1 examples, generated for before and after training."""
    held_out = [r for r in prepared.validation if r["format"] == "medical_o1"]
    if not held_out or cfg.eval.cot_items == 0:
        return {}
    style = held_out[0]["cot_style"]
    items = evaluate.cot_items_from([r["example"] for r in held_out], cfg.eval.cot_items)
    return {f"{evaluate.COT_VALIDATION}:{style}": items}


def _evaluate(cfg: KitConfig, model: Any, tokenizer: Any, benchmarks: dict[str, list], stage: str) -> dict:
    results = evaluate.evaluate(cfg, model, tokenizer, benchmarks)
    for name, m in results.items():
        if "format_compliance" in m:
            say(f"eval {stage} {name}: format compliance {m['format_compliance']}%, reasoning "
                f"{m['mean_reasoning_words']} words, ROUGE-L {m['rouge_l']} on {m['items']} items")
            continue
        say(f"eval {stage} {name}: accuracy {m['accuracy']}% macro-F1 {m['macro_f1']}% on {m['items']} items "
            f"({m['method']}, {m['items_per_second']} items/s); predicted {m['predicted']}"
            + (f"; {m['shortened']} prompts had their context shortened to fit eval.max_length" if m.get("shortened")
               else ""))
    return results


HARNESS_FOLDER = "lm_eval_tasks"


def _harness_baseline(cfg: KitConfig, run: RunDir, model: Any, tokenizer: Any, runtime: backends.Runtime,
                      tasks: list | None) -> dict | None:
    """lm-eval on the base model before training (a resumed run's saved scores, when it has them); writes the task
    folder."""
    if not tasks:
        return None
    saved = run.path / "lm_eval_baseline.json"
    harness.write_task_folder(run.fresh_dir(HARNESS_FOLDER), tasks)
    if saved.is_file():
        return json.loads(saved.read_text())
    backends.prepare_for_generation(model, runtime)
    results = _harness(cfg, run.path / HARNESS_FOLDER, model, tokenizer, tasks, "baseline")
    run.write_json("lm_eval_baseline.json", results)
    backends.prepare_for_training(model, runtime)
    return results


def _harness(cfg: KitConfig, folder: Path, model: Any, tokenizer: Any, tasks: list | None, stage: str) -> dict | None:
    """lm-evaluation-harness on the loaded model (eval.harness: lm-eval), the task files in ``folder``."""
    if not tasks:
        return None
    say(f"lm-eval {stage}: " + ", ".join(f"{t.name} ({len(t.items)} items)" for t in tasks))
    results = harness.run_tasks(cfg, model, tokenizer, folder, tasks)
    for name, m in results.items():
        say(f"lm-eval {stage} {name}: acc {m['lm_eval_acc']}% acc_norm {m['lm_eval_acc_norm']}% macro-F1 "
            f"{m['macro_f1']}% on {m['items']} items ({m['items_per_second']} items/s); predicted {m['predicted']}")
    return results


def _summary_row(name: str, row: dict[str, dict]) -> str:
    """One benchmark in the end-of-run summary: accuracy with macro-F1 and the majority-class rate beside it, and a
    warning when a model gives one answer to nearly every item."""
    base, tuned = (row.get(k) or {} for k in ("baseline", "fine_tuned"))
    if "accuracy" not in (tuned or base):
        return f"{name} format_compliance {base.get('format_compliance', '-')} -> {tuned.get('format_compliance', '-')}"
    either = tuned or base
    text = (f"{name} accuracy {base.get('accuracy', '-')} -> {tuned.get('accuracy', '-')}, macro-F1 "
            f"{base.get('macro_f1', '-')} -> {tuned.get('macro_f1', '-')}")
    if "majority_rate" in either:
        text += f" (always '{either['majority_label']}': {either['majority_rate']})"
    warnings = [w for stage, m in (("baseline", base), ("fine_tuned", tuned)) if m
                for w in [evaluate.one_answer_warning(name, stage, m)] if w]
    return text + "".join(f"; WARNING: {w}" for w in warnings)


def write_eval_report(cfg: KitConfig, run: RunDir, results: dict[str, dict], title: str,
                      perplexity: dict | None = None, lm_eval: dict[str, dict] | None = None) -> str:
    """eval_report.md, eval.json and eval_chart.png in the run folder (new names if they exist); ``lm_eval``: the
    lm-evaluation-harness results, a section of their own."""
    rows = [_summary_row(name, row) for name, row in results.items()]
    if perplexity:
        rows.append(f"perplexity {perplexity['before']} -> {perplexity['after']}")
    if lm_eval:
        rows.append(harness.summary_text(lm_eval))
    line = "; ".join(rows) + " (baseline -> fine-tuned)"
    if not distributed.is_main():
        return line
    md, js, png = run.unique("eval_report.md"), run.unique("eval.json"), run.unique("eval_chart.png")
    run.write_text(md, evaluate.report_markdown(results, f"Evaluation: {title}", perplexity)
                   + ("\n" + harness.report_markdown(lm_eval) if lm_eval else ""))
    run.write_json(js, {"method": cfg.eval.method, "benchmarks": results, "perplexity": perplexity,
                        **({"lm_eval": lm_eval} if lm_eval else {})})
    evaluate.plot(results, run.path / png)
    say(f"evaluation report: {run.path / md}")
    return line


def run_eval(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None, baseline: bool) -> dict[str, Any]:
    """--mode eval: the base model and/or an adapter on the configured benchmarks."""
    adapter = _find_adapter(cfg, adapter_arg, output_dir)
    if adapter is not None:
        cfg = adapter_run_config(adapter, cfg)
    benchmarks = evaluate.load_benchmarks(cfg)
    lm_eval_tasks = harness.load_tasks(cfg)
    if adapter is not None:
        _check_not_trained_on({**benchmarks, **harness.guard_items(lm_eval_tasks)}, adapter)
    run = _run_for(cfg, adapter, output_dir, "base-eval")
    folder = run.fresh_dir(HARNESS_FOLDER) if lm_eval_tasks else run.path
    if lm_eval_tasks:
        harness.write_task_folder(folder, lm_eval_tasks)
    runtime = backends.activate(backends.detect(cfg), cfg)
    say(runtime.describe())
    model, tokenizer = backends.load_for_inference(cfg, runtime, None)
    with_base = baseline or adapter is None
    base = _evaluate(cfg, model, tokenizer, benchmarks, "baseline") if with_base else None
    lm_eval_base = _harness(cfg, folder, model, tokenizer, lm_eval_tasks, "baseline") if with_base else None
    tuned = lm_eval_tuned = None
    if adapter is not None:
        model = backends.attach_adapter(model, adapter, cfg, runtime)
        tuned = _evaluate(cfg, model, tokenizer, benchmarks, "fine-tuned")
        lm_eval_tuned = _harness(cfg, folder, model, tokenizer, lm_eval_tasks, "fine-tuned")
    title = cfg.model.name + (f" + {adapter.parent.name}" if adapter else " (base)")
    line = write_eval_report(cfg, run, evaluate.merge(base, tuned), title, None,
                             harness.merge(lm_eval_base, lm_eval_tuned) if lm_eval_tasks else None)
    return {"run_dir": str(run.path), "backend": runtime.describe(), "model": cfg.model.name, "eval": line}


def run_export(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None) -> dict[str, Any]:
    """--mode export: the adapter, a merged 16-bit model and/or GGUF, into the adapter's run folder (a new run
    folder under output.dir for an adapter that is not in one of the kit's run folders)."""
    from . import export

    adapter = _find_adapter(cfg, adapter_arg, output_dir)
    if adapter is None:
        raise ModelError("--mode export needs an adapter: --adapter RUN_FOLDER (or latest), not none.")
    cfg = adapter_run_config(adapter, cfg)
    if "adapter" in cfg.export.formats:
        export.adapter_files(adapter)  # a link in the adapter folder stops the export before anything is written
    run = _run_for(cfg, adapter, output_dir, "export")
    say(f"exporting {printable(adapter)} ({', '.join(cfg.export.formats)})")
    return export.run_export(cfg, adapter, say, run)

def interrupted_after_training(run: RunDir, work: str, mode: str) -> TrainingInterrupted:
    """A signal after the adapter was saved (during the evaluation or the sample answers of --mode full): the
    message says the adapter is saved and how to finish the work."""
    return TrainingInterrupted(
        f"interrupted ({signals.name(signals.received())}) during {work} after training. This run's adapter is "
        f"saved in {printable(run.adapter)}; finish {work} with: python medical_qlora_finetuning.py --mode {mode} "
        f"--adapter {printable(run.path)}")


@contextmanager
def recorded_in_manifest(run: RunDir) -> Iterator[None]:
    """Work after training (answering the sample queries): if it stops, the manifest says how, with the
    cause, instead of "trained" (the adapter stays saved); a signal says how to answer them later."""
    try:
        try:
            yield
        except KeyboardInterrupt:
            raise interrupted_after_training(run, "answering the sample queries", "test") from None
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, TrainingInterrupted))
        saved = run.path / "manifest.json"
        try:
            facts = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            facts = {}
        facts.update(status="interrupted" if interrupted else "failed", error=str(err)[:2000],
                     failed_after="training: the adapter is saved",
                     stage=f"{'interrupted' if interrupted else 'failed'} while answering the sample queries after "
                           "training: the adapter is saved")
        log.error("run %s after training: %s", facts["status"], err)
        run.write_json("manifest.json", facts)
        raise


def run_samples(cfg: KitConfig, run: RunDir, model: Any, tokenizer: Any, title: str) -> str:
    questions = generate.load_queries(cfg.generation.queries_file)
    say(f"answering {len(questions)} sample queries from {cfg.generation.queries_file}")
    began = time.perf_counter()
    results = generate.answer(cfg, model, tokenizer, questions)
    for result in results:
        if result.get("cut"):
            say(f"warning: query {printable(result['id'], 80)}: {result['cut']}")
    md_name = run.unique("sample_responses.md")
    run.write_text(md_name, generate.to_markdown(results, title))
    run.write_text(md_name.replace(".md", ".jsonl"), generate.to_jsonl(results))
    say(f"sample responses written in {time.perf_counter() - began:.1f}s: {run.path / md_name}")
    return str(run.path / md_name)


def adapter_run_config(adapter: Path, cfg: KitConfig) -> KitConfig:
    """The model and data sections an adapter was trained with (from its run's config.yaml: base model, chat
    template, system prompt and prompt templates), so that its prompts are rendered as it was trained; eval,
    generation, export and output stay cfg's. An adapter outside the kit's run folders keeps cfg's model and data
    (model.name), whatever files lie beside it."""
    run_folder = adapters.kit_run_folder(adapter)
    if run_folder is None:
        return cfg
    run_cfg = load_config(run_folder / "config.yaml")
    trained = run_cfg.model
    if trained.name != cfg.model.name:
        say(f"using base model {printable(trained.name)}, the one this adapter was trained on")
    if run_cfg.data.system_prompt != cfg.data.system_prompt:
        say("using the system prompt and prompt templates this adapter was trained with (its run's config.yaml)")
    return cfg.model_copy(update={"model": trained, "data": run_cfg.data})


def _trained_model(adapter: Path, cfg: KitConfig) -> Any:
    run_folder = adapters.kit_run_folder(adapter)
    return load_config(run_folder / "config.yaml").model if run_folder is not None else cfg.model

def _find_adapter(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None) -> Path | None:
    """The adapter folder of --adapter (None: the base model alone), checked at the adapter boundary: safetensors,
    a LoRA config, and shapes that fit the base model it will be loaded onto, before any weight loads."""
    if adapter_arg == "none":
        return None
    if adapter_arg in (None, "latest"):
        folder = latest_run_with_adapter(Path(output_dir or cfg.output.dir))
    else:
        folder = adapters.locate(adapter_arg)
    adapter = adapters.find(folder)
    if adapter.run is not None:  # a link planted in its run folder stops here, before anything is read or loaded
        RunDir(adapter.run).check_links()
    model = _trained_model(adapter.folder, cfg)
    source = backends.config_source(model.name)
    adapters.check_base(adapter, model.name, source, model.trust_remote_code)
    named = adapter.config.get("base_model_name_or_path") or ""
    if adapter.run is None and named and not _same_model(named, model.name, source):
        say(f"warning: the adapter's {adapters.CONFIG_NAME} names {printable(named, 120)} as its base model; it is "
            f"loaded onto model.name {printable(model.name, 120)}, whose shapes fit it. If it was trained on "
            f"{printable(named, 120)}, set --set model.name={printable(named, 120)}.")
    return adapter.folder


def _same_model(named: str, name: str, source: str | None) -> bool:
    """Whether an adapter's base_model_name_or_path names the model ``name`` (also by its local folder)."""
    if named in (name, source):
        return True
    try:
        return any(Path(named).expanduser().resolve() == Path(n).expanduser().resolve() for n in (name, source) if n)
    except (OSError, ValueError):
        return False

def _run_for(cfg: KitConfig, adapter: Path | None, output_dir: str | None, prefix: str) -> RunDir:
    """The adapter's own run folder; a new one under output.dir for the base model, or for an adapter that is not
    in a run folder of the kit (nothing is ever written beside a foreign adapter)."""
    if adapter is not None:
        run_folder = adapters.kit_run_folder(adapter)
        if run_folder is not None:
            run = RunDir(run_folder)
            run.start_log()
            return run
        named = slug(redact(adapter.parent.name if adapter.name == "adapter" else adapter.name))[:60] or "adapter"
        prefix = f"foreign-{named}"
    name = cfg.output.run_name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunDir.create(cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": name})}), output_dir,
                        generated_name=not cfg.output.run_name)  # a run of the same second: a -2 suffix
    if adapter is not None:
        say(f"{printable(adapter)} is not in a run folder of this kit: its results go to {printable(run.path)}")
    return run

def run_test(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None) -> dict[str, Any]:
    adapter = _find_adapter(cfg, adapter_arg, output_dir)
    if adapter is not None:
        cfg = adapter_run_config(adapter, cfg)
    run = _run_for(cfg, adapter, output_dir, "base")
    runtime = backends.activate(backends.detect(cfg), cfg)
    say(runtime.describe())
    say(f"loading {cfg.model.name}" + (f" with adapter {adapter}" if adapter else " without adapter"))
    model, tokenizer = backends.load_for_inference(cfg, runtime, adapter)
    title = f"Sample responses: {cfg.model.name}" + (f" + adapter {adapter.parent.name}" if adapter else " (base)")
    samples = run_samples(cfg, run, model, tokenizer, title)
    return {"run_dir": str(run.path), "backend": runtime.describe(), "model": cfg.model.name, "samples": samples}


def run_chat(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None, prompt: str | None) -> int:
    """--mode chat: the base model with an adapter (default: the newest run's), its training chat template and
    system prompt. While the model loads, the kit's messages go to stderr: stdout carries the conversation (with
    --prompt, the answer alone). Writes no file; returns how many replies were given."""
    from . import chat

    with contextlib.redirect_stdout(sys.stderr):
        adapter = _find_adapter(cfg, adapter_arg, output_dir)
        if adapter is not None:
            cfg = adapter_run_config(adapter, cfg)
        runtime = backends.activate(backends.detect(cfg), cfg)
        say(runtime.describe())
        say(f"loading {cfg.model.name}" + (f" with adapter {adapter}" if adapter else " without adapter"))
        model, tokenizer = backends.load_for_inference(cfg, runtime, adapter)
    if prompt is not None:
        reply = chat.one_shot(cfg, model, tokenizer, prompt, sys.stdout, sys.stderr)
        print(reply.stats(), file=sys.stderr)
        return 1
    title = f"{cfg.model.name}" + (f" + adapter {adapter.parent.name}" if adapter else " (base model)")
    return chat.interactive(cfg, model, tokenizer, sys.stdin, sys.stdout, sys.stderr, title)


def _say_if_the_epoch_tail_repeats(cfg: KitConfig, prepared: Any) -> None:
    if distributed.world_size() == 1:
        return
    packed = prepared.stats.get("total", {}).get("padding_fraction", {}).get("packed_rows_count")
    rows, unit = (packed, "packed rows") if cfg.training.packing and packed else (len(prepared.train), "examples")
    line = distributed.epoch_tail(rows, unit, cfg.training.micro_batch_size)
    if line:
        say(line)


def _counts(model: Any) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts 4-bit weights by value, not by storage
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _trainable(model: Any) -> str:
    trainable, total = _counts(model)
    return f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
