"""Packed rows on Unsloth take its variable-length attention path where only torch's version kept it off
(medqlora/backends/packed_attention.py). The kernel itself runs on a GPU only: bench/check_packed_attention.py
--varlen compares it with Unsloth's per-example path there; here, what is changed and when."""

import sys
import types

import pytest

from medqlora import backends
from medqlora.backends import kernels, packed_attention
from medqlora.config import load_config

UNSLOTH_GPU = backends.Runtime("unsloth", "cuda", "bf16", "test")


class LeanFlashVarlen:
    calls: list[tuple] = []

    @classmethod
    def apply(cls, *args):
        cls.calls.append(args)
        return "out"


def dispatch_module(varlen=None) -> types.ModuleType:
    """Unsloth's attention dispatch as torch 2.11 leaves it: no varlen_attn, the lean path off."""
    module = types.ModuleType(packed_attention.DISPATCH_MODULE)
    module._TORCH_VARLEN_ATTN = varlen
    module._LEAN_VARLEN = False
    module._LeanFlashVarlen = LeanFlashVarlen
    module._varlen_attn_call = lambda *a, **k: None  # (its cuDNN test is not defined while the lean path is off)
    LeanFlashVarlen.calls = []
    return module


def test_the_varlen_gate_opens_onto_unsloths_lean_flash_path_with_its_causal_window():
    dispatch = dispatch_module()
    assert packed_attention.open_lean_varlen(dispatch)
    assert dispatch._LEAN_VARLEN is True
    assert dispatch._varlen_can_use_cudnn("q", "k", "v", 512, [-1, 0], True) is False
    # the call Unsloth makes under torch.compile (varlen_attn's signature) reaches the same lean kernel
    out = dispatch._TORCH_VARLEN_ATTN("q", "k", "v", "cu", "cu", 900, 900, scale=0.1, window_size=(-1, 0),
                                      enable_gqa=True)
    assert out == "out"
    assert LeanFlashVarlen.calls == [("q", "k", "v", "cu", 900, True, 0.1, -1, 0)]  # causal
    dispatch._TORCH_VARLEN_ATTN("q", "k", "v", "cu", "cu", 900, 900, scale=None, window_size=(4095, 0))
    assert LeanFlashVarlen.calls[-1] == ("q", "k", "v", "cu", 900, False, None, 4095, 0)  # a sliding window


def test_an_unsloth_that_has_a_varlen_path_or_lacks_a_name_is_left_as_it_is():
    native = object()
    dispatch = dispatch_module(varlen=native)
    assert not packed_attention.open_lean_varlen(dispatch)
    assert dispatch._TORCH_VARLEN_ATTN is native and dispatch._LEAN_VARLEN is False
    renamed = dispatch_module()
    del renamed._LeanFlashVarlen
    assert not packed_attention.open_lean_varlen(renamed)
    assert renamed._TORCH_VARLEN_ATTN is None and renamed._LEAN_VARLEN is False


@pytest.mark.parametrize("kernel", ["HAS_XFORMERS", "HAS_FLASH_ATTENTION"])
def test_an_unsloth_that_packs_rows_with_xformers_or_flashattention_is_left_as_it_is(monkeypatch, kernel):
    """Unsloth sends packed rows to xformers or FlashAttention before SDPA (where its varlen path sits): opening
    that path would change nothing, and runtime.kernels would name a kernel that never runs."""
    dispatch = dispatch_module()
    setattr(dispatch, kernel, True)
    monkeypatch.setitem(sys.modules, packed_attention.DISPATCH_MODULE, dispatch)
    monkeypatch.setattr(packed_attention, "flash_kernel_present", lambda: True)
    assert packed_attention.use_varlen_for_packed_rows() is None
    assert dispatch._TORCH_VARLEN_ATTN is None and dispatch._LEAN_VARLEN is False


@pytest.mark.parametrize(("overrides", "runtime", "opened"), [
    (("training.packing=true",), UNSLOTH_GPU, True),
    ((), UNSLOTH_GPU, False),  # no packed rows: nothing to change
    (("training.packing=true", "training.kernels=none"), UNSLOTH_GPU, False),  # Unsloth left exactly as it is
    (("training.packing=true",), backends.Runtime("hf", "cuda", "bf16", "test"), False),
    (("training.packing=true",), backends.Runtime("unsloth", "cpu", "fp32", "test"), False),
])
def test_packed_unsloth_runs_record_the_varlen_path_in_their_kernels(monkeypatch, overrides, runtime, opened):
    dispatch = dispatch_module()
    monkeypatch.setitem(sys.modules, packed_attention.DISPATCH_MODULE, dispatch)
    monkeypatch.setattr(packed_attention, "flash_kernel_present", lambda: True)
    monkeypatch.setattr(kernels, "say", lambda line: None)
    recorded = kernels.apply_kernels(object(), load_config(overrides=list(overrides)), runtime)
    assert (packed_attention.USED in recorded) is opened
    assert (dispatch._TORCH_VARLEN_ATTN is not None) is opened


def test_without_torchs_flash_kernel_nothing_is_changed_or_recorded(monkeypatch):
    dispatch = dispatch_module()
    monkeypatch.setitem(sys.modules, packed_attention.DISPATCH_MODULE, dispatch)
    monkeypatch.setattr(packed_attention, "flash_kernel_present", lambda: False)
    assert packed_attention.use_varlen_for_packed_rows() is None
    assert dispatch._TORCH_VARLEN_ATTN is None


def test_the_plan_of_a_packed_gpu_run_says_the_varlen_attention_and_a_none_run_does_not():
    plan = kernels.planned_kernels(load_config(overrides=["training.packing=true"]), UNSLOTH_GPU, "llama")
    assert plan.startswith("unsloth: its own fused kernels; packed rows: one variable-length attention call a layer")
    plan = kernels.planned_kernels(load_config(overrides=["training.packing=true", "training.kernels=none"]),
                                   UNSLOTH_GPU, "llama")
    assert "packed rows" not in plan
