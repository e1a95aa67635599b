"""The Trainer settings every training method shares (SFT adds its own in train.sft_config; GRPO, DPO and ORPO
theirs in grpo.py and rl.py), and one GPU per process."""

from __future__ import annotations

from typing import Any

from .backends import Runtime
from .config import KitConfig
from .distributed import world_size
from .optimizers import optimizer_name
from .progress import bars_shown
from .runs import Files, RunDir


def common_args(cfg: KitConfig, runtime: Runtime, run: RunDir) -> dict[str, Any]:
    """The Trainer settings every training method shares."""
    t = cfg.training
    return dict(
        output_dir=str(run.path / Files.CHECKPOINTS),
        per_device_train_batch_size=t.micro_batch_size,
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
        # the filter reads every micro-batch's loss on the host (a wait for the GPU); without it a NaN or infinite
        # loss is logged as it is, and stop_on_non_finite stops at that logging step
        logging_nan_inf_filter=False,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.keep_checkpoints,
        eval_strategy="no",
        bf16=runtime.dtype == "bf16",
        fp16=runtime.dtype == "fp16",
        use_cpu=runtime.device == "cpu",
        gradient_checkpointing=False,  # already set up on the model by the backend
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",  # TensorBoard: tracking_callbacks
        run_name=run.path.name,
        dataloader_num_workers=0,
        # batches go to the GPU from pinned memory without the host waiting for the copy (a blocking copy waits
        # for every kernel queued before it, at each micro-batch)
        accelerator_config={"non_blocking": runtime.device == "cuda"},
        disable_tqdm=not bars_shown(),  # the training bar on a terminal only; the logged lines are printed either way
    )


def one_gpu(config: Any, runtime: Runtime) -> Any:
    if runtime.device == "cuda" and world_size() == 1:
        _ = config.device  # sets n_gpu to every visible GPU...
        # ...and the Trainer would then multiply the micro-batch by it (4-bit models get no DataParallel):
        # one process trains on one GPU with the configured batch; several GPUs: torchrun / accelerate launch.
        config._n_gpu = 1
    return config
