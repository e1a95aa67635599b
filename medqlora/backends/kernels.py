"""Fused kernels on the hf backend (training.kernels): Liger Kernel's RMSNorm, SwiGLU, RoPE and fused linear
cross-entropy (the logits are never materialized), chosen for this run, applied to the loaded model, and named in the
run's manifest.json (runtime.kernels) and the --dry-run plan. Unsloth brings its own kernels.

Liger patches the model in place (liger-kernel 0.8.5: ``apply_liger_kernel_to_<model_type>(model=...)``); TRL's
SFTTrainer is then told (use_liger_kernel) so that its loss path reads the loss Liger computes instead of logits.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from ..config import KitConfig
from ..distributed import sharding
from ..errors import ConfigError
from ..messages import say
from ..secrets import redact
from .runtime import Runtime

LIGER_PACKAGE = "liger-kernel==0.8.5"  # the release read and checked with transformers 5.17, trl 1.14.2, peft 0.21.2
# The apply functions' flags: Liger's cross_entropy is off, as fused_linear_cross_entropy replaces it.
LIGER_FLAGS = {"rms_norm": True, "swiglu": True, "rope": True, "fused_linear_cross_entropy": True,
               "cross_entropy": False}
LIGER_USED = "liger: " + ", ".join(name for name, on in LIGER_FLAGS.items() if on)
# model_type -> liger_kernel.transformers' function for it: the architectures whose apply function takes exactly
# LIGER_FLAGS (RMSNorm, a SwiGLU MLP, standard RoPE), checked on PEFT-wrapped models of transformers 5.17
LIGER_ARCHITECTURES = {"llama": "apply_liger_kernel_to_llama", "mistral": "apply_liger_kernel_to_mistral",
                       "qwen2": "apply_liger_kernel_to_qwen2", "qwen3": "apply_liger_kernel_to_qwen3"}
KEEP_OR_TURN_OFF = "Set training.kernels: auto (Liger where it can run) or none"
# module -> (why it stops Liger, what to do)
LIGER_MODULES = {
    "liger_kernel": ("liger-kernel is not installed", f"pip install {LIGER_PACKAGE} (requirements-gpu.txt and the "
                     "gpu extra bring it), or set training.kernels: auto or none"),
    "triton": ("triton is not installed", "install a CUDA build of torch, which brings triton, or set "
               "training.kernels: auto or none"),
}


@dataclass(frozen=True)
class KernelChoice:
    liger: bool
    note: str  # what the manifest and the plan say: the kernels used, or why none

    def record(self) -> list[str]:
        return [self.note]


@dataclass(frozen=True)
class Blocker:
    why: str
    fix: str


def choose_kernels(cfg: KitConfig, runtime: Runtime, model_type: str | None) -> KernelChoice:
    """The kernels this run trains with. ``model_type``: the model's config.json model_type (None: not known yet,
    as in a plan whose model is not on this machine). training.kernels: liger where Liger cannot run is refused."""
    setting = cfg.training.kernels
    if setting == "none":
        return KernelChoice(False, "none: training.kernels: none")
    if runtime.backend == "unsloth":
        if setting == "liger":
            raise ConfigError("training.kernels: liger is for the hf backend, and this run trains on Unsloth, which "
                              "brings its own fused kernels. Set training.kernels: auto, or backend: hf to train "
                              "with Liger Kernel.")
        return KernelChoice(False, "unsloth: its own fused kernels")
    blocker = liger_blocker(cfg, runtime, model_type)
    if blocker is None:
        return KernelChoice(True, LIGER_USED)
    if setting == "liger":
        raise ConfigError(f"training.kernels: liger, but {blocker.why}. {blocker.fix}.")
    return KernelChoice(False, f"none: {blocker.why}")


def liger_blocker(cfg: KitConfig, runtime: Runtime, model_type: str | None) -> Blocker | None:
    """Why Liger cannot train this run on the hf backend, or None."""
    if cfg.training.method != "sft":
        return Blocker(f"the kit applies Liger Kernel to SFT only, and training.method is {cfg.training.method}",
                       KEEP_OR_TURN_OFF)
    if sharding():
        return Blocker(f"the kit does not apply Liger Kernel to sharded training ({sharding()})",
                       f"{KEEP_OR_TURN_OFF}, or launch without the sharded accelerate config")
    if not gpu_visible(runtime):
        return Blocker("Liger Kernel's Triton kernels need an NVIDIA GPU and this run trains on the CPU",
                       f"{KEEP_OR_TURN_OFF}, or train on a machine with a CUDA GPU")
    for module, (why, fix) in LIGER_MODULES.items():
        if importlib.util.find_spec(module) is None:
            return Blocker(why, fix)
    if model_type is not None and model_type not in LIGER_ARCHITECTURES:
        return Blocker(f"the model's architecture ({model_type}) is not one the kit applies Liger Kernel to "
                       f"({', '.join(LIGER_ARCHITECTURES)})", KEEP_OR_TURN_OFF)
    return None


def gpu_visible(runtime: Runtime) -> bool:
    return runtime.device == "cuda"


def check_kernels(cfg: KitConfig, runtime: Runtime) -> None:
    """training.kernels: liger refused before a run folder is made, where it cannot run whatever the model."""
    choose_kernels(cfg, runtime, None)


def planned_kernels(cfg: KitConfig, runtime: Runtime, model_type: str | None) -> str:
    """The kernels line of the --dry-run plan (a training.kernels: liger that cannot run is refused here)."""
    choice = choose_kernels(cfg, runtime, model_type)
    note = choice.note
    if choice.liger and model_type is None:
        note += (f" (when the model is {', '.join(LIGER_ARCHITECTURES)}: its config.json is read when the run "
                 "loads it)")
    if _packed_attention_applies(cfg, runtime):
        note += ("; packed rows: one variable-length attention call a layer, with torch's flash kernel, where the run "
                 "finds it (the manifest's runtime.kernels says)")
    return note


def apply_kernels(model: Any, cfg: KitConfig, runtime: Runtime) -> list[str]:
    """The chosen kernels applied to the loaded model (a PEFT model: to the causal LM inside it); what the
    manifest records."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    choice = choose_kernels(cfg, runtime, model_type if isinstance(model_type, str) else None)
    if choice.liger:
        choice = _apply_liger(model, cfg, model_type)
    if runtime.backend == "hf" and gpu_visible(runtime):  # on the CPU there is nothing to choose
        say(f"kernels: {choice.note}")
    return choice.record() + _packed_attention(model, cfg, runtime)


def _packed_attention(model: Any, cfg: KitConfig, runtime: Runtime) -> list[str]:
    """One variable-length flash attention call a layer for packed rows, with torch's own flash kernel: Unsloth's
    lean varlen path where only its torch-version gate keeps it off (backends.packed_attention), transformers'
    attention interface on the hf backend (backends.varlen_attention). training.kernels: none changes neither."""
    if not _packed_attention_applies(cfg, runtime):
        return []
    if runtime.backend == "unsloth":
        from .packed_attention import use_varlen_for_packed_rows

        used = use_varlen_for_packed_rows()
    else:
        from .varlen_attention import use_for_packed_rows

        used = use_for_packed_rows(model)
    if used:
        say(f"kernels: {used}")
    return [used] if used else []


def _packed_attention_applies(cfg: KitConfig, runtime: Runtime) -> bool:
    return (cfg.training.packing and gpu_visible(runtime) and cfg.training.kernels != "none"
            and (runtime.backend == "unsloth" or not sharding()))


def _apply_liger(model: Any, cfg: KitConfig, model_type: str) -> KernelChoice:
    try:
        library = importlib.import_module("liger_kernel.transformers")
    except Exception as err:  # triton raises many types where its CUDA toolchain does not fit
        return _liger_unusable(cfg, f"liger-kernel failed to import ({type(err).__name__}: {redact(str(err))[:300]})")
    apply = getattr(library, LIGER_ARCHITECTURES[model_type], None)
    if apply is None:
        return _liger_unusable(cfg, f"the installed liger-kernel has no {LIGER_ARCHITECTURES[model_type]}")
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    apply(model=causal_lm, **LIGER_FLAGS)
    return KernelChoice(True, LIGER_USED)


def _liger_unusable(cfg: KitConfig, why: str) -> KernelChoice:
    if cfg.training.kernels == "liger":
        raise ConfigError(f"training.kernels: liger, but {why}. pip install {LIGER_PACKAGE}, or set "
                          "training.kernels: auto or none.")
    say(f"training without Liger Kernel: {why}")
    return KernelChoice(False, f"none: {why}")


def liger_applied(runtime: Runtime) -> bool:
    """Whether the loaded model trains with Liger (TRL's SFTTrainer is then told, use_liger_kernel)."""
    return bool(runtime.kernels) and runtime.kernels[0].startswith("liger:")
