"""Resume the hard way: kill -9 mid-run (in the middle of an epoch), --resume, and get the adapter an
uninterrupted run gets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medqlora.cli import main

from .conftest import tiny_overrides

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SLOW_TRAINING = """
import sys, time
from pathlib import Path
from trl import SFTTrainer
original = SFTTrainer.training_step
def slow_step(self, *args, **kwargs):
    time.sleep(0.4)
    out = original(self, *args, **kwargs)
    counter = Path(sys.argv[1])
    counter.write_text(str(int(counter.read_text() or 0) + 1) if counter.exists() else "1")
    return out
SFTTrainer.training_step = slow_step
from medqlora.cli import main
sys.exit(main(sys.argv[2:]))
"""


def argv_for(model_dir, out, name):
    argv = ["--mode", "train"]
    # 16 examples in batches of 4: 4 steps an epoch; killed after step 6, in the middle of the second
    for item in tiny_overrides(model_dir, out, **{"training.max_steps": "10", "training.save_steps": "2",
                                                  "training.learning_rate": "0.01", "output.run_name": name}):
        argv += ["--set", item]
    return argv


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert main(argv_for(tiny_model_dir, out, "whole")) == 0

    counter = tmp_path / "steps"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, str(counter)] + argv_for(tiny_model_dir, out, "cut"),
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "cut" / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_done = int(counter.read_text())
    assert 6 <= steps_done < 10
    assert not (out / "cut" / "adapter").exists()
    assert json.loads((out / "cut" / "manifest.json").read_text())["status"] == "training"

    assert main(["--mode", "train", "--resume", str(out / "cut")]) == 0
    metrics = json.loads((out / "cut" / "metrics.json").read_text())["metrics"]
    assert metrics["steps"] == 10
    assert steps_done - metrics["resumed_from_step"] <= 2  # at most one save interval of work lost
    assert metrics["resumed_from_step"] % 4  # in the middle of an epoch: its order must be the same again
    whole = load_file(out / "whole" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(out / "cut" / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert (whole[name] - resumed[name]).abs().max().item() < 1e-5, name
    manifest = json.loads((out / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "trained" and manifest["resumed_from"].startswith("checkpoint-")
    assert not (out / "cut" / "checkpoints").exists()


def test_resume_refuses_overrides_and_runs_without_checkpoints(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(argv_for(tiny_model_dir, out, "done")) == 0
    assert main(["--mode", "train", "--resume", str(out / "done")]) == 2
    assert "it finished training: its adapter is saved" in capsys.readouterr().err
    assert main(["--mode", "train", "--resume", "latest", "--set", "training.max_steps=3"]) == 2
    assert "leave out --set" in capsys.readouterr().err
    assert main(["--mode", "train", "--resume", "latest", "--output-dir", str(out)]) == 2
    assert "no run under" in capsys.readouterr().err
