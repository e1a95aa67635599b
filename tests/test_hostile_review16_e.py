"""Hostile round 16, faults: the machine's memory (not the GPU's) running out in a training step, and a library's
background thread (TensorBoard's event writer) failing on a file-size limit."""

import errno
import json
import os
import threading

import pytest

from medqlora import cli

from .conftest import assert_one_message, kit_argv, run_cli


@pytest.mark.parametrize("raised", [
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                         "tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"),
    lambda: MemoryError(),
])
def test_running_out_of_the_machines_memory_in_a_step_says_what_to_change(tiny_model_dir, tmp_path, monkeypatch,
                                                                          capsys, raised):
    """`ulimit -v` standing in for a small machine: `internal error: RuntimeError: ... DefaultCPUAllocator: can't
    allocate memory`, exit 1, no adapter, no advice."""
    from trl import SFTTrainer

    original, calls = SFTTrainer.training_step, {"n": 0}

    def out_of_memory_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise raised()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", out_of_memory_on_third)
    out = tmp_path / "o"
    result = run_cli(capsys, ["--mode", "train"] + kit_argv(tiny_model_dir, out, **{"output.run_name": "ram"}))
    assert result.code == 2
    assert_one_message(result.err, "The machine ran out of memory (RAM, or the process's memory limit) at step 2.")
    assert "training.micro_batch_size=2" in result.err and "gradient_checkpointing=true" in result.err
    assert "load_in_4bit" not in result.err and "internal error" not in result.err
    assert (out / "ram" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "ram" / "manifest.json").read_text())["status"] == "failed"


def test_a_failing_background_thread_prints_one_warning_line_not_a_traceback(capsys, monkeypatch):
    """TensorBoard's writer thread past `ulimit -f`: `Exception in thread Thread-2: Traceback ...` beside the kit's
    own message."""
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after the test
    threading.excepthook = cli._background_thread_failed

    def write_events():
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    worker = threading.Thread(target=write_events, name="EventFileWriter")
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("medqlora: warning: a background thread (EventFileWriter) stopped: OSError: [Errno 27] "
                          "File too large; what it wrote (such as the TensorBoard log) is incomplete.")
    assert "limits the size of one file" in err


def test_the_command_line_installs_the_background_thread_hook(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    cli.main(["--mode", "train", "--dry-run", "--config", str(tmp_path / "missing.yaml")])
    assert threading.excepthook is cli._background_thread_failed


SLOW_SAVE = """
import sys, time
from medqlora import trainer_run
original = trainer_run.save_adapter
def slow_save(*args, **kwargs):
    print("saving", file=sys.stderr, flush=True)
    time.sleep(60)
    return original(*args, **kwargs)
trainer_run.save_adapter = slow_save
from medqlora.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_first_saves_marks_the_run_interrupted_and_says_so(tiny_model_dir, tmp_path):
    """Ctrl-C twice 0.1 s apart: exit 130 with no word on stderr, the manifest left at "training"."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    argv = kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "200", "training.save_steps": "3", "output.run_name": "twice",
        "data.datasets.0.max_samples": "32"})
    process = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run = tmp_path / "twice"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").exists() and time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(3)  # the first is being handled: the adapter's save has begun (and sleeps)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "saving" in err and "Traceback" not in err
    assert f"medqlora: stopped at once by a second Ctrl-C: the run {run} is marked interrupted; no adapter was saved" \
        in err
    assert f"--resume {run}" in err
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
