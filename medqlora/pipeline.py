"""The modes: train, test, full, and the dry-run plan. Setup -> work -> report, each step logged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from . import backends, data, generate, memory, report
from .config import KitConfig, validate
from .errors import ModelError, TrainingInterrupted
from .runs import RunDir, size_mb, latest_run_with_adapter, log, manifest


def say(message: str) -> None:
    print(f"[medqlora] {message}", flush=True)
    log.info(message)


def plan(cfg: KitConfig, mode: str, output_dir: str | None) -> dict[str, Any]:
    """What a run would do, without loading any model (for --dry-run)."""
    from .train import planned_steps

    runtime = backends.detect(cfg)
    sizes = data.count_rows(cfg.data, cfg.training.seed)
    known = [s["used"] - s.get("cv_fold_validation", 0) for s in sizes.values() if isinstance(s.get("used"), int)]
    n_train = int(sum(known) * (1 - cfg.data.val_ratio)) if len(known) == len(sizes) else None
    t = cfg.training
    return {
        "mode": mode,
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
        "outputs": str(Path(output_dir or cfg.output.dir) / (cfg.output.run_name or "<model>-<data>-<timestamp>"))
        + "/ {adapter/, config.yaml, manifest.json, metrics.json, loss.png, memory.json, data_stats.json, "
        "sample_responses.md/.jsonl, run.log}",
    }


def run_train(cfg: KitConfig, output_dir: str | None, started: float) -> tuple[RunDir, dict[str, Any], Any]:
    runtime = backends.activate(backends.detect(cfg), cfg)
    say(runtime.describe())
    run = RunDir.create(cfg, output_dir)
    say(f"run folder: {run.path}")
    run.write_text("config.yaml", cfg.to_yaml())
    facts: dict[str, Any] = {}

    def record(status: str, **extra: Any) -> None:
        facts.update(extra, status=status)
        run.write_json("manifest.json", manifest(cfg, runtime.to_dict(), facts))

    record("loading")
    try:
        collected = data.collect(cfg.data, cfg.training.seed)  # bad data stops here, before the model loads
        return _train_in(cfg, runtime, run, record, started, collected)
    except BaseException as err:  # record why the run stopped, then let the CLI report it
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, TrainingInterrupted)) else "failed"
        log.error("run %s: %s", status, err)
        record(status, error=str(err)[:2000])
        raise


def _train_in(
    cfg: KitConfig, runtime: backends.Runtime, run: RunDir, record: Any, started: float, collected: list
) -> tuple:
    from .train import planned_steps, train

    model, tokenizer, source = backends.load_for_training(cfg, runtime)
    after_load = memory.snapshot()
    say(f"loaded {cfg.model.name} ({source}); trainable parameters: {_trainable(model)}")

    prepared = data.tokenize_collected(collected, cfg.data, tokenizer, cfg.model.max_seq_length, cfg.training.seed,
                                       cfg.training.micro_batch_size)
    run.write_json("data_stats.json", prepared.stats)
    run.write_text("training_items.jsonl", "".join(
        json.dumps({"source": r["source"], "uid": r["uid"], "question_sha1_16": r["question_hash"]}) + "\n"
        for r in prepared.train))
    for name, stats in prepared.stats.items():
        say(f"data {name}: {stats}")
    say(f"training {len(prepared.train)} examples for {planned_steps(cfg, len(prepared.train))} optimizer steps")
    record("training", model_source=source, data=prepared.fingerprints)

    result = train(cfg, runtime, model, tokenizer, prepared, run)
    memory_report = memory.training_report(after_load, result.memory_after_train)
    run.write_json("memory.json", memory_report)
    run.write_json("metrics.json", {"metrics": result.metrics, "log_history": result.log_history})
    report.plot_loss(result.log_history, run.path / "loss.png")
    _remove_if_empty(run.path / "checkpoints")
    adapter_mb = size_mb(run.adapter / "adapter_model.safetensors")
    summary = {
        "run_dir": str(run.path),
        "backend": runtime.describe(),
        "model": cfg.model.name,
        "train_examples": len(prepared.train),
        "steps": result.metrics.get("steps"),
        "loss": report.loss_trend(result.log_history),
        "train_wall_s": result.metrics.get("train_wall_s"),
        "tokens_per_second": result.metrics.get("tokens_per_second"),
        "memory": memory.format_summary(memory_report),
        "adapter_mb": adapter_mb,
    }
    record("trained", adapter_mb=adapter_mb, train_wall_s=result.metrics.get("train_wall_s"),
           start_to_trained_s=round(time.perf_counter() - started, 2))
    backends.prepare_for_generation(model, runtime)
    return run, summary, (model, tokenizer, runtime)


def run_samples(cfg: KitConfig, run: RunDir, model: Any, tokenizer: Any, title: str) -> str:
    questions = generate.load_queries(cfg.generation.queries_file)
    say(f"answering {len(questions)} sample queries from {cfg.generation.queries_file}")
    began = time.perf_counter()
    results = generate.answer(cfg, model, tokenizer, questions)
    md_name = run.unique("sample_responses.md")
    run.write_text(md_name, generate.to_markdown(results, title))
    run.write_text(md_name.replace(".md", ".jsonl"), generate.to_jsonl(results))
    say(f"sample responses written in {time.perf_counter() - began:.1f}s: {run.path / md_name}")
    return str(run.path / md_name)


def adapter_run_config(adapter: Path, cfg: KitConfig) -> KitConfig:
    """The model section an adapter was trained with (from its run's config.yaml), keeping the rest of cfg."""
    saved = adapter.parent / "config.yaml"
    if not saved.is_file():
        return cfg
    trained = validate(yaml.safe_load(saved.read_text()), source=str(saved))
    if trained.model.name != cfg.model.name:
        say(f"using base model {trained.model.name}, the one this adapter was trained on")
    return cfg.model_copy(update={"model": trained.model})


def run_test(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None) -> dict[str, Any]:
    root = Path(output_dir or cfg.output.dir)
    if adapter_arg in (None, "latest"):
        adapter = latest_run_with_adapter(root)
    elif adapter_arg == "none":
        adapter = None
    else:
        adapter = Path(adapter_arg)
        if adapter.is_dir() and (adapter / "adapter" / "adapter_config.json").is_file():
            adapter = adapter / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise ModelError(f"--adapter {adapter_arg}: no adapter_config.json there (a LoRA adapter folder or run folder).")
    if adapter is not None:
        cfg = adapter_run_config(adapter, cfg)
        run = RunDir(adapter.parent)
        run.start_log()
    else:
        run = RunDir.create(cfg.model_copy(update={"output": cfg.output.model_copy(
            update={"run_name": cfg.output.run_name or f"base-{time.strftime('%Y%m%d-%H%M%S')}"})}), output_dir)
    runtime = backends.activate(backends.detect(cfg), cfg)
    say(runtime.describe())
    say(f"loading {cfg.model.name}" + (f" with adapter {adapter}" if adapter else " without adapter"))
    model, tokenizer = backends.load_for_inference(cfg, runtime, adapter)
    title = f"Sample responses: {cfg.model.name}" + (f" + adapter {adapter.parent.name}" if adapter else " (base)")
    samples = run_samples(cfg, run, model, tokenizer, title)
    return {"run_dir": str(run.path), "backend": runtime.describe(), "model": cfg.model.name, "samples": samples}


def _trainable(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
