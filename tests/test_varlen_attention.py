"""Packed rows on the hf backend: one variable-length attention call a layer (medqlora/backends/varlen_attention.py).

torch's flash kernel runs on a GPU only (bench/check_packed_attention.py --hf checks it there); here a reference
kernel (SDPA per example) takes its place, so that what the kit builds around it is checked on the CPU: the
examples read from the position ids, the model's layers calling it, every other call going to SDPA with its mask."""

import pytest
import torch
import torch.nn.functional as F

from medqlora import backends
from medqlora.backends import kernels, varlen_attention
from medqlora.config import load_config


def reference_kernel(calls: list):
    def run(q, k, v, cu, max_len, scale):
        calls.append((cu.tolist(), max_len))
        outs = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            q_, k_, v_ = (x[a:b].transpose(0, 1)[None] for x in (q, k, v))
            outs.append(F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, scale=scale,
                                                       enable_gqa=True)[0].transpose(0, 1))
        return torch.cat(outs)

    return run


@pytest.fixture
def on_reference_kernel(monkeypatch):
    calls: list = []
    monkeypatch.setattr(varlen_attention, "KERNEL", [reference_kernel(calls)])
    monkeypatch.setattr(varlen_attention, "kernel_takes", lambda query: True)
    monkeypatch.setattr(varlen_attention, "SEGMENTS", varlen_attention.Segments())
    varlen_attention.register()
    return calls


def test_the_examples_of_a_row_are_read_from_its_position_ids_once_a_forward():
    segments = varlen_attention.Segments()
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = segments.of(packed, 1, 9)
    assert cu.tolist() == [0, 3, 5, 9] and longest == 4 and cu.dtype == torch.int32
    assert segments.of(packed, 1, 9)[0] is cu  # every layer of the forward: the same tensor, read once
    cu, longest = segments.of(torch.arange(4)[None], 2, 4)  # two plain rows: one example each
    assert cu.tolist() == [0, 4, 8] and longest == 4
    cu, _ = segments.of(torch.tensor([[5, 6, 7, 8]]), 1, 4)  # a row that does not start at 0 is one example
    assert cu.tolist() == [0, 4]


def _model(tiny_model_dir, implementation):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.set_attn_implementation(implementation)
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_packed_row_trains_as_its_examples_apart_and_as_sdpa_with_its_mask(tiny_model_dir, on_reference_kernel):
    first, second = torch.arange(10, 31)[None], torch.arange(40, 53)[None]
    packed = {"input_ids": torch.cat([first, second], 1), "labels": torch.cat([first, second], 1),
              "position_ids": torch.cat([torch.arange(21), torch.arange(13)])[None],
              "use_cache": False}  # as TRL's loss sets it: without, transformers' SDPA path ignores the packing
    sdpa_loss, sdpa_grads = _loss_and_grads(_model(tiny_model_dir, "sdpa"), packed)
    varlen_loss, varlen_grads = _loss_and_grads(_model(tiny_model_dir, varlen_attention.NAME), packed)
    assert on_reference_kernel and on_reference_kernel[0] == ([0, 21, 34], 21)  # one call a layer, both examples
    assert torch.allclose(varlen_loss, sdpa_loss, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(varlen_grads, sdpa_grads, strict=True))
    model = _model(tiny_model_dir, "sdpa")  # and the examples apart: each one's logits as if alone in its row
    with torch.no_grad():
        apart = torch.cat([model(input_ids=x).logits for x in (first, second)], 1)
        packed_logits = _model(tiny_model_dir, varlen_attention.NAME)(**packed).logits
    assert torch.allclose(packed_logits, apart, atol=1e-5)


def test_padded_batches_and_generation_go_to_sdpa_with_its_mask(tiny_model_dir, on_reference_kernel):
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    sdpa, varlen = _model(tiny_model_dir, "sdpa"), _model(tiny_model_dir, varlen_attention.NAME)
    with torch.no_grad():
        assert torch.allclose(varlen(input_ids=ids, attention_mask=mask).logits,
                              sdpa(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(varlen.generate(**kwargs), sdpa.generate(**kwargs))
    assert on_reference_kernel == []  # a padding mask or a KV cache: never the varlen kernel


@pytest.mark.parametrize(("overrides", "runtime", "used"), [
    (("training.packing=true",), backends.Runtime("hf", "cuda", "bf16", "test"), True),
    ((), backends.Runtime("hf", "cuda", "bf16", "test"), False),  # rows of one example: SDPA's causal kernel
    (("training.packing=true", "training.kernels=none"), backends.Runtime("hf", "cuda", "bf16", "test"), False),
])
def test_packed_hf_runs_on_a_gpu_set_the_varlen_attention_and_record_it(tiny_model_dir, monkeypatch, overrides,
                                                                          runtime, used):
    monkeypatch.setattr(varlen_attention, "flash_kernel_present", lambda: True)
    monkeypatch.setattr(kernels, "liger_blocker", lambda *a: kernels.Blocker("not here", "-"))
    monkeypatch.setattr(kernels, "say", lambda line: None)
    model = _model(tiny_model_dir, "sdpa")
    recorded = kernels.apply_kernels(model, load_config(overrides=list(overrides)), runtime)
    assert (varlen_attention.USED in recorded) is used
    assert backends.attention_kernel(model, runtime) == (varlen_attention.NAME if used else "sdpa")


def test_architectures_with_sliding_window_layers_keep_sdpa(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(varlen_attention, "flash_kernel_present", lambda: True)
    model = _model(tiny_model_dir, "sdpa")
    model.config.sliding_window = 4096
    assert varlen_attention.use_for_packed_rows(model) is None
    assert model.config._attn_implementation == "sdpa"


def test_a_packed_row_the_flash_kernel_does_not_take_keeps_its_examples_apart_on_sdpa(tiny_model_dir):
    """fp32 on a GPU (model.dtype: fp32), attention dropout or a head size the kernel lacks: SDPA, with the
    examples' mask (here the CPU's fp32, which the kernel does not take either)."""
    varlen_attention.register()
    first, second = torch.arange(10, 31)[None], torch.arange(40, 53)[None]
    packed = {"input_ids": torch.cat([first, second], 1), "use_cache": False,
              "position_ids": torch.cat([torch.arange(21), torch.arange(13)])[None]}
    model = _model(tiny_model_dir, "sdpa")
    with torch.no_grad():
        apart = torch.cat([model(input_ids=x).logits for x in (first, second)], 1)
        model.set_attn_implementation(varlen_attention.NAME)
        assert torch.allclose(model(**packed).logits, apart, atol=1e-5)
        alone = model(input_ids=first).logits  # a row of one example: SDPA's causal kernel, as before
    assert torch.allclose(alone, apart[:, :21], atol=1e-5)


@pytest.mark.parametrize(("capability", "present"), [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_the_flash_kernel_counts_as_present_on_ampere_and_newer_gpus_only(monkeypatch, capability, present):
    """torch's flash kernel raises on a T4 or V100: packed rows there keep SDPA with its mask."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert varlen_attention.flash_kernel_present() is present
