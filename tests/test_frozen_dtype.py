"""The hf backend's QLoRA model keeps its frozen weights in the compute dtype (PEFT's k-bit preparation upcasts
them to fp32, which made the residual stream fp32), and the memory plan follows the kernels that will run."""

import pytest
import torch

from medqlora import fit
from medqlora.backends.lora import frozen_weights_to
from medqlora.config import load_config


class Params4bit(torch.nn.Parameter):
    """Stands in for bitsandbytes' packed 4-bit weight (the class name is what the kit checks)."""


def upcast_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
    for param in model.parameters():  # what prepare_model_for_kbit_training leaves: frozen, fp32
        param.requires_grad_(False)
    model[2].weight = Params4bit(torch.zeros(4, 4, dtype=torch.float32), requires_grad=False)
    model.lora = torch.nn.Linear(4, 2)  # trainable, fp32
    return model


def test_frozen_weights_return_to_the_compute_dtype_and_trainable_ones_stay_fp32():
    model = upcast_model()
    frozen_weights_to(model, torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].weight.dtype == torch.bfloat16 and model[1].bias.dtype == torch.bfloat16
    assert model[2].weight.dtype == torch.float32  # the packed 4-bit weight is left as bitsandbytes made it
    assert model.lora.weight.dtype == torch.float32 and model.lora.weight.requires_grad
    hidden = model[1](model[0](torch.tensor([[1, 2]])))
    assert hidden.dtype == torch.bfloat16  # the residual stream starts in the compute dtype


@pytest.mark.parametrize("kernels,liger_runs,profile", [
    ("none", True, "hf"), ("auto", False, "hf"), ("auto", True, "hf+liger"), ("liger", True, "hf+liger")])
def test_the_memory_plan_uses_the_figures_of_the_kernels_that_will_run(monkeypatch, kernels, liger_runs, profile):
    from medqlora.backends import kernels as kernel_choice

    monkeypatch.setattr(kernel_choice, "liger_blocker", lambda *a: None if liger_runs else "not installed")
    cfg = load_config(None, [f"training.kernels={kernels}"])
    assert fit.memory_profile(cfg, "hf") == profile
    assert fit.memory_profile(cfg, "unsloth") == "unsloth"


def test_liger_plans_fewer_activations_than_plain_hf_without_checkpointing(monkeypatch):
    from transformers import LlamaConfig

    from medqlora.backends import kernels as kernel_choice
    from medqlora.random_model import SHAPES

    shape = fit.ModelShape.from_config(LlamaConfig(**SHAPES["llama-3.1-8b"]))
    cfg = load_config(None, ["model.max_seq_length=4096"])
    monkeypatch.setattr(kernel_choice, "liger_blocker", lambda *a: "not installed")
    plain = fit.estimate(shape, cfg, "hf", 2, False)
    monkeypatch.setattr(kernel_choice, "liger_blocker", lambda *a: None)
    fused = fit.estimate(shape, cfg, "hf", 2, False)
    assert fused.activations_gib < 0.7 * plain.activations_gib
    assert fused.weights_gib == plain.weights_gib
