"""Packed rows on Unsloth: one variable-length flash attention call a layer instead of one SDPA call per example.

With training.packing, TRL flattens each micro-batch into one sequence whose position ids restart at every example.
Unsloth (2026.10) keeps the examples apart by running SDPA once per run of equal-length examples, unless torch's
``varlen_attn`` takes grouped KV heads (``enable_gqa``, torch 2.12 and later) or FlashAttention is installed: then
one variable-length call covers the whole row. On torch 2.11 the per-example path ran packed PubMedQA (examples of
300 to 900 tokens, each its own length) 28% slower than dense rows of the same tokens (docs/benchmarks.md).

Unsloth's own lean varlen path calls torch's bundled flash kernel directly (``aten._flash_attention_forward`` with
cumulative sequence lengths, which takes grouped KV heads itself); only its gate, the ``varlen_attn`` signature,
keeps it off on torch 2.11. Where that kernel is present, this opens the gate and routes every varlen call through
that path. Unsloth still decides per call whether varlen applies (dtype, head size, dropout, windows, determinism).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .varlen_attention import flash_kernel_present

DISPATCH_MODULE = "unsloth.utils.attention_dispatch"
# what this relies on in Unsloth's attention dispatch (checked present before anything is changed)
# (its cuDNN test, _varlen_can_use_cudnn, is defined only where the lean path is on: set here in any case)
DISPATCH_NAMES = ("_TORCH_VARLEN_ATTN", "_LEAN_VARLEN", "_LeanFlashVarlen", "_varlen_attn_call")
USED = "packed rows: torch's flash varlen attention, one call a layer (Unsloth's lean varlen path)"


def lean_varlen(query: Any, key: Any, value: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_q: int, max_k: int, *,
                dispatch: ModuleType, scale: float | None = None, window_size: tuple[int, int] = (-1, -1),
                enable_gqa: bool = False) -> Any:
    """``varlen_attn``'s call, as Unsloth makes it, through Unsloth's lean flash path (the kernel takes grouped KV
    heads as they are, so ``enable_gqa`` needs nothing; the query's and the keys' lengths are the same rows)."""
    left, right = window_size
    return dispatch._LeanFlashVarlen.apply(query, key, value, cu_seqlens_q, max_q, window_size == (-1, 0), scale,
                                           left, right)


def open_lean_varlen(dispatch: ModuleType) -> bool:
    """Route Unsloth's varlen calls through its lean flash path where only the ``varlen_attn`` signature keeps it
    off. False (nothing changed) where Unsloth already has a varlen path, lacks a name this relies on, or sends
    packed rows to another kernel (FlashAttention's or xformers' own varlen call): the path would never run."""
    if not all(hasattr(dispatch, name) for name in DISPATCH_NAMES) or dispatch._TORCH_VARLEN_ATTN is not None:
        return False
    if getattr(dispatch, "HAS_FLASH_ATTENTION", False) or getattr(dispatch, "HAS_XFORMERS", False):
        return False

    def varlen(*args: Any, **kwargs: Any) -> Any:
        return lean_varlen(*args, dispatch=dispatch, **kwargs)

    dispatch._TORCH_VARLEN_ATTN = varlen
    dispatch._LEAN_VARLEN = True
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False  # the lean path for every eager call
    return True


def use_varlen_for_packed_rows() -> str | None:
    """On a CUDA machine training packed rows on Unsloth: the line the manifest records when packed rows now take
    the varlen path, None where nothing changed (Unsloth had a varlen path already, or the kernel is missing)."""
    if not flash_kernel_present():
        return None
    try:
        dispatch = importlib.import_module(DISPATCH_MODULE)
    except ImportError:
        return None
    return USED if open_lean_varlen(dispatch) else None
