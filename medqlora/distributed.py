"""Data-parallel training: one process per GPU (or per CPU process), started by torchrun or accelerate.

    accelerate launch --num_processes 2 medical_qlora_finetuning.py --mode full
    torchrun --nproc_per_node 2 medical_qlora_finetuning.py --mode full

Every process trains a replica on its share of each batch; the effective batch stays the configured
micro_batch_size x gradient_accumulation_steps (the accumulation is divided by the number of
processes). Only the main process writes the run folder, logs, evaluations and samples.
"""

from __future__ import annotations

import os
from typing import Any

from .config import KitConfig
from .errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) when launched with several processes."""
    if world_size() == 1:
        return
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    PartialState()


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def share(value: Any) -> Any:
    """The main process's value, in every process."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def split_batch(cfg: KitConfig) -> KitConfig:
    """Divide gradient accumulation among the processes, so the effective batch is the configured one."""
    n = world_size()
    if n == 1:
        return cfg
    t = cfg.training
    effective = t.micro_batch_size * t.gradient_accumulation_steps
    if effective % (t.micro_batch_size * n):
        raise ConfigError(
            f"The effective batch {t.micro_batch_size} x {t.gradient_accumulation_steps} = {effective} cannot be "
            f"shared by {n} processes with micro_batch_size {t.micro_batch_size}: choose micro_batch_size x "
            f"gradient_accumulation_steps divisible by {t.micro_batch_size * n} (e.g. --set "
            f"training.gradient_accumulation_steps={max(n, t.gradient_accumulation_steps // n * n)})."
        )
    accumulation = effective // (t.micro_batch_size * n)
    return cfg.model_copy(update={"training": t.model_copy(update={"gradient_accumulation_steps": accumulation})})


def plan() -> dict[str, Any]:
    """The per-process plan --dry-run prints."""
    return {"processes": world_size(), "this_process": rank(), "local_rank": local_rank(),
            "writes_run_folder": is_main()}
