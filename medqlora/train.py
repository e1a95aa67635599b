"""Training with TRL's SFTTrainer on pre-tokenized examples (prompt tokens already masked to -100): its
arguments, the trainer class, and the run that saves the adapter (guarded by trainer_run.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Runtime, liger_applied
from .backends.kernels import LIGER_FLAGS
from .checkpoint_files import remove_checkpoints, step_of
from .config import KitConfig
from .data import PreparedData
from .distributed import barrier, grpo_prompts_per_generation, grpo_steps_per_epoch, is_main, sharding, world_size
from .errors import ConfigError
from .memory import snapshot
from .optimizers import check_optimizer  # noqa: F401 (plan.py imports it from here)
from .run_files import Files
from .runs import RunDir
from .sharded import gathered_weights, load_fsdp_lora, save_fsdp_lora, scatter_fsdp_trainable
from .step_reads import DeferredStepReads
from .tracking import add_tracking, tracking_env
from .trainer_args import common_args, one_gpu
from .trainer_run import run_trainer, save_adapter, stop_on_non_finite
from .write_errors import library_os_errors


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    memory_after_train: dict[str, Any] = field(default_factory=dict)


def planned_steps(cfg: KitConfig, n_train: int) -> int:
    if cfg.training.max_steps > 0:
        return cfg.training.max_steps
    if cfg.training.method == "grpo":
        per_epoch = grpo_steps_per_epoch(cfg, n_train)  # a GRPO micro-batch counts completions, not prompts
    else:
        per_epoch = math.ceil(n_train / (cfg.training.micro_batch_size * cfg.training.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.training.num_epochs))


def check_steps_against_data(cfg: KitConfig, n_train: int) -> None:
    """What only the number of training examples shows: a GRPO generation that needs more prompts than there
    are, and a warm-up longer than the run."""
    check_generation_fits_data(cfg, n_train)
    check_warmup(cfg, n_train)


def logging_note(cfg: KitConfig, n_train: int | None) -> str | None:
    """training.logging_steps beyond the run's optimizer steps (a preset's logging_steps on a short rehearsal):
    the run trains, but logs no training loss. Said by the plan and the run."""
    steps = planned_steps(cfg, n_train)
    if cfg.training.logging_steps <= steps:
        return None
    return (f"training.logging_steps ({cfg.training.logging_steps}) is beyond this run's {steps} optimizer steps: no "
            "training loss will be logged (no loss curve, no loss in the summary or metrics.json). Set "
            f"training.logging_steps to at most {steps} (1: every step) to see it")


def batch_notes(cfg: KitConfig, n_train: int | None) -> tuple[str | None, str | None]:
    """What a step trains on where it is not micro_batch_size x gradient_accumulation_steps rows (the Trainer ends a
    step at the end of each epoch): (a warning where one step would hold more than the data, a whole epoch; a note
    where each epoch's last step is shorter). GRPO counts completions (its own checks); packed rows are known once
    packed, so only the first is said of them."""
    t = cfg.training
    if n_train is None or n_train <= 0 or t.method == "grpo":
        return None, None
    effective = t.micro_batch_size * t.gradient_accumulation_steps
    if effective > n_train:
        micro = (f", in micro-batches of {n_train} (micro_batch_size {t.micro_batch_size} is more than the examples)"
                 if t.micro_batch_size > n_train else "")
        return (f"the effective batch of {t.micro_batch_size} x {t.gradient_accumulation_steps} = {effective} rows is "
                f"more than the {n_train} training examples: each optimizer step trains on one whole epoch, "
                f"{n_train} rows{micro}, not {effective}. Lower training.gradient_accumulation_steps (or "
                f"micro_batch_size) so that a step holds at most {n_train} rows, or give more data"), None
    micro_batches = math.ceil(n_train / t.micro_batch_size)
    if t.packing or micro_batches % t.gradient_accumulation_steps == 0:
        return None, None
    steps = math.ceil(micro_batches / t.gradient_accumulation_steps)
    last = micro_batches - (steps - 1) * t.gradient_accumulation_steps
    rows = n_train - (steps - 1) * effective
    return None, (f"each epoch's {micro_batches} micro-batches make {steps - 1} optimizer step"
                  f"{'s' if steps > 2 else ''} of {effective} rows and a last one of {last} micro-batch"
                  f"{'es' if last > 1 else ''} ({rows} rows): the Trainer ends a step at the end of an epoch")


def check_generation_fits_data(cfg: KitConfig, n_train: int) -> None:
    """TRL's sampler deals GRPO prompts out a whole generation at a time and drops a generation it cannot fill:
    with fewer prompts than one generation takes, nothing would train (an error, or an untrained adapter)."""
    t, g = cfg.training, cfg.grpo
    if t.method != "grpo":
        return
    completions = t.micro_batch_size * t.gradient_accumulation_steps
    needed = grpo_prompts_per_generation(cfg)
    if needed <= n_train:
        return
    fitting = n_train * g.num_generations // completions
    lower = (f"lower grpo.steps_per_generation to at most {fitting}" if fitting >= 1
             else f"lower the batch (training.micro_batch_size x gradient_accumulation_steps, now {completions})")
    raise ConfigError(f"One GRPO generation takes {needed} prompts ({completions} completions a step x "
                      f"grpo.steps_per_generation {g.steps_per_generation} / grpo.num_generations {g.num_generations}), "
                      f"and the training data has {n_train}: nothing would train. Add rows, or {lower}.")


def check_warmup(cfg: KitConfig, n_train: int) -> None:
    """A warm-up of training.warmup_steps that is not below the run's optimizer steps (known once the data is:
    an epochs-only run) is refused, as it is against max_steps in the config."""
    t = cfg.training
    if t.warmup_steps is None or t.max_steps > 0:
        return
    steps = planned_steps(cfg, n_train)
    rows = f"{n_train} prompts, {cfg.grpo.num_generations} completions each" if t.method == "grpo" \
        else f"{n_train} examples"
    if t.warmup_steps >= steps:
        raise ConfigError(f"training.warmup_steps ({t.warmup_steps}) is not below the {steps} optimizer steps of "
                          f"this run ({rows}, {t.num_epochs:g} epochs, batch {t.micro_batch_size} x "
                          f"{t.gradient_accumulation_steps}): the learning rate would still be warming up when training "
                          "ends and never reach learning_rate. Lower training.warmup_steps (or use "
                          "training.warmup_ratio, a share of the steps).")


def sft_config(cfg: KitConfig, runtime: Runtime, run: RunDir, with_validation: bool = False) -> Any:
    from trl import SFTConfig

    t = cfg.training
    return one_gpu(SFTConfig(**common_args(cfg, runtime, run) | dict(
        per_device_eval_batch_size=t.micro_batch_size,
        eval_strategy="steps" if t.eval_steps and with_validation else "no",
        eval_steps=t.eval_steps or None,
        max_length=cfg.model.max_seq_length,
        packing=t.packing,
        packing_strategy="bfd",  # whole examples per row, never split across rows
        # TRL packs each dataset worker's shard on its own, so the rows would follow the worker count Unsloth
        # sizes from the CPUs and free memory (1 and 2 processes packed differently). The data arrives
        # tokenized: one worker (Unsloth's 1, TRL's None) is enough, and the rows follow the data alone.
        dataset_num_proc=1 if runtime.backend == "unsloth" else None,
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
        include_num_input_tokens_seen="non_padding",  # real tokens per second, padding excluded
        **liger_args(runtime),
    )), runtime)


def liger_args(runtime: Runtime) -> dict[str, Any]:
    """Liger Kernel, applied to the model when it loaded (backends.kernels): TRL's loss path then reads the loss
    Liger computes without logits (and its plain nll loss, not the chunked one). The Trainer applies the same
    kernels again when training starts, which changes nothing."""
    if not liger_applied(runtime):
        return {}
    return dict(use_liger_kernel=True, liger_kernel_config=dict(LIGER_FLAGS))


def _dataset(records: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [r["input_ids"] for r in records], "labels": [r["labels"] for r in records]}
    )


def _length_grouped_sampler(batch_size: int, lengths: list[int], seed: int) -> Any:
    """The Trainer's length-grouped sampler, with each epoch's order drawn from seed + epoch instead of the
    global random state: a run resumed in the middle of an epoch then trains the batches the uninterrupted
    run trained (the Trainer restores the random state of the checkpoint's step, not of the epoch's start,
    so the resumed epoch used to be shuffled anew)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Any:
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            yield from super().__iter__()
            self.epoch += 1  # the next epoch, where nothing sets it

    return EpochSeeded(batch_size, lengths=lengths)


class _FsdpLoraCheckpoints:
    """FSDP: accelerate's sharded checkpoint of a PEFT model saves the LoRA weights but does not load
    them back (a resumed run restarted from the initial adapter), so checkpoints also carry the
    gathered LoRA weights, and a resumed run puts them back into its shards. Mixed into the trainer class."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # a full disk while checkpointing: the run's OSError handling, not a traceback
        with library_os_errors(Path(self._get_output_dir(trial))):
            if sharding() == "fsdp":
                save_fsdp_lora(self.model, Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if sharding() == "fsdp":
            scatter_fsdp_trainable(self.model, load_fsdp_lora(Path(resume_from_checkpoint)))


def _trainer_class() -> type:
    """TRL's SFTTrainer (Unsloth's, once Unsloth is imported) with these changes: the length-grouped sampler
    groups each *effective* batch, the same for any number of processes (the Trainer groups each process's
    share, so 1 and 2 processes drew different batches from the same data and seed), and draws each epoch's
    order from the seed and the epoch (see _length_grouped_sampler); FSDP checkpoints restore the adapter; and a
    step reads nothing back from the GPU outside logging steps (step_reads.py)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class KitTrainer(DeferredStepReads, _FsdpLoraCheckpoints, SFTTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                sampler = _length_grouped_sampler(sampler.batch_size * world_size(), sampler.lengths,
                                                  self.args.data_seed if self.args.data_seed is not None
                                                  else self.args.seed)
                self._epoch_sampler = sampler
            return sampler

        def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
            # set here, not only through set_epoch: the dataloader that skips a resumed epoch's trained
            # batches on several processes does not pass set_epoch on to the sampler
            if getattr(self, "_epoch_sampler", None) is not None and "epoch" in kwargs:
                self._epoch_sampler.set_epoch(kwargs["epoch"])
            return super()._run_epoch(*args, **kwargs)

        def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
            if world_size() == 1 or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            # several CPU processes: transformers maps the optimizer state to args.device, "cpu:0", which
            # torch.load cannot restore ("don't know how to restore data location"); "cpu" is where it goes
            from unittest import mock

            import torch

            with mock.patch.object(type(self.args), "device", new_callable=mock.PropertyMock,
                                   return_value=torch.device("cpu")):
                return super()._load_optimizer_and_scheduler(checkpoint)

    return KitTrainer


def train(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, data: PreparedData, run: RunDir,
          resume_from: Path | None = None) -> TrainResult:
    """Train (or continue from ``resume_from``, a checkpoint of this run) and save the adapter."""
    with tracking_env(cfg, run):
        if cfg.training.method != "sft":  # GRPO, DPO, ORPO: medqlora/rl.py
            from .rl import train_method

            return train_method(cfg, runtime, model, tokenizer, data, run, resume_from)
        return _train(cfg, runtime, model, tokenizer, data, run, resume_from)


def _train(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, data: PreparedData, run: RunDir,
           resume_from: Path | None) -> TrainResult:
    trainer = _trainer_class()(
        model=model,
        args=sft_config(cfg, runtime, run, with_validation=bool(data.validation)),
        train_dataset=_dataset(data.train),
        eval_dataset=_dataset(data.validation) if data.validation else None,
        processing_class=tokenizer,
    )
    speed = add_tracking(trainer, cfg, run)
    trainer.add_callback(stop_on_non_finite(cfg))
    before = None
    # Sharded: evaluating first would wrap the model before the trainer sets FSDP up for LoRA (its own
    # units, the storage dtype); the held-out loss is then reported after training only.
    if data.validation and resume_from is None and not sharding():
        before = trainer.evaluate()["eval_loss"]  # held-out NLL of the base model
    started = time.perf_counter()
    output = run_trainer(trainer, cfg, model, tokenizer, run, resume_from, speed)
    metrics = dict(output.metrics)
    metrics["train_wall_s"] = round(time.perf_counter() - started, 2)
    metrics["steps"] = trainer.state.global_step
    metrics["tokens_seen"] = trainer.state.num_input_tokens_seen
    metrics["tokens_per_second"] = round(trainer.state.num_input_tokens_seen / max(metrics["train_wall_s"], 1e-9), 1)
    metrics["tokens_per_second_after_warmup"] = speed.steady_tokens_per_second
    metrics["first_step_unix"] = speed.first_step_unix
    metrics["train_examples"] = len(data.train)
    metrics["trained_tokens"] = sum(sum(1 for x in r["labels"] if x != -100) for r in data.train)
    if data.validation:
        metrics.update(trainer.evaluate())
        metrics["eval_loss_before"] = before
        metrics["perplexity_before"] = round(math.exp(before), 3) if before is not None else None
        metrics["perplexity_after"] = round(math.exp(metrics["eval_loss"]), 3)
    metrics["resumed_from_step"] = step_of(resume_from) if resume_from else None
    memory = snapshot()
    weights = gathered_weights(trainer)  # sharded: every process takes part
    if is_main():
        save_adapter(model, tokenizer, run, weights)
        remove_checkpoints(run.path / Files.CHECKPOINTS)
    barrier()
    return TrainResult(metrics=metrics, log_history=trainer.state.log_history, memory_after_train=memory)
