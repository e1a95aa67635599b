"""Packed rows on the hf backend: one variable-length flash attention call a layer, with torch's own flash kernel.

With training.packing, TRL flattens each micro-batch into one sequence whose position ids restart at every example.
transformers' SDPA path keeps the examples apart with a dense (tokens x tokens) mask, which leaves SDPA its
masked kernel over the whole row: 23% of an hf step at the 8B shape (docs/benchmarks.md). Its FlashAttention path
needs the flash-attn package. torch ships the same kind of kernel (``aten._flash_attention_forward`` with cumulative
sequence lengths; grouped KV heads taken as they are), so this registers an attention function with transformers
(``AttentionInterface``) that calls it over the row's examples, and a mask function that builds no mask where the
examples' boundaries come from the position ids.

Every other call (a padding mask, a KV cache, dropout, a kernel or dtype the flash kernel does not take) goes to
transformers' SDPA function with the mask SDPA needs, so evaluation and generation after training run as before.
"""

from __future__ import annotations

from typing import Any

NAME = "medqlora_varlen"  # no "flash" in it: transformers would look for the flash-attn package
USED = "packed rows: torch's flash varlen attention, one call a layer (attn_implementation medqlora_varlen)"
# the architectures whose attention this was read against (transformers 5.17): full causal attention, the layer
# passing position_ids through to the attention function
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def flash_kernel_present() -> bool:
    """torch's flash kernel, built in and runnable on this GPU: it refuses cards older than Ampere (T4, V100)."""
    import torch

    return (torch.cuda.is_available() and torch.backends.cuda.is_flash_attention_available()
            and hasattr(torch.ops.aten, "_flash_attention_forward") and torch.cuda.get_device_capability()[0] >= 8)


def _flash_varlen_function() -> Any:
    import torch

    class FlashVarlen(torch.autograd.Function):
        """torch's flash kernel over the examples of a flattened row: causal inside each example, nothing across."""

        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, cu_seqlens: Any, max_len: int, scale: float | None) -> Any:
            out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, True, False, scale=scale)
            ctx.save_for_backward(q, k, v, cu_seqlens, out, lse, seed, offset)
            ctx.max_len, ctx.scale = max_len, scale
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            q, k, v, cu_seqlens, out, lse, seed, offset = ctx.saved_tensors
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                grad_out.contiguous(), q, k, v, out, lse, cu_seqlens, cu_seqlens, ctx.max_len, ctx.max_len, 0.0,
                True, seed, offset, scale=ctx.scale)
            return dq, dk, dv, None, None, None

    return FlashVarlen.apply


class Segments:
    """The examples of a batch's rows (a new one wherever a position id does not follow the one before, and at
    every row's start), read once a forward: every layer gets the same position_ids tensor."""

    def __init__(self) -> None:
        self._last: tuple[Any, int, int, Any, int] | None = None

    def of(self, position_ids: Any, batch: int, length: int) -> tuple[Any, int]:
        last = self._last
        if last is not None and last[0] is position_ids and last[1:3] == (batch, length):
            return last[3], last[4]
        import torch

        flat = position_ids.expand(batch, length).reshape(-1)
        starts = torch.ones_like(flat, dtype=torch.bool)
        starts[1:] = flat[1:] != flat[:-1] + 1
        starts[::length] = True
        cu = torch.cat([torch.nonzero(starts).flatten(), flat.new_tensor([batch * length])]).to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())  # the one host read of a forward
        self._last = (position_ids, batch, length, cu, max_len)
        return cu, max_len


SEGMENTS = Segments()
KERNEL: list[Any] = []  # the flash function, made on first use (tests put a reference in its place)


def kernel_takes(query: Any) -> bool:
    """What torch's flash kernel takes: CUDA tensors in 16 bits, head sizes up to 256 in steps of 8."""
    import torch

    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] % 8 == 0
            and query.shape[-1] <= 256)


def _causal(module: Any, kwargs: dict) -> bool:
    return kwargs.get("is_causal", getattr(module, "is_causal", True)) is not False


def _takes(module: Any, query: Any, key: Any, attention_mask: Any, dropout: float, kwargs: dict) -> bool:
    return (attention_mask is None and kwargs.get("position_ids") is not None and key.shape[2] == query.shape[2]
            and not dropout and _causal(module, kwargs) and kwargs.get("sliding_window") is None
            and kernel_takes(query))


def _packed_rows_mask(module: Any, query: Any, key: Any, kwargs: dict) -> Any:
    """For a call without a mask that the flash kernel does not take (fp32, attention dropout, a head size it lacks):
    the mask transformers' SDPA path builds for packed rows, since the mask function built none. None where every
    row holds one example (SDPA's causal kernel then keeps it as it is)."""
    from transformers.masking_utils import (
        and_masks,
        causal_mask_function,
        find_packed_sequence_indices,
        packed_sequence_mask_function,
        sdpa_mask,
    )

    batch, _, length, _ = query.shape
    position_ids = kwargs.get("position_ids")
    if position_ids is None or key.shape[2] != length or not _causal(module, kwargs):
        return None
    examples = find_packed_sequence_indices(position_ids.expand(batch, length))
    if examples is None:
        return None
    return sdpa_mask(batch, length, length, mask_function=and_masks(causal_mask_function,
                                                                    packed_sequence_mask_function(examples)),
                     allow_is_causal_skip=False, device=query.device)


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
              scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function interface: query (batch, heads, tokens, head size), key and value with the
    KV heads; returns (batch, tokens, heads, head size)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _takes(module, query, key, attention_mask, dropout, kwargs):
        if attention_mask is None:
            attention_mask = _packed_rows_mask(module, query, key, kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, size = query.shape
    cu, max_len = SEGMENTS.of(kwargs["position_ids"], batch, length)

    def flat(x: Any) -> Any:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], size)

    if not KERNEL:
        KERNEL.append(_flash_varlen_function())
    out = KERNEL[0](flat(query), flat(key), flat(value), cu, max_len, scaling)
    return out.view(batch, length, heads, size), None


def mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0, *,
         attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask where the attention function reads the examples from the position ids (no padding mask, no cache);
    SDPA's mask everywhere else, for the SDPA calls."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, mask)


def architecture_takes(config: Any) -> bool:
    """Full causal attention throughout (no sliding-window layers), of an architecture read for this."""
    layer_types = getattr(config, "layer_types", None) or []
    return (getattr(config, "model_type", None) in ARCHITECTURES and getattr(config, "sliding_window", None) is None
            and not getattr(config, "use_sliding_window", False) and "sliding_attention" not in layer_types)


def use_for_packed_rows(model: Any) -> str | None:
    """The model (a PEFT model: the causal LM inside it) set to this attention; the line the manifest records, or
    None where it cannot apply (no CUDA flash kernel, another architecture)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not flash_kernel_present() or not architecture_takes(causal_lm.config):
        return None
    register()
    causal_lm.set_attn_implementation(NAME)
    return USED
