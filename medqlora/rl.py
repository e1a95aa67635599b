"""The methods after SFT: GRPO (grpo.py: TRL's GRPOTrainer, Unsloth's patched one on NVIDIA GPUs) with the
verifiable rewards of rewards.py, and DPO / ORPO (TRL) on preference rows.

The recipe runs them as it runs SFT (run folder, manifest, leakage guard, evaluation before and after,
samples, export, resume): ``prepare_method_rows`` (method_rows.py) replaces the SFT tokenization and
``train_method`` the SFTTrainer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import report
from .backends import Runtime
from .checkpoint_files import remove_checkpoints, step_of
from .config import KitConfig
from .data import PreparedData
from .distributed import barrier, is_main
from .grpo import format_style, grpo_trainer, never_learned, reward_summary
from .memory import snapshot
from .messages import say
from .method_rows import prepare_method_rows
from .runs import Files, RunDir
from .tracking import add_tracking
from .train import TrainResult
from .trainer_args import common_args, one_gpu
from .trainer_run import run_trainer, save_adapter, stop_on_non_finite

__all__ = ["format_style", "prepare_method_rows", "preference_trainer", "train_method"]




def train_method(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData, run: RunDir,
                 resume_from: Path | None) -> TrainResult:
    if cfg.training.method == "grpo":
        trainer = grpo_trainer(cfg, runtime, model, tokenizer, prepared, run)
    else:
        trainer = preference_trainer(cfg, runtime, model, tokenizer, prepared, run)
    speed = add_tracking(trainer, cfg, run)
    trainer.add_callback(stop_on_non_finite(cfg))
    started = time.perf_counter()
    output = run_trainer(trainer, cfg, model, tokenizer, run, resume_from, speed)
    metrics = dict(output.metrics)
    metrics["method"] = cfg.training.method
    metrics["train_wall_s"] = round(time.perf_counter() - started, 2)
    metrics["steps"] = trainer.state.global_step
    metrics["tokens_seen"] = trainer.state.num_input_tokens_seen
    metrics["first_step_unix"] = speed.first_step_unix
    metrics["train_examples"] = len(prepared.train)
    metrics["resumed_from_step"] = step_of(resume_from) if resume_from else None
    # the wall time is this invocation's: a resumed run trained only the steps after its checkpoint
    steps_trained_here = metrics["steps"] - (metrics["resumed_from_step"] or 0)
    metrics["seconds_per_step"] = round(metrics["train_wall_s"] / max(1, steps_trained_here), 2)
    history = trainer.state.log_history
    if cfg.training.method == "grpo":
        metrics["rewards"] = reward_summary(history)
        metrics["generation"] = getattr(trainer, "generation_totals", {})
    if (idle := never_learned(cfg, history)) is not None:
        metrics["warning"] = idle
        say(f"warning: {idle}")
    if is_main():
        report.plot_reward_curves(history, run.path / Files.REWARD_CURVES)
    memory = snapshot()
    if is_main():
        save_adapter(model, tokenizer, run)
        remove_checkpoints(run.path / Files.CHECKPOINTS)
    barrier()
    return TrainResult(metrics=metrics, log_history=history, memory_after_train=memory)


def preference_trainer(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData,
                       run: RunDir) -> Any:
    """TRL's DPOTrainer or ORPOTrainer (trl.experimental in TRL 1.x) on prompt / chosen / rejected text, the
    prompt already rendered with the chat template and the replies ending with the end-of-turn text. DPO's
    reference is the model with the adapter switched off (or the init_adapter's copy), as TRL does for PEFT."""
    from datasets import Dataset

    p = cfg.preference
    rows = Dataset.from_dict({k: [r[k] for r in prepared.train] for k in ("prompt", "chosen", "rejected")})
    common = common_args(cfg, runtime, run)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.training.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = one_gpu(DPOConfig(**common, beta=p.beta, loss_type=[p.loss_type], max_length=cfg.model.max_seq_length,
                                  truncation_mode="keep_start"), runtime)
        return DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = one_gpu(ORPOConfig(**common, beta=p.beta, max_length=cfg.model.max_seq_length,
                               max_completion_length=max(1, cfg.model.max_seq_length - p.max_prompt_length)), runtime)
    return ORPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
