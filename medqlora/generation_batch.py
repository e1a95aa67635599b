"""``generation.batch_size`` and ``eval.batch_size`` set to auto: how many prompts one batch answers or scores.

Decoding reads every weight once per step whatever the batch, so a step of 64 rows costs little more than a step
of 8: on an H200 with the Llama-3.1-8B shape in 4-bit through Unsloth, batch 64 generated 6.2x the tokens/s of
batch 8 (docs/benchmarks.md, Generation throughput). Auto takes the largest power of two up to AUTO_MAX_BATCH
whose KV cache and prompt logits fit in MEMORY_SHARE of the GPU memory left after the model loaded (within
``training.gpu_memory_gib`` where set), and never more rows than there are prompts. On the CPU it is 8."""

from __future__ import annotations

from typing import Any

from .messages import say

AUTO_CPU_BATCH = 8
AUTO_MAX_BATCH = 64  # the largest batch measured (docs/benchmarks.md)
MEMORY_SHARE = 0.8


def batch_size_for(setting: int | str, model: Any, longest_prompt: int, new_tokens: int, prompts: int,
                   cap_gib: float | None = None, what: str = "generation") -> int:
    """``setting`` itself when it is a number; for auto, the batch that fits (see the module's docstring)."""
    if setting != "auto":
        return int(setting)
    available = available_gpu_bytes(model, cap_gib)
    if available is None:
        return AUTO_CPU_BATCH
    per_row = row_bytes(model, longest_prompt, new_tokens)
    size = AUTO_MAX_BATCH
    while size > 1 and (size * per_row > MEMORY_SHARE * available or size // 2 >= max(prompts, 1)):
        size //= 2
    say(f"{what}: batches of {size} (batch_size auto: {available / 2**30:.1f} GiB of GPU memory free, about "
        f"{per_row / 2**20:.0f} MiB a row for prompts up to {longest_prompt} tokens + {new_tokens} new)")
    return size


def row_bytes(model: Any, longest_prompt: int, new_tokens: int) -> int:
    """What one more row of a batch costs at most: its KV cache for prompt and answer, and the prompt's logits in
    fp32 (some fast-inference paths keep them for every prompt position during the prefill)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    width = 4 if str(getattr(model, "dtype", "")) == "torch.float32" else 2
    kv_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * width
    return kv_per_token * (longest_prompt + new_tokens) + longest_prompt * config.vocab_size * 4


def available_gpu_bytes(model: Any, cap_gib: float | None) -> int | None:
    """GPU memory this process may still use on the model's device (None off a CUDA device): what the driver has
    free plus what torch holds cached but unused, within the cap."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    available = free + torch.cuda.memory_reserved(device) - allocated
    if cap_gib is not None:
        available = min(available, int(cap_gib * 2**30) - allocated)
    return max(available, 0)
