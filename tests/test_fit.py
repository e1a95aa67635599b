"""Memory preflight and auto-fit: the estimate follows measured peaks; auto-fit fills the card, keeps the batch."""

import json

import pytest
from transformers import LlamaConfig

from medqlora.cli import main
from medqlora.config import load_config
from medqlora.errors import ConfigError
from medqlora.fit import ModelShape, auto_fit, estimate
from medqlora.random_model import SHAPES

# Peak reserved GiB of QLoRA r=16 on all 7 projections with every row full (2048 tokens or more), so
# the longest batch was certainly trained: Unsloth 2026.10.9 in a plain loop on an H200
# (../shared/gpu/README.md), and through the kit (bench/speed.py, docs/benchmarks.md) on an H100.
MEASURED = [
    ("llama-3.2-1b", "unsloth", 4, 2048, "unsloth", 2.45),
    ("llama-3.1-8b", "unsloth", 2, 2048, "unsloth", 7.33),
    ("llama-3.1-8b", "unsloth", 8, 2048, "unsloth", 10.73),
    ("llama-3.1-8b", "unsloth", 16, 2048, "unsloth", 15.12),
    ("llama-3.1-8b", "unsloth", 2, 8192, "unsloth", 10.77),
    ("llama-3.1-8b", "unsloth", 8, 2048, True, 14.27),
    ("llama-3.1-8b", "unsloth", 4, 2048, False, 37.20),
    ("llama-3.1-8b", "unsloth", 8, 2048, False, 67.28),
    ("llama-3.1-8b", "unsloth", 2, 2048, "unsloth", 7.344),  # kit, random rows
    ("llama-3.1-8b", "unsloth", 4, 2048, False, 36.85),  # kit, random rows, auto-fit
    # hf, frozen weights in bf16 (2026-12-01, H200, bench/speed.py, packed PubMedQA); hf+liger: Liger Kernel runs
    ("llama-3.1-8b", "hf", 2, 4096, False, 58.67),  # training.kernels: none: SDPA over the packed rows' mask
    ("llama-3.1-8b", "hf+liger", 2, 4096, False, 40.27),  # auto: Liger + varlen attention
    # 2026-12-02, H200, bench/gpu_e2e.sh hf8b_checkpointed: 8 packed rows of 4,096 tokens, plain checkpointing
    ("llama-3.1-8b", "hf+liger", 8, 4096, True, 20.22),
    ("llama-3.1-8b", "unsloth", 1, 40960, "unsloth", 10.96),  # kit, 15 GiB cap, tiled MLP (below)
]


def shape(name):
    return ModelShape.from_config(LlamaConfig(**SHAPES[name]))


def config(*overrides):
    return load_config(None, list(overrides))


def test_parameter_counts_match_the_real_llama_31_8b():
    s = shape("llama-3.1-8b")
    assert abs(s.total_params() - 8.03e9) / 8.03e9 < 0.005
    assert s.lora_params(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == 41_943_040


@pytest.mark.parametrize("name,backend,micro,seq,checkpointing,measured", MEASURED)
def test_estimate_is_within_15_percent_of_measured_peaks(monkeypatch, name, backend, micro, seq, checkpointing,
                                                         measured):
    from medqlora.backends import kernels

    monkeypatch.setattr(kernels, "liger_blocker", lambda *a: None)  # Liger importable, as on the measuring GPU
    tiled = f"training.tiled_mlp={str(seq > 16384).lower()}"
    chosen = "training.kernels=" + ("none" if backend == "hf" else "auto")
    cfg = config(f"model.max_seq_length={seq}", tiled, chosen)
    guess = estimate(shape(name), cfg, backend.removesuffix("+liger"), micro, checkpointing, seq)
    assert abs(guess.total_gib - measured) / measured < 0.15, guess.describe()


def test_auto_fit_turns_checkpointing_off_on_a_large_card_and_keeps_the_effective_batch():
    cfg = config("model.max_seq_length=2048", "training.micro_batch_size=2", "training.gradient_accumulation_steps=4")
    choice = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=139.8)
    assert choice.gradient_checkpointing is False
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 8
    # 4 x 2048 tokens already fill the GPU (measured: 4 and 8 rows train at the same speed): less memory
    assert choice.micro_batch_size == 4
    on_a_40gib_card = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=40.0)
    assert (on_a_40gib_card.micro_batch_size, on_a_40gib_card.gradient_checkpointing) == (4, "unsloth")


def test_auto_fit_on_a_t4_chooses_offloaded_checkpointing_within_the_card():
    cfg = config("model.max_seq_length=2048", "training.micro_batch_size=2", "training.gradient_accumulation_steps=4")
    choice = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=14.7)
    assert choice.gradient_checkpointing == "unsloth"
    assert choice.estimate.total_gib * 1.1 <= 14.7
    assert (choice.micro_batch_size, choice.gradient_accumulation_steps) == (4, 2)
    no_checkpointing = estimate(shape("llama-3.1-8b"), cfg, "unsloth", 1, False)
    assert no_checkpointing.total_gib * 1.25 > 14.7  # even one row would not fit without checkpointing


def test_short_rows_on_a_small_card_take_more_rows_with_checkpointing_not_one_row_without():
    # PubMedQA on a 15 GiB card: 1 row of 982 tokens without checkpointing fits, but ran at 1,958 tokens/s
    # on an H100; 8 rows with offloaded checkpointing keep the GPU busy.
    cfg = config("model.max_seq_length=2048", "training.micro_batch_size=2", "training.gradient_accumulation_steps=4")
    choice = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=15.0, seq_len=982)
    assert (choice.micro_batch_size, choice.gradient_checkpointing) == (8, "unsloth")


def test_auto_fit_uses_the_real_longest_row_not_the_worst_case():
    cfg = config("model.max_seq_length=4096", "training.micro_batch_size=1", "training.gradient_accumulation_steps=8")
    worst = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=39.0)
    short = auto_fit(shape("llama-3.1-8b"), cfg, "unsloth", card_gib=39.0, seq_len=512)
    assert short.micro_batch_size > worst.micro_batch_size or (
        short.gradient_checkpointing is False and worst.gradient_checkpointing is not False)


def test_nothing_fits_names_what_to_change():
    cfg = config("model.max_seq_length=16384", "training.micro_batch_size=1", "training.gradient_accumulation_steps=8")
    with pytest.raises(ConfigError) as err:
        auto_fit(shape("llama-3.1-8b"), cfg, "hf", card_gib=15.0)
    text = str(err.value)
    assert "will not fit" in text and "--set model.max_seq_length=8192" in text and "Unsloth" in text


def test_tiled_mlp_lowers_the_long_context_estimate():
    cfg = config("model.max_seq_length=40960")
    plain = estimate(shape("llama-3.1-8b"), cfg, "unsloth", 1, "unsloth")
    tiled = estimate(shape("llama-3.1-8b"), config("model.max_seq_length=40960", "training.tiled_mlp=true"),
                     "unsloth", 1, "unsloth")
    assert tiled.activations_gib < 0.6 * plain.activations_gib


def write_sparse_safetensors(path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file holding tensors of these shapes (bf16) whose data is a hole: the header says what the
    weights are, and the file is as long as the header says without 16 GB of an 8B model on the disk (a sparse file;
    nothing in a --dry-run reads the values)."""
    import math

    header, offset = {}, 0
    for name, dims in shapes.items():
        size = math.prod(dims) * 2
        header[name] = {"dtype": "BF16", "shape": dims, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw)
        out.truncate(8 + len(raw) + offset)


@pytest.fixture
def model_8b_config_only(tmp_path, smol_dir):
    """An 8B-shaped config.json with a tokenizer and a weights file whose header holds every tensor the config
    implies at its shape (the data a sparse hole): the preflight reads nothing else, and the dry-run's model checks
    compare the config with the weights' names and shapes."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "llama8b"
    config = LlamaConfig(**SHAPES["llama-3.1-8b"])
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {n: list(t.shape) for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    write_sparse_safetensors(folder / "model.safetensors", shapes)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smol_dir / name).is_file():
            shutil.copy(smol_dir / name, folder / name)
    return folder


@pytest.mark.slow
def test_dry_run_prints_the_estimate_and_the_auto_fit_for_a_t4(model_8b_config_only, capsys):
    argv = ["--dry-run", "--set", f"model.name={model_8b_config_only}", "--set", "model.max_seq_length=2048",
            "--set", "training.gpu_memory_gib=15"]
    assert main(argv) == 0
    planned = json.loads(capsys.readouterr().out)["gpu_memory"]
    assert planned["card_gib"] == 15.0
    assert "checkpointing unsloth" in planned["auto_fit"]


@pytest.mark.slow
def test_dry_run_refuses_a_setting_that_cannot_fit(model_8b_config_only, capsys):
    argv = ["--dry-run", "--set", f"model.name={model_8b_config_only}", "--set", "model.max_seq_length=4096",
            "--set", "training.gpu_memory_gib=15", "--set", "training.auto_fit=false", "--set",
            "training.gradient_checkpointing=false", "--set", "training.micro_batch_size=8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Training will not fit" in err and "15.0 GiB" in err and "Try one of" in err


def test_the_preflight_names_the_checkpointing_the_backend_applies():
    shape = ModelShape.from_config(type("C", (), SHAPES["llama-3.1-8b"])())
    cfg = load_config(None, ["training.gradient_checkpointing=unsloth"])
    assert "with checkpointing plain" in estimate(shape, cfg, "hf", 2, "unsloth").describe()
    assert "with checkpointing unsloth" in estimate(shape, cfg, "unsloth", 2, "unsloth").describe()
