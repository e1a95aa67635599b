"""Loading with Unsloth (the unsloth backend, NVIDIA GPUs only): its FastLanguageModel base model and tokenizer.
This path runs on a GPU with Unsloth installed only."""

from __future__ import annotations

from typing import Any

from ..config import KitConfig
from ..distributed import local_rank, world_size
from .finite import check_finite_weights
from .hf import check_context_length, tokenizer_load_errors
from .runtime import Runtime, torch_dtype


def unsloth_base(cfg: KitConfig, runtime: Runtime, source: str) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source,
            max_seq_length=cfg.model.max_seq_length,
            dtype=torch_dtype(runtime.dtype),
            load_in_4bit=cfg.model.load_in_4bit,
            trust_remote_code=cfg.model.trust_remote_code,
            unsloth_tiled_mlp=cfg.training.tiled_mlp,
            # GRPO with grpo.use_vllm: Unsloth's fast inference generates the completions (GPU run)
            **({"fast_inference": True, "max_lora_rank": cfg.lora.r}
               if cfg.training.method == "grpo" and cfg.grpo.use_vllm else {}),
            **({"device_map": {"": local_rank()}} if world_size() > 1 else {}),
        )
    except Exception as err:
        raise tokenizer_load_errors(source, err) from None  # Unsloth loads the tokenizer with the model
    check_context_length(model.config, cfg)
    check_finite_weights(model, cfg.model.name, source)
    return model, tokenizer
