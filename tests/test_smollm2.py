"""The offline default on the real SmolLM2-135M-Instruct weights, shortened to a few steps."""

import json
from pathlib import Path

import pytest

from medqlora.cli import main

pytestmark = pytest.mark.slow


def test_default_config_trains_and_answers_on_real_smollm2(tmp_path, capsys):
    out = tmp_path / "outputs"
    argv = ["--mode", "full", "--output-dir", str(out),
            "--set", "training.max_steps=3", "--set", "data.datasets.0.max_samples=3",
            "--set", "training.micro_batch_size=1",
            "--set", "generation.max_new_tokens=12", "--set", "output.run_name=smol",
            # short rows and evaluation prompts: the real weights' cost is in the tokens they read
            "--set", "model.max_seq_length=256", "--set", "eval.max_length=256",
            "--set", "eval.benchmarks.0.max_items=4"]
    assert main(argv) == 0
    run = out / "smol"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    source = json.loads((Path(manifest["model_source"]) / "config.json").read_text())  # the converted GGUF
    assert (source["model_type"], source["hidden_size"], source["num_hidden_layers"], source["vocab_size"]) == (
        "llama", 576, 30, 49152)  # SmolLM2-135M's shape
    losses = [e["loss"] for e in json.loads((run / "metrics.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 3 and 0 < losses[-1] < 6  # a pretrained model, not a random one (ln 49152 = 10.8)
    tokenizer_config = json.loads((run / "adapter" / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    pubmedqa = json.loads((run / "eval.json").read_text())["benchmarks"]["pubmedqa"]
    assert pubmedqa["baseline"]["items"] == pubmedqa["fine_tuned"]["items"] == 4
    answers = [json.loads(line) for line in (run / "sample_responses.jsonl").read_text().splitlines()]
    assert all(a["new_tokens"] > 0 and len(a["response"]) > 150 for a in answers)
