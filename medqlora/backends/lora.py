"""LoRA adapters on a loaded base model: fresh trainable ones (hf backend), an earlier run's adapter continued
(training.init_adapter), or a saved adapter attached to generate; an adapter of non-finite weights refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import adapters
from ..adapter_loading import load_checked, short_error
from ..config import KitConfig
from ..errors import ConfigError, ModelError
from ..secrets import printable
from .runtime import Runtime, prepare_for_generation


def trainable_adapter(model: Any, cfg: KitConfig) -> Any:
    """training.init_adapter: the earlier run's adapter loaded trainable (its own LoRA settings, not lora:), in
    place of a fresh one. The folder was checked at the adapter boundary (adapter_runs.with_init_adapter)."""
    folder = str(cfg.training.init_adapter)

    def failed(err: Exception) -> ModelError:
        return ModelError(f"Cannot load training.init_adapter {printable(folder)} onto {cfg.model.name}: "
                          f"{short_error(err)}")

    model = load_checked(model, Path(folder), failed, is_trainable=True)
    refuse_non_finite_adapter(model, Path(folder))
    return model


def attach_adapter(model: Any, adapter_dir: Path, cfg: KitConfig, runtime: Runtime) -> Any:
    """A saved LoRA adapter on top of a loaded base model, ready to generate."""
    def failed(err: Exception) -> ModelError:
        return ModelError(
            f"Cannot load the adapter in {printable(adapter_dir)} onto {printable(cfg.model.name)}: {short_error(err)}. "
            "Was it trained on a different base model? Check model.name in the run's config.yaml.")

    model = load_checked(model, Path(adapter_dir), failed)
    refuse_non_finite_adapter(model, adapter_dir)
    prepare_for_generation(model, runtime)
    return model


def refuse_non_finite_adapter(model: Any, adapter_dir: Path) -> None:
    """An adapter with NaN or infinite weights scores every answer NaN (and the tie rule then picks the first
    choice): it is refused rather than evaluated, answered with or exported."""
    import torch

    bad = [name for name, p in model.named_parameters() if "lora_" in name and not bool(torch.isfinite(p).all())]
    if bad:
        raise adapters.non_finite(adapter_dir, bad)
    change, where = largest_weight_change(model)
    if change > LARGEST_CHANGE:
        raise adapters.too_large_change(Path(adapter_dir), change, where)


LARGEST_CHANGE = adapters.LARGEST_CHANGE


def largest_weight_change(model: Any) -> tuple[float, str]:
    """An upper bound of the largest change the loaded LoRA adapters make to one base weight, |scaling * B @ A|
    (the sum over the rank of the largest |B| and |A| of each rank's column and row), and the module that makes it;
    computed in float64 from the small LoRA matrices, not their product."""
    largest, where = 0.0, ""
    for name, module in model.named_modules():
        pairs = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not all(hasattr(pair, "keys") for pair in pairs):
            continue
        for key in pairs[0].keys():
            if key not in pairs[1] or not hasattr(pairs[0][key], "weight"):
                continue
            a, b = pairs[0][key].weight.detach().double().abs(), pairs[1][key].weight.detach().double().abs()
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                continue
            change = float((b.amax(0) * a.amax(1)).sum()) * abs(float(module.scaling.get(key, 1.0)))
            if change > largest or change != change:
                largest, where = change, name
    return largest, where


def hf_checkpointing(cfg: KitConfig, runtime: Runtime) -> bool:
    """Whether the hf backend checkpoints: Unsloth's offloaded checkpointing does not exist there, and plain
    checkpointing is its stand-in on a GPU. On the CPU memory is plentiful and recomputation only costs time, so
    'unsloth' leaves it off (true turns it on)."""
    return bool(cfg.training.gradient_checkpointing) and (
        runtime.device == "cuda" or cfg.training.gradient_checkpointing is True
    )


def checkpointing_plan(cfg: KitConfig, runtime: Runtime) -> str | bool:
    """The gradient checkpointing a run does on this runtime, for the plan (the config's value where it applies)."""
    value = cfg.training.gradient_checkpointing
    if runtime.backend == "unsloth" or value is False or value is True:
        return value
    if hf_checkpointing(cfg, runtime):
        return "true (plain: gradient_checkpointing unsloth is Unsloth's offloaded kind, and this backend is hf)"
    return "off: on the CPU gradient_checkpointing unsloth leaves it off (memory is plentiful; true turns it on)"


def _takes_lora(module: Any) -> bool:
    """A layer PEFT's LoRA wraps: a linear layer (a 4-bit Linear4bit is one), GPT-2's Conv1D, or an embedding."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, torch.nn.Embedding, Conv1D))


def _matches(target: str, name: str) -> bool:
    """PEFT's rule for a target_modules name: the module's full name, or its last dotted parts."""
    return name == target or name.endswith(f".{target}")


def _linear_layer_names(modules: dict[str, Any], output: Any) -> list[str]:
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in modules.items()
                   if _takes_lora(m) and m is not output and not isinstance(m, torch.nn.Embedding)})


def check_target_modules(cfg: KitConfig, model: Any) -> None:
    """Every name of lora.target_modules matches modules of ``model`` (the loaded one, or at --dry-run the one its
    config.json builds on the meta device) that LoRA can wrap: linear layers (or an embedding), never a container
    of them (self_attn, mlp) nor the output layer lm_head, whose LoRA the training loss cannot train."""
    modules = dict(model.named_modules())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = _linear_layer_names(modules, output)
    missing = [t for t in cfg.lora.target_modules if not any(_matches(t, n) for n in modules)]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing} do not exist in {cfg.model.name}. "
                          f"Its linear layers include: {linear}.")
    for target in cfg.lora.target_modules:
        found = [m for n, m in modules.items() if _matches(target, n)]
        where = f"lora.target_modules: {printable(repr(target))} in {printable(cfg.model.name)}"
        if output is not None and any(m is output for m in found):
            raise ConfigError(f"{where} is the output layer (lm_head), which the kit does not put LoRA on: TRL's "
                              "training loss reads its weight directly and refuses an adapter there. Remove it "
                              f"(embed_tokens, the input embedding, takes LoRA); its linear layers: {linear}.")
        other = sorted({type(m).__name__ for m in found if not _takes_lora(m)})
        if other:
            raise ConfigError(f"{where} names {', '.join(other)} modules, not linear layers: LoRA wraps linear "
                              "layers only, and a block such as self_attn or mlp holds them. Name the linear layers "
                              f"themselves: {linear}.")


def check_planned_target_modules(cfg: KitConfig, source: str | None) -> None:
    """--dry-run: lora.target_modules checked as a run checks them, against the model a local checkpoint's
    config.json builds on the meta device (a hub model, a GGUF file or remote code: checked when the run loads it)."""
    folder = Path(source).expanduser() if source else None
    if folder is None or cfg.model.trust_remote_code or not (folder / "config.json").is_file():
        return
    from .checkpoints import meta_model

    check_target_modules(cfg, meta_model(folder)[1])


def freeze_base(model: Any, checkpointing: bool) -> None:
    """PEFT's k-bit preparation (prepare_model_for_kbit_training) without its fp32 upcast: every base weight
    frozen, and gradient checkpointing on where asked. The upcast would turn the embeddings, norms and output layer
    into fp32 copies, and an fp32 embedding carries the whole residual stream in fp32 (every 4-bit layer returns its
    input's dtype): activations of twice the size, the elementwise work in fp32, and an fp32 copy of the
    embeddings at load. They are frozen, so nothing is gained; Unsloth keeps them in the compute dtype too. The LoRA
    weights PEFT adds afterwards are fp32. Sharded runs need it as well: FSDP cannot flatten one layer of two
    dtypes."""
    for param in model.parameters():
        param.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()


def hf_add_lora(model: Any, cfg: KitConfig, runtime: Runtime) -> Any:
    from peft import LoraConfig, get_peft_model

    freeze_base(model, hf_checkpointing(cfg, runtime))
    check_target_modules(cfg, model)
    if cfg.training.init_adapter:
        return trainable_adapter(model, cfg)
    from transformers import set_seed

    set_seed(cfg.training.seed)  # the LoRA initialisation must not depend on what ran before in the process
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_rslora=cfg.lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
