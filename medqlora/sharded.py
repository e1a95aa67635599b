"""Sharded training (FSDP, DeepSpeed ZeRO-3): the LoRA weights gathered whole from the processes' shards,
and put back into them.

    accelerate launch --config_file config/accelerate/fsdp_qlora.yaml medical_qlora_finetuning.py --mode full

Each process holds a shard of every weight, so PEFT's own save and load see only a part of the adapter:
the adapter is saved from the gathered weights (``write_gathered_adapter``), and every FSDP checkpoint also
carries them (``FSDP_LORA_FILE``), since accelerate's sharded checkpoint does not restore a PEFT adapter.
Every process must call the gather and scatter functions; only the main process receives the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distributed import is_main, sharding
from .errors import MedQLoRAError

FSDP_LORA_FILE = "lora_weights_gathered.safetensors"


def load_fsdp_lora(checkpoint: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = checkpoint / FSDP_LORA_FILE
    if not path.is_file():
        raise MedQLoRAError(
            f"{checkpoint} has no {FSDP_LORA_FILE}: it was written by an earlier version of the kit, whose "
            "sharded checkpoints cannot restore the adapter. Start the run again (without --resume).")
    return load_file(str(path))

def save_fsdp_lora(model: Any, checkpoint: Path) -> None:
    """The gathered LoRA weights into a checkpoint folder, beside what the Trainer writes there."""
    weights = gather_fsdp_trainable(model)
    if weights is None:
        return
    from safetensors.torch import save_file

    checkpoint.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(checkpoint / FSDP_LORA_FILE))


def gathered_weights(trainer: Any) -> dict[str, Any] | None:
    """The trainable (LoRA) weights of a sharded model, whole, on the main process; None elsewhere and where
    the model is not sharded. Every process must call this."""
    kind = sharding()
    if kind == "fsdp":
        return gather_fsdp_trainable(trainer.model)
    if kind == "deepspeed":  # needs stage3_gather_16bit_weights_on_model_save in the DeepSpeed config
        return trainer.model_wrapped._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    return None


def gather_fsdp_trainable(model: Any) -> dict[str, Any] | None:
    """Gather, one FSDP unit at a time, the units that hold trainable weights (the LoRA layers have their
    own units), onto the main process's CPU: the frozen base is never gathered. Keys are the parameter
    names the model had before FSDP wrapped it."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    to_cpu = torch.cuda.is_available()  # (on the CPU the weights are there already; FSDP refuses to offload)
    weights: dict[str, Any] = {}
    for unit, named in _trainable_fsdp_units(model):
        with FSDP.summon_full_params(unit, recurse=False, writeback=False, rank0_only=True, offload_to_cpu=to_cpu):
            if is_main():
                weights.update({name: value.detach().to("cpu", copy=True) for name, value in named()})
    return weights if is_main() else None


def _trainable_fsdp_units(model: Any) -> Any:
    """(unit, named) for each FSDP unit that holds trainable weights; named() lists the unit's own
    parameters, while summoned, under the names they had before FSDP wrapped the model."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for name, unit in model.named_modules():
        if not isinstance(unit, FSDP) or not any(p.requires_grad for p in unit.module.parameters(recurse=False)):
            continue
        prefix = name.replace("._fsdp_wrapped_module", "").replace("_fsdp_wrapped_module.", "")

        def named(unit: Any = unit, prefix: str = prefix) -> list[tuple[str, Any]]:
            return [(f"{prefix}.{key}" if prefix else key, value) for key, value in unit.module.named_parameters()
                    if "_fsdp_wrapped_module" not in key and "_flat_param" not in key]

        yield unit, named


def scatter_fsdp_trainable(model: Any, weights: dict[str, Any]) -> None:
    """The inverse of gather_fsdp_trainable: every process copies the whole weights into its FSDP units,
    one unit at a time, and keeps its own shard. Every process must call this."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    restored = 0
    for unit, named in _trainable_fsdp_units(model):
        with FSDP.summon_full_params(unit, recurse=False, writeback=True), torch.no_grad():
            for name, value in named():
                if name in weights and weights[name].shape == value.shape:
                    value.copy_(weights[name].to(value.device, value.dtype))
                    restored += 1
    expected = len(weights)
    if restored != expected:
        raise MedQLoRAError(f"The checkpoint's LoRA weights do not fit this model: {restored} of {expected} "
                            "restored. Resume with the model and LoRA settings the run was started with.")


def write_gathered_adapter(model: Any, weights: dict[str, Any], folder: Path) -> None:
    """The adapter files PEFT's save_pretrained writes, from gathered weights (PEFT's own selection of the
    adapter's keys walks the model's modules, whose names FSDP has changed, and finds none)."""
    import copy

    from safetensors.torch import save_file

    name = model.active_adapter
    tensors = {key.replace(f".{name}.", "."): value.contiguous() for key, value in weights.items()}
    if not tensors:
        raise MedQLoRAError("The sharded model returned no trainable weights to save: the adapter would be empty.")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.copy(model.peft_config[name])
    config.inference_mode = True
    config.save_pretrained(str(folder))
