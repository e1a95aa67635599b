"""Training with TRL's SFTTrainer on pre-tokenized examples (prompt tokens already masked to -100)."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Runtime
from .config import BITSANDBYTES_OPTIMIZERS, KitConfig
from .data import PreparedData
from .distributed import barrier, is_main, sharding, world_size
from .errors import ConfigError, MedQLoRAError, TrainingInterrupted
from .memory import snapshot
from .messages import log
from .runs import RunDir
from .secrets import printable
from .sharded import gathered_weights, load_fsdp_lora, save_fsdp_lora, scatter_fsdp_trainable, write_gathered_adapter
from .tracking import add_tracking, tracking_env


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    memory_after_train: dict[str, Any] = field(default_factory=dict)


def planned_steps(cfg: KitConfig, n_train: int) -> int:
    if cfg.training.max_steps > 0:
        return cfg.training.max_steps
    per_epoch = math.ceil(n_train / (cfg.training.micro_batch_size * cfg.training.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.training.num_epochs))


def check_warmup(cfg: KitConfig, n_train: int) -> None:
    """A warm-up of training.warmup_steps that is not below the run's optimizer steps (known once the data is:
    an epochs-only run) is refused, as it is against max_steps in the config. GRPO counts its batches in
    completions, so its steps are not planned here."""
    t = cfg.training
    if t.warmup_steps is None or t.max_steps > 0 or t.method == "grpo":
        return
    steps = planned_steps(cfg, n_train)
    if t.warmup_steps >= steps:
        raise ConfigError(f"training.warmup_steps ({t.warmup_steps}) is not below the {steps} optimizer steps of "
                          f"this run ({n_train} examples, {t.num_epochs:g} epochs, batch {t.micro_batch_size} x "
                          f"{t.gradient_accumulation_steps}): the learning rate would still be warming up when training "
                          "ends and never reach learning_rate. Lower training.warmup_steps (or use "
                          "training.warmup_ratio, a share of the steps).")


def optimizer_name(cfg: KitConfig, runtime: Runtime) -> str:
    if runtime.device == "cpu" and cfg.training.optimizer in BITSANDBYTES_OPTIMIZERS:
        return "adamw_torch"  # bitsandbytes' 8-bit and paged optimizers need CUDA
    return cfg.training.optimizer


def bitsandbytes_importable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a build for another CUDA raising at import
        return False
    return True


# The optimizers transformers' Trainer builds from a package of their own (transformers' trainer_optimizer.py):
# name prefix or name -> (the module imported, what to install).
OPTIONAL_OPTIMIZER_PACKAGES: dict[str, tuple[str, str]] = {
    "galore_": ("galore_torch", "pip install galore-torch"),
    "apollo_": ("apollo_torch", "pip install apollo-torch"),
    "lomo": ("lomo_optim", "pip install lomo-optim"),
    "adalomo": ("lomo_optim", "pip install lomo-optim"),
    "grokadamw": ("grokadamw", "pip install grokadamw"),
    "adamw_torch_4bit": ("torchao", "pip install torchao"),
    "adamw_torch_8bit": ("torchao", "pip install torchao"),
    "schedule_free_": ("schedulefree", "pip install schedulefree"),
    "stable_adamw": ("optimi", "pip install torch-optimi"),
    "adamw_anyprecision": ("torchdistx", "install torchdistx from https://github.com/pytorch/torchdistx"),
    "adamw_torch_xla": ("torch_xla", "it runs on TPUs: pip install torch_xla"),
    "adamw_torch_npu_fused": ("torch_npu", "it runs on Ascend NPUs: pip install torch_npu"),
}


def missing_optimizer_package(name: str) -> tuple[str, str] | None:
    """(module, how to install it) when ``name`` is built from a package that is not installed, else None."""
    import importlib.util

    for key, (module, install) in OPTIONAL_OPTIMIZER_PACKAGES.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return None if importlib.util.find_spec(module) is not None else (module, install)
    return None


def check_optimizer(cfg: KitConfig, runtime: Runtime) -> str:
    """What the run will train with, in words; an optimizer whose package is not installed (bitsandbytes on a
    GPU, galore_torch, schedulefree, ...) is refused before anything loads (the Trainer would fail after the
    model loaded)."""
    name = cfg.training.optimizer
    missing = missing_optimizer_package(name)
    if missing:
        module, install = missing
        raise ConfigError(f"training.optimizer: {name} is built from the {module} package, which is not installed "
                          f"here: {install}, or choose an optimizer of torch's own, e.g. --set "
                          "training.optimizer=adamw_torch.")
    if name not in BITSANDBYTES_OPTIMIZERS:
        return name
    if runtime.device == "cpu":
        installed = "" if bitsandbytes_importable() else "; bitsandbytes is not installed here either"
        return (f"{name} needs bitsandbytes and a CUDA GPU: this CPU run trains with adamw_torch{installed} "
                "(on the GPU machine: pip install bitsandbytes)")
    if not bitsandbytes_importable():
        raise ConfigError(f"training.optimizer: {name} is a bitsandbytes optimizer, and bitsandbytes cannot be "
                          "imported here: pip install bitsandbytes (a build for this CUDA), or choose an optimizer "
                          "of torch's own, e.g. --set training.optimizer=adamw_torch_fused.")
    return name


def sft_config(cfg: KitConfig, runtime: Runtime, run: RunDir, with_validation: bool = False) -> Any:
    from trl import SFTConfig

    t = cfg.training
    config = SFTConfig(
        output_dir=str(run.path / "checkpoints"),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler(),
        # transformers 5 takes both forms in warmup_steps: a float below 1 is a ratio of the total steps
        warmup_steps=t.warmup(),
        optim=optimizer_name(cfg, runtime),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.keep_checkpoints,
        eval_strategy="steps" if t.eval_steps and with_validation else "no",
        eval_steps=t.eval_steps or None,
        bf16=runtime.dtype == "bf16",
        fp16=runtime.dtype == "fp16",
        use_cpu=runtime.device == "cpu",
        max_length=cfg.model.max_seq_length,
        packing=t.packing,
        packing_strategy="bfd",  # whole examples per row, never split across rows
        # TRL packs each dataset worker's shard on its own, so the rows would follow the worker count Unsloth
        # sizes from the CPUs and free memory (1 and 2 processes packed differently). The data arrives
        # tokenized: one worker (Unsloth's 1, TRL's None) is enough, and the rows follow the data alone.
        dataset_num_proc=1 if runtime.backend == "unsloth" else None,
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
        gradient_checkpointing=False,  # already set up on the model by the backend
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",  # TensorBoard: tracking_callbacks
        run_name=run.path.name,
        include_num_input_tokens_seen="non_padding",  # real tokens per second, padding excluded
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    if runtime.device == "cuda" and world_size() == 1:
        _ = config.device  # sets n_gpu to every visible GPU...
        # ...and the Trainer would then multiply the micro-batch by it (4-bit models get no DataParallel):
        # one process trains on one GPU with the configured batch; several GPUs: torchrun / accelerate launch.
        config._n_gpu = 1
    return config


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


def _trainer_class() -> type:
    """TRL's SFTTrainer (Unsloth's, once Unsloth is imported) with these changes: the length-grouped sampler
    groups each *effective* batch, the same for any number of processes (the Trainer groups each process's
    share, so 1 and 2 processes drew different batches from the same data and seed), and draws each epoch's
    order from the seed and the epoch (see _length_grouped_sampler); FSDP checkpoints restore the adapter."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class KitTrainer(SFTTrainer):
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

        # FSDP: accelerate's sharded checkpoint of a PEFT model saves the LoRA weights but does not load
        # them back (a resumed run restarted from the initial adapter), so checkpoints also carry the
        # gathered LoRA weights, and a resumed run puts them back into its shards.
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            if sharding() == "fsdp":
                save_fsdp_lora(self.model, Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")
            super()._save_checkpoint(model, trial)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            if sharding() == "fsdp":
                scatter_fsdp_trainable(self.model, load_fsdp_lora(Path(resume_from_checkpoint)))

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
    trainer.add_callback(_stop_on_non_finite(cfg))
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
    metrics["resumed_from_step"] = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else None
    memory = snapshot()
    weights = gathered_weights(trainer)  # sharded: every process takes part
    if is_main():
        save_adapter(model, tokenizer, run, weights)
        shutil.rmtree(run.path / "checkpoints", ignore_errors=True)  # the run is complete: the adapter is what counts
    barrier()
    return TrainResult(metrics=metrics, log_history=trainer.state.log_history, memory_after_train=memory)


def _interrupted(model: Any, tokenizer: Any, run: RunDir, step: int) -> TrainingInterrupted:
    """Ctrl-C, SIGTERM or SIGHUP during training: save the adapter trained so far (when it is finite)."""
    from .signals import name, received

    how = f"Interrupted ({name(received())}) at step {step}"
    if sharding():  # gathering the shards needs every process, and they are all being interrupted
        return TrainingInterrupted(
            f"{how}. A sharded run cannot gather its adapter when interrupted: continue it from its last "
            f"checkpoint (training.save_steps) with --resume {run.path}.")
    if step == 0:
        return TrainingInterrupted(f"{how}: nothing was trained yet, so no adapter was saved.")
    if not adapter_is_finite(model):
        return TrainingInterrupted(f"{how}: the adapter's weights are no longer finite (NaN or infinite), so it was "
                                   "not saved. Lower training.learning_rate and train again.")
    if is_main():
        save_adapter(model, tokenizer, run)
    return TrainingInterrupted(f"{how}: the adapter trained so far is saved in {run.adapter}. Continue from the last "
                               f"checkpoint with --resume {run.path}, if one was saved (training.save_steps).")


class NonFiniteTraining(MedQLoRAError):
    """The loss or the gradient norm became NaN or infinite: the weights are lost from that step on."""


def _stop_on_non_finite(cfg: KitConfig) -> Any:
    """A callback that stops training at the first logged non-finite loss or gradient norm (the Trainer logs
    both every training.logging_steps; no extra host sync), with the step and what to change."""
    from transformers import TrainerCallback

    t = cfg.training

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise NonFiniteTraining(
                        f"Training stopped at step {state.global_step}: the {key.replace('_', ' ')} is {value}. The "
                        f"weights are no longer finite, so no adapter was saved. Train again with a lower learning "
                        f"rate (--set training.learning_rate={t.learning_rate / 10:g}; now {t.learning_rate:g}), "
                        f"gradient clipping at 1.0 or less (training.max_grad_norm, now {t.max_grad_norm:g}), and on "
                        "a GPU with bfloat16, model.dtype: bf16 (fp16 overflows more easily). If it happens at the "
                        "first steps, look for empty or garbled training rows.")

    return StopOnNonFinite()


def adapter_is_finite(model: Any, weights: dict[str, Any] | None = None) -> bool:
    """True when every trainable weight (or every gathered weight) is a finite number."""
    import torch

    tensors = weights.values() if weights is not None else (p for p in model.parameters() if p.requires_grad)
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _remove_incomplete_checkpoints(run: RunDir) -> None:
    """A checkpoint the Trainer was writing when it failed (disk full...) holds no trainer_state.json, which
    it writes last: remove it, so that neither --resume nor a user takes it for a checkpoint."""
    if not is_main():
        return
    for folder in (run.path / "checkpoints").glob("checkpoint-*"):
        if folder.is_dir() and not folder.is_symlink() and not (folder / "trainer_state.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)


def save_adapter(model: Any, tokenizer: Any, run: RunDir, weights: dict[str, Any] | None = None) -> None:
    """Write the adapter (safetensors) and tokenizer next to it, then move it in place in one rename.
    weights: the gathered state of a sharded model (the adapter's own parameters hold only a shard)."""
    if not adapter_is_finite(model, weights):
        raise NonFiniteTraining("The trained adapter holds NaN or infinite weights, so it was not saved. Train again "
                                "with a lower training.learning_rate (and training.max_grad_norm at 1.0 or less).")
    partial = run.path / ".adapter.partial"
    try:
        partial = run.fresh_dir(".adapter.partial")  # a leftover of a crash (or a link there) is removed first
        if run.adapter.exists() or run.adapter.is_symlink():  # saved at Ctrl-C, before this resumed run: keep it aside
            run.adapter.rename(run.inside(run.unique("adapter-interrupted")))
        if weights is None:
            model.save_pretrained(str(partial), safe_serialization=True)
        else:
            write_gathered_adapter(model, weights, partial)
        tokenizer.save_pretrained(str(partial))
        _usual_permissions(partial)
        partial.rename(run.adapter)
    except OSError as err:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)  # an incomplete adapter is worth nothing
        raise MedQLoRAError(
            f"Cannot save the adapter in {run.path}: {err.strerror}. Free some space (or choose another "
            f"--output-dir) and train again; the incomplete files were removed."
        ) from None
    log.info("adapter saved to %s", run.adapter)


def _usual_permissions(folder: Path) -> None:
    """Files as the user's umask makes them (safetensors writes its file owner-only, unlike every other file)."""
    mask = os.umask(0)
    os.umask(mask)
    for file in folder.iterdir():
        if file.is_file() and not file.is_symlink():
            file.chmod(0o666 & ~mask)


def _is_damaged_file(err: BaseException) -> bool:
    """What loading a damaged checkpoint raises: bad JSON (trainer_state.json), a pickle torch's safe loader
    refuses or cannot read (optimizer.pt, scheduler.pt, rng_state.pth), a truncated file or safetensors header."""
    import pickle

    text = str(err)
    return isinstance(err, (ValueError, pickle.UnpicklingError, EOFError, KeyError)) or any(
        marker in text for marker in ("Weights only load failed", "PytorchStreamReader", "Error while deserializing",
                                      "invalid load key", "HeaderTooLarge", "MetadataIncompleteBuffer"))


def _is_cuda_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in str(err)


def _oom_error(cfg: KitConfig, model: Any, tokenizer: Any, run: RunDir, step: int) -> MedQLoRAError:
    import torch

    figures = ""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_reserved() / 1024**3
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        figures = f": peak {peak:.1f} of {total:.1f} GiB"
        torch.cuda.empty_cache()
    saved = ""
    if step > 0 and is_main() and not sharding():
        try:
            save_adapter(model, tokenizer, run)
            saved = f" The adapter after {step} steps is saved in {run.adapter}."
        except Exception:  # saving is best effort after an OOM
            saved = ""
    t = cfg.training
    return MedQLoRAError(
        f"CUDA out of memory at step {step}{figures}.{saved}\nTry one of: "
        f"--set training.micro_batch_size={max(1, t.micro_batch_size // 2)} "
        f"--set training.gradient_accumulation_steps={t.gradient_accumulation_steps * 2} (same effective batch); "
        f"--set model.max_seq_length={max(128, cfg.model.max_seq_length // 2)}; "
        "--set training.gradient_checkpointing=unsloth; --set model.load_in_4bit=true."
    )


def run_trainer(trainer: Any, cfg: KitConfig, model: Any, tokenizer: Any, run: RunDir, resume_from: Path | None,
                speed: Any) -> Any:
    """trainer.train(), with Ctrl-C/SIGTERM, out-of-memory and a damaged resume checkpoint explained."""
    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        raise _interrupted(model, tokenizer, run, trainer.state.global_step) from None
    except Exception as err:
        _remove_incomplete_checkpoints(run)
        if _is_cuda_oom(err):
            raise _oom_error(cfg, model, tokenizer, run, trainer.state.global_step) from None
        if resume_from is not None and speed.steps_here == 0 and _is_damaged_file(err):
            raise MedQLoRAError(
                f"{resume_from} is damaged ({type(err).__name__}: {printable(str(err), 160)}): its state cannot be "
                f"loaded. Move it out of {run.path / 'checkpoints'} to resume from the checkpoint before it, or "
                "train again without --resume.") from None
        raise
