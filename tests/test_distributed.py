"""Data parallel on the CPU (gloo): two processes train the adapter one process trains, and write one run folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medqlora import distributed
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def launch(model_dir, out, name, processes):
    argv = ["--mode", "train"]
    for item in tiny_overrides(model_dir, out, **{
            "data.datasets.0.max_samples": "32", "training.micro_batch_size": "4",
            "training.gradient_accumulation_steps": "2", "training.learning_rate": "0.01",
            "training.save_steps": "0", "output.run_name": name}):
        argv += ["--set", item]
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
              "--master_port", str(29500 + processes)] if processes > 1 else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(runner + [str(ROOT / "medical_qlora_finetuning.py")] + argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_processes_train_the_same_adapter_as_one_with_the_same_effective_batch(tiny_model_dir, tmp_path):
    one = launch(tiny_model_dir, tmp_path, "one", 1)
    two = launch(tiny_model_dir, tmp_path, "two", 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one folder for both processes
    log = (tmp_path / "two" / "run.log").read_text()
    assert log.count("run folder:") == 1 and "data parallel: 2 processes share each batch" in log
    assert two.stdout.count("medqlora run:") == 1  # the summary is printed once
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1  # one event file, from the main process
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert metrics["steps"] == 4 and metrics["tokens_seen"] == json.loads(
        (tmp_path / "one" / "metrics.json").read_text())["metrics"]["tokens_seen"]  # the same examples, shared
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3  # it did train


def test_the_effective_batch_is_divided_among_processes(monkeypatch):
    cfg = load_config(None, ["training.micro_batch_size=2", "training.gradient_accumulation_steps=4"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    split = distributed.split_batch(cfg)
    assert (split.training.micro_batch_size, split.training.gradient_accumulation_steps) == (2, 2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="cannot be shared by 3 processes"):
        distributed.split_batch(cfg)
