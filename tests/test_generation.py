"""Batched generation: length-ordered batches and the static cache give the same greedy answers, in the caller's
order, as answering each prompt alone; sampling is seeded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medqlora import backends
from medqlora.config import load_config
from medqlora.data import render_prompt
from medqlora.generate import (
    ARRIVAL_ORDER,
    AUTO_STATIC_MIN_STEPS,
    Decoding,
    _batches,
    _generate,
    decoding_for,
    static_cache_on,
)

from .conftest import tiny_overrides

QUESTIONS = [
    "What is anaemia?",
    "A 54-year-old man with type 2 diabetes, hypertension and stage 3 chronic kidney disease presents with "
    "ankle swelling, fatigue and a potassium of 5.9 mmol/L after starting a new medicine. " * 6
    + "Which drug is the most likely cause, and what should be done first?",
    "Define sepsis.",
    "Which vitamin deficiency causes scurvy, and which foods prevent it in a long sea voyage?",
    "Is aspirin an anticoagulant or an antiplatelet drug? Explain the mechanism briefly.",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path_factory.mktemp("gen")))
    model, tokenizer = backends.load_for_inference(cfg, backends.detect(cfg), None)
    prompts = [render_prompt(tokenizer, cfg.data.system_prompt, q) for q in QUESTIONS]
    return cfg, model, tokenizer, prompts


def test_length_ordered_batches_answer_greedily_as_each_prompt_alone_in_the_callers_order(loaded):
    cfg, model, tokenizer, prompts = loaded
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    assert _batches(lengths, 2, True) == [[1, 3], [4, 0], [2]]  # longest first: other neighbours
    alone = [_generate(cfg, model, tokenizer, [p], NEW_TOKENS, 1, ARRIVAL_ORDER)[0] for p in prompts]
    assert len({text for text, _ in alone}) > 1  # different answers, so a mixed-up order would show

    assert decoding_for(cfg, model, 5, NEW_TOKENS, 2) == Decoding(by_length=True, static_cache=False)  # auto, CPU
    assert _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 2) == alone
    assert _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 2, ARRIVAL_ORDER) == alone
    static = Decoding(by_length=True, static_cache=True)
    assert _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 2, static) == alone  # the last batch is filled
    assert _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 8, static) == alone


def test_with_the_static_cache_every_batch_has_one_prompt_length_and_one_size(loaded, monkeypatch):
    """A batch of another shape would compile the decoding step again: the batches of one call share both."""
    cfg, model, tokenizer, prompts = loaded
    shapes = []
    generate = model.generate

    def recording(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording)
    _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 2, Decoding(by_length=True, static_cache=True))
    longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    assert len(shapes) == 3 and len(set(shapes)) == 1
    assert shapes[0][0] == 2 and longest <= shapes[0][1] < longest + 64 and shapes[0][1] % 64 == 0
    shapes.clear()
    _generate(cfg, model, tokenizer, prompts, NEW_TOKENS, 2, Decoding(by_length=True, static_cache=False))
    assert len({length for _, length in shapes}) == 3  # a growing cache: each batch as long as its longest prompt


def test_sampling_is_seeded_and_leaves_the_process_random_state_alone(loaded):
    import torch

    cfg, model, tokenizer, prompts = loaded
    hot = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"temperature": 1.5, "top_p": 1.0})})
    before = torch.random.get_rng_state()
    first = _generate(hot, model, tokenizer, prompts, NEW_TOKENS, 2)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(3)  # whatever ran in between, the same answers
    assert _generate(hot, model, tokenizer, prompts, NEW_TOKENS, 2) == first
    reseeded = hot.model_copy(update={"training": hot.training.model_copy(update={"seed": 7})})
    assert _generate(reseeded, model, tokenizer, prompts, NEW_TOKENS, 2) != first


def _model(device: str, quantizer=None, backend: str = "hf"):
    import torch

    model = SimpleNamespace(device=torch.device(device), hf_quantizer=quantizer)
    setattr(model, backends.BACKEND_MARK, backend)
    return model


def test_static_cache_auto_is_on_only_where_transformers_compiles_the_decoding_step():
    compilable, bitsandbytes = SimpleNamespace(is_compileable=True), SimpleNamespace(is_compileable=False)
    assert static_cache_on("auto", _model("cuda")) is True
    assert static_cache_on("auto", _model("cuda", compilable)) is True
    assert static_cache_on("auto", _model("cuda", bitsandbytes)) is False
    assert static_cache_on("auto", _model("cpu")) is False
    assert static_cache_on(True, _model("cpu")) is True
    assert static_cache_on(False, _model("cuda")) is False
    assert static_cache_on("auto", _model("cuda", backend="unsloth")) is False
    assert static_cache_on(True, _model("cuda", backend="unsloth")) is False


def test_auto_compiles_only_work_long_enough_to_repay_the_compilation():
    cfg, cuda = load_config(None, ["generation.static_cache=auto"]), _model("cuda")
    long_enough = AUTO_STATIC_MIN_STEPS // 256
    assert decoding_for(cfg, cuda, 8 * long_enough, 256, 8).static_cache is True
    assert decoding_for(cfg, cuda, 8 * long_enough - 8, 256, 8).static_cache is False
    assert decoding_for(cfg, cuda, 6, 160, 8).static_cache is False  # the sample queries: one batch
    forced = load_config(None, ["generation.static_cache=true"])
    assert decoding_for(forced, cuda, 6, 160, 8).static_cache is True


def test_static_cache_setting_takes_auto_or_a_boolean():
    assert load_config(None, []).generation.static_cache == "auto"  # x4 on an H200 where it applies
    assert load_config(None, ["generation.static_cache=false"]).generation.static_cache is False
    with pytest.raises(Exception, match="generation.static_cache"):
        load_config(None, ["generation.static_cache=sometimes"])


def _llama_8b_like():
    from types import SimpleNamespace

    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32,
                         vocab_size=128256)
    return SimpleNamespace(config=config, dtype="torch.bfloat16")


def test_a_batch_row_costs_its_kv_cache_and_its_prompts_logits():
    from medqlora.generation_batch import row_bytes

    # Llama-3.1-8B: 2 x 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB of cache per token
    assert row_bytes(_llama_8b_like(), 384, 128) == 128 * 2**10 * 512 + 384 * 128256 * 4


@pytest.mark.parametrize(("free_gib", "prompts", "expected"), [
    (100.0, 500, 64),   # an H200 after loading: the largest batch measured
    (100.0, 20, 32),    # never more rows than the prompts need
    (100.0, 1, 1),
    (9.0, 500, 16),     # a T4 after a 4-bit 8B model: 16 rows of ~0.25 GiB within 80% of 9 GiB (32 do not fit)
    (0.1, 500, 1),
])
def test_auto_batch_size_takes_the_largest_power_of_two_that_fits(monkeypatch, free_gib, prompts, expected):
    from medqlora import generation_batch

    monkeypatch.setattr(generation_batch, "available_gpu_bytes", lambda model, cap: int(free_gib * 2**30))
    assert generation_batch.batch_size_for("auto", _llama_8b_like(), 384, 128, prompts) == expected
    assert generation_batch.batch_size_for(12, _llama_8b_like(), 384, 128, prompts) == 12  # a number is kept


def test_auto_batch_size_is_eight_on_the_cpu(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from medqlora.generation_batch import batch_size_for

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert batch_size_for("auto", model, 100, 10, 500) == 8
