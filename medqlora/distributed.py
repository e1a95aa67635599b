"""Several processes (one per GPU, on one or several machines), started by torchrun or accelerate.

    accelerate launch --num_processes 2 medical_qlora_finetuning.py --mode full
    torchrun --nproc_per_node 2 medical_qlora_finetuning.py --mode full
    accelerate launch --config_file config/accelerate/fsdp_qlora.yaml medical_qlora_finetuning.py --mode full

Data parallel (the first two): every process trains a replica on its share of each batch. Sharded
(an accelerate config with FSDP or DeepSpeed ZeRO-3): the model's weights are divided among the
processes instead of copied. Either way the effective batch stays the configured micro_batch_size x
gradient_accumulation_steps (the accumulation is divided by the number of processes), evaluation
and sample answers are shared among the processes and gathered, and only the main process writes
the run folder and logs.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import signals
from .config import KitConfig
from .errors import ConfigError, MedQLoRAError
from .secrets import printable


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def check_launch() -> None:
    """The environment boundary of a launch: RANK, WORLD_SIZE and the like must be whole numbers that agree, and
    several processes need the rendezvous a launcher (torchrun, accelerate launch) sets up (MASTER_ADDR and
    MASTER_PORT). Stray values, from a shell or a job script, are refused in every process, each saying so: a
    process that is not rank 0 would otherwise stop without a word."""
    values = {}
    for name in LAUNCH_VARIABLES:
        text = os.environ.get(name)
        if text is None:
            continue
        if not text.strip().isdigit():
            raise MedQLoRAError(f"The environment variable {name}={printable(text, 40)} is not a whole number of 0 "
                                "or more. "
                                f"Unset it (it is set by torchrun or accelerate launch), or launch with one of them.")
        values[name] = int(text)
    world = values.get("WORLD_SIZE", 1)
    local_world = values.get("LOCAL_WORLD_SIZE", world)
    if world < 1 or values.get("RANK", 0) >= world or values.get("LOCAL_RANK", 0) >= local_world:
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        raise MedQLoRAError(f"The environment says {shown}: a rank must be below the number of processes. Unset "
                            f"{', '.join(values)}, or launch with torchrun or accelerate launch, which set them.")
    # even one process: with RANK or LOCAL_RANK set, transformers starts a process group, which needs the rendezvous
    if values and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        raise MedQLoRAError(f"The environment says {shown}, but no launcher started this process (MASTER_ADDR and "
                            f"MASTER_PORT are not set). Unset {', '.join(values)} to run one process, or launch with "
                            "torchrun --nproc_per_node N (or accelerate launch).")
    port = os.environ.get("MASTER_PORT", "").strip()
    if world > 1 and not (port.isdigit() and 0 < int(port) < 65536):
        raise MedQLoRAError(f"The environment variable MASTER_PORT={printable(port, 40)} is not a port (1 to 65535): "
                            "the processes meet there. Unset it and let torchrun or accelerate launch choose one, or "
                            "give a free port (torchrun --master_port 29500).")


def _env_int(name: str, default: int) -> int:
    """A launch variable as a number (one that is not a number is refused by check_launch, at the start)."""
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() else default


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def local_world_size() -> int:
    return _env_int("LOCAL_WORLD_SIZE", world_size())


def sharding() -> str | None:
    """"fsdp" or "deepspeed" when accelerate launched this process with such a config; None: replicas."""
    for name, env in (("fsdp", "ACCELERATE_USE_FSDP"), ("deepspeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(env, "false").lower() in ("1", "true", "yes"):
            return name
    return None


def start() -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) when launched with several processes."""
    if world_size() == 1:
        return
    import torch
    from accelerate import PartialState

    if sharding() and not torch.cuda.is_available():
        raise ConfigError(
            f"This run was launched with a sharded accelerate config ({sharding()}), which needs NVIDIA GPUs, and "
            "none is visible. On the CPU, launch without --config_file (data parallel), or with one process."
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    with signals.stop_at_once(), _rendezvous_deadline():
        PartialState()


RENDEZVOUS_LIMIT_S = 600


@contextmanager
def _rendezvous_deadline() -> Iterator[None]:
    """Joining the group waits for every process WORLD_SIZE names; a process started alone by a job script that
    set WORLD_SIZE would wait for ever. After RENDEZVOUS_LIMIT_S the process says why and exits (2)."""
    limit_s = RENDEZVOUS_LIMIT_S
    where = printable(f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}", 80)

    def give_up() -> None:  # the command line's error line, printed here: this timer thread exits past its handlers
        print(f"medqlora: error: WORLD_SIZE={world_size()} processes were to meet at {where}, and not all of them "
              f"came within {limit_s:.0f} s.{_unresolvable_master()} Start them all with torchrun --nproc_per_node N "
              "(or accelerate launch), or unset WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR to run one process.",
              file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(limit_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _unresolvable_master() -> str:
    """' MASTER_ADDR=... names no address (...).' when the name does not resolve, else ''. Checked when the wait
    ends, not before: a cluster's DNS may name the main node only once its container is up."""
    import socket

    address = os.environ.get("MASTER_ADDR", "")
    try:
        socket.getaddrinfo(address, None)
    except (OSError, UnicodeError) as err:
        return (f" MASTER_ADDR={printable(address, 80)} names no address this machine can find "
                f"({printable(getattr(err, 'strerror', None) or err, 80)}): check the name.")
    return ""


def stop() -> None:
    """Leave the process group (a process that exits inside one aborts instead of returning its exit code)."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def gather(part: list[Any]) -> list[list[Any]]:
    """Every process's list, in rank order, in every process."""
    if world_size() == 1:
        return [part]
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, part)
    return parts


def shared_map(work: Any, items: list[Any]) -> list[Any]:
    """work(items) -> one result per item, with the items dealt out among the processes (rank r takes
    items r, r+n, ...) and the results gathered back into the items' order, in every process."""
    n = world_size()
    if n == 1:
        return work(items)
    mine = items[rank()::n]
    parts = gather(work(mine) if mine else [])
    results: list[Any] = [None] * len(items)
    for r, part in enumerate(parts):
        results[r::n] = part
    return results


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


def grpo_steps_per_epoch(cfg: KitConfig, prompts: int) -> int:
    """GRPO's optimizer steps in one epoch over ``prompts``, as TRL's sampler deals them (``cfg`` in the config's
    terms: all processes together). Its micro-batches count completions, num_generations per prompt, so a step of
    micro_batch x accumulation completions takes that / num_generations prompts; one generation takes the prompts
    of steps_per_generation steps, those that do not fill a last generation are left out, and each generation's
    completions are trained num_iterations times."""
    g = cfg.grpo
    return prompts // max(1, grpo_prompts_per_generation(cfg)) * g.steps_per_generation * g.num_iterations


def grpo_prompts_per_generation(cfg: KitConfig) -> int:
    """The prompts one GRPO generation takes (``cfg`` in the config's terms): the completions of
    steps_per_generation optimizer steps, num_generations per prompt."""
    t, g = cfg.training, cfg.grpo
    return t.micro_batch_size * t.gradient_accumulation_steps * g.steps_per_generation // g.num_generations


def micro_batches_per_epoch(cfg: KitConfig, rows: int, processes: int) -> int:
    """Micro-batches each process trains per epoch (GRPO: of completions, see grpo_steps_per_epoch)."""
    if cfg.training.method == "grpo":
        return grpo_steps_per_epoch(cfg, rows) * split_batch(cfg).training.gradient_accumulation_steps
    return micro_batches_per_process(rows, cfg.training.micro_batch_size, processes)


def micro_batches_per_process(rows: int, micro_batch: int, processes: int) -> int:
    """Micro-batches each process trains per epoch: the epoch's micro-batches dealt out in turn, rounded up."""
    return math.ceil(math.ceil(rows / micro_batch) / processes)


def repeated_per_epoch(rows: int, micro_batch: int, processes: int | None = None) -> int:
    """Rows each epoch trains twice only because several processes share it. Every process must take as
    many full micro-batches as the others (accelerate's even batches), so the epoch's last micro-batches are
    filled with rows from its start; one process trains its short last micro-batch as it is."""
    n = processes or world_size()
    if n == 1 or rows <= 0:
        return 0
    return n * micro_batch * micro_batches_per_process(rows, micro_batch, n) - rows


def epoch_tail(rows: int, unit: str, micro_batch: int, processes: int | None = None) -> str | None:
    """One line when the processes train more than one process would (see repeated_per_epoch), else None."""
    n = processes or world_size()
    repeated = repeated_per_epoch(rows, micro_batch, n)
    if not repeated:
        return None
    return (f"{rows} {unit} do not fill whole micro-batches of {micro_batch} on {n} processes: each epoch "
            f"{repeated} {unit} from its start are trained twice to fill them (one process would not). For "
            f"exactly the batches of one GPU, use a multiple of {micro_batch * n} {unit}.")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def process_plan(cfg: KitConfig, train_examples: int | None, eval_items: dict[str, int | None],
                 evaluated: bool = True, answered: bool = True) -> dict[str, Any]:
    """What each process will do, for --dry-run (run it under the same launcher and config as the real run);
    ``evaluated``: whether the run writes an evaluation report, ``answered``: whether it answers the sample
    queries."""
    n, per_machine = world_size(), local_world_size()
    split = split_batch(cfg).training
    kind = {"fsdp": "sharded (FSDP): each process holds 1/{n} of the weights",
            "deepspeed": "sharded (DeepSpeed ZeRO-3): each process holds 1/{n} of the weights"}.get(
        sharding() or "", "data parallel: each process holds a whole replica" if n > 1 else "one process")
    ranks = []
    for r in range(n):
        ranks.append({
            "rank": r,
            "machine": r // per_machine,
            "gpu": r % per_machine if _cuda() else "none (CPU)",
            "micro_batch x accumulation": f"{split.micro_batch_size} x {split.gradient_accumulation_steps}",
            "micro_batches_per_epoch": micro_batches_per_epoch(cfg, train_examples, n)
            if train_examples else "unknown until the data is known",
            "evaluation_items": {name: len(range(r, count, n)) if count else f"1/{n} of all"
                                 for name, count in eval_items.items()},
            "writes": ", ".join(["run folder, run.log, metrics"] + ["evaluation report"] * evaluated
                                + ["sample answers"] * answered) if r == 0 else "nothing",
        })
    planned = {"processes": n, "machines": -(-n // per_machine), "layout": kind.format(n=n), "ranks": ranks}
    if n > 1 and train_examples and not cfg.training.packing:  # packed rows are counted when training starts
        planned["epoch_tail"] = epoch_tail(train_examples, "examples", split.micro_batch_size, n) or "none"
    return planned
