"""The hf backend trains a tiny random Llama: loss falls, and the saved adapter reloads exactly."""

import json

import pytest
import torch

from medqlora import backends, data
from medqlora.config import load_config
from medqlora.runs import RunDir
from medqlora.train import planned_steps, sft_config, train

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = load_config(None, tiny_overrides(tiny_model_dir, out, **{
        "training.max_steps": "12", "training.learning_rate": "0.01", "training.warmup_ratio": "0",
        "data.datasets.0.max_samples": "8", "output.run_name": "tiny"}))
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer, _ = backends.load_for_training(cfg, runtime)
    prepared = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.training.seed)
    run = RunDir.create(cfg)
    result = train(cfg, runtime, model, tokenizer, prepared, run)
    return cfg, runtime, model, tokenizer, prepared, run, result


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the backend is CUDA's")
def test_cpu_runs_the_hf_backend_in_fp32(trained):
    _, runtime, *_ = trained
    assert (runtime.backend, runtime.device, runtime.dtype) == ("hf", "cpu", "fp32")


def test_training_loss_decreases(trained):
    *_, result = trained
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) == 12
    # a random model with a 49k vocabulary starts near ln(49152) = 10.8 nats and learns slowly
    assert losses[0] > 10.5
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.15


def test_only_lora_weights_are_trainable(trained):
    _, _, model, *_ = trained
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"}


def test_adapter_is_saved_as_safetensors_with_the_tokenizer(trained):
    *_, run, _ = trained
    files = {p.name for p in run.adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)


def test_reloaded_adapter_gives_identical_logits(trained):
    cfg, runtime, model, tokenizer, prepared, run, _ = trained
    batch = torch.tensor([prepared.train[0]["input_ids"][:64]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch).logits
        reloaded, _ = backends.load_for_inference(cfg, runtime, run.adapter)
        actual = reloaded(input_ids=batch).logits
        base, _ = backends.load_for_inference(cfg, runtime, None)
        untrained = base(input_ids=batch).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(untrained, expected, atol=1e-3)  # the adapter really changed the model


def test_planned_steps_follow_epochs_or_max_steps():
    cfg = load_config(None, ["training.max_steps=-1", "training.num_epochs=2", "training.micro_batch_size=4",
                             "training.gradient_accumulation_steps=2"])
    assert planned_steps(cfg, 100) == 26  # ceil(100 / 8) = 13 per epoch
    assert planned_steps(cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 5})}),
                         100) == 5


def test_packed_rows_follow_the_data_not_the_machine(tmp_path):
    """TRL packs each dataset worker's shard separately; the kit asks every backend for one worker."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rng = torch.Generator().manual_seed(0)
    ids = [[1] * int(n) for n in torch.randint(200, 700, (96,), generator=rng)]
    examples = Dataset.from_dict({"input_ids": ids, "labels": ids})

    def rows(workers):
        packed = pack_dataset(examples, 2048, "bfd", {"num_proc": workers})
        return [len(row) for row in packed["input_ids"]]

    in_process = rows(None)
    assert rows(4) != in_process  # the cause: four workers pack four shards, into more, emptier rows
    cfg = load_config(None, ["training.packing=true", "model.max_seq_length=2048"])
    for backend in ("hf", "unsloth"):
        config = sft_config(cfg, backends.Runtime(backend, "cpu", "fp32", "test"), SimpleNamespace(path=tmp_path))
        workers = config.dataset_num_proc
        if backend == "unsloth":  # Unsloth reads 1 as in-process, None as "size from the machine" (4 here)
            workers = None if workers == 1 else workers or 4
        assert rows(workers) == in_process, backend
