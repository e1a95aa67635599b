"""The hf backend's QLoRA model keeps its frozen weights in the compute dtype (PEFT's k-bit preparation upcasts
them to fp32, which made the residual stream fp32), and the memory plan follows the kernels that will run."""

import pytest
import torch

from medqlora import fit
from medqlora.config import load_config


def test_the_hf_backend_keeps_a_4bit_models_frozen_weights_in_the_compute_dtype(tiny_model_dir):
    """PEFT's k-bit preparation would upcast them to fp32 (and the residual stream with them); the LoRA weights
    are fp32 and the only trainable ones."""
    from transformers import AutoModelForCausalLM

    from medqlora.backends.lora import hf_add_lora
    from medqlora.backends.runtime import Runtime

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
    model.is_loaded_in_4bit = True  # what bitsandbytes' loading sets; the kit prepares such a model for training
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "lora.r=4"])
    peft_model = hf_add_lora(model, cfg, Runtime("hf", "cpu", "bf16", "test"))
    frozen = {n: p.dtype for n, p in peft_model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(frozen.values()) == {torch.bfloat16}, {n: d for n, d in frozen.items() if d != torch.bfloat16}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    ids = torch.tensor([[1, 2, 3]])
    assert peft_model.get_input_embeddings()(ids).dtype == torch.bfloat16  # the residual stream starts in bf16


@pytest.mark.parametrize("kernels,liger_runs,profile", [
    ("none", True, "hf"), ("auto", False, "hf"), ("auto", True, "hf+liger"), ("liger", True, "hf+liger")])
def test_the_memory_plan_uses_the_figures_of_the_kernels_that_will_run(monkeypatch, kernels, liger_runs, profile):
    from medqlora.backends import kernels as kernel_choice

    monkeypatch.setattr(kernel_choice, "liger_blocker", lambda *a: None if liger_runs else "not installed")
    cfg = load_config(None, [f"training.kernels={kernels}"])
    assert fit.memory_profile(cfg, "hf", "llama") == profile
    assert fit.memory_profile(cfg, "unsloth", "llama") == "unsloth"


def test_the_memory_plan_assumes_liger_only_on_architectures_it_patches(monkeypatch):
    from medqlora.backends import kernels as kernel_choice

    monkeypatch.setattr(kernel_choice.importlib.util, "find_spec", lambda name: object())  # liger, triton installed
    cfg = load_config(None, [])
    assert fit.memory_profile(cfg, "hf", "llama") == "hf+liger"
    assert fit.memory_profile(cfg, "hf", "gemma3") == "hf"
    assert fit.memory_profile(cfg, "hf", None) == "hf+liger"  # architecture unknown (a plan before conversion)


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
