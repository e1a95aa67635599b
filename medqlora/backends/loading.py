"""The model loaded for a mode: the base model with a trainable LoRA adapter (training), or with a saved adapter
ready to generate (inference), on the backend of the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import KitConfig
from .hf import hf_base
from .kernels import apply_kernels
from .lora import attach_adapter, check_target_modules, hf_add_lora, trainable_adapter
from .runtime import Runtime, attention_kernel, prepare_for_generation
from .sources import resolve_model_source
from .tokenizer import check_vocabulary_fits, embedding_rows, prepare_tokenizer
from .unsloth_loading import unsloth_base


def load_for_training(cfg: KitConfig, runtime: Runtime, source: str | None = None,
                      tokenizer: Any = None) -> tuple[Any, Any, str]:
    """Base model with fresh LoRA adapters, its tokenizer, and the resolved model source. ``source`` and
    ``tokenizer``: the model source resolved and the checkpoint's tokenizer loaded before (for the data), so that
    neither is done twice (Unsloth loads its own tokenizer)."""
    source = source or resolve_model_source(cfg.model.name)
    if runtime.backend == "unsloth" and cfg.training.init_adapter:  # GPU run: to be checked on NVIDIA + Unsloth
        model, tokenizer = unsloth_base(cfg, runtime, source)
        model = trainable_adapter(model, cfg)
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    elif runtime.backend == "unsloth":
        model, tokenizer = unsloth_base(cfg, runtime, source)
        check_target_modules(cfg, model)  # as on the hf backend: a name PEFT cannot wrap is refused before it fails
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            bias="none",
            use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            random_state=cfg.training.seed,
            use_rslora=cfg.lora.use_rslora,
        )
    else:
        model, tokenizer = hf_base(cfg, runtime, source, tokenizer)
        model = hf_add_lora(model, cfg, runtime)
    check_vocabulary_fits(tokenizer, embedding_rows(model), source, "the loaded model gives")
    runtime.kernels = apply_kernels(model, cfg, runtime)  # recorded in the run's manifest.json
    runtime.attention = attention_kernel(model, runtime)  # so is this (the kernels may set it)
    return model, prepare_tokenizer(tokenizer, cfg), source


def load_for_inference(cfg: KitConfig, runtime: Runtime, adapter_dir: Path | None, source: str | None = None,
                       tokenizer: Any = None) -> tuple[Any, Any]:
    """The base model, with the adapter in ``adapter_dir`` when there is one, ready to generate; and the tokenizer
    (the adapter's own when it was saved with one). ``source`` and ``tokenizer`` as for load_for_training."""
    source = source or resolve_model_source(cfg.model.name)
    if runtime.backend == "unsloth":
        model, tokenizer = unsloth_base(cfg, runtime, source)
    else:
        model, tokenizer = hf_base(cfg, runtime, source, tokenizer)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, cfg, runtime)
        if (adapter_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    check_vocabulary_fits(tokenizer, embedding_rows(model), source, "the loaded model gives")
    prepare_for_generation(model, runtime)
    return model, prepare_tokenizer(tokenizer, cfg)
