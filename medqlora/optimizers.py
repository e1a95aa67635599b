"""training.optimizer checked before anything loads: an optimizer built from a package that is not installed
is refused with what to install, and bitsandbytes' optimizers fall back to adamw_torch on the CPU."""

from __future__ import annotations

from .backends import Runtime
from .config import BITSANDBYTES_OPTIMIZERS, KitConfig
from .errors import ConfigError


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
