"""Preemption and faults: SIGTERM/SIGHUP save the work like Ctrl-C, a NaN run is stopped and never called
trained, a full disk leaves no partial checkpoint or adapter, and the manifest always says how the run ended."""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from medqlora import signals, train, trainer_run
from medqlora.cli import main

from .conftest import ROOT, SCRIPT, kit_argv


def manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_a_termination_signal_saves_the_adapter_and_the_run_resumes(tiny_model_dir, tmp_path, sig):
    argv = kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "8", "training.save_steps": "3", "output.run_name": "cut",
        "data.datasets.0.max_samples": "32"})
    process = subprocess.Popen([sys.executable, str(SCRIPT), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run = tmp_path / "cut"
    deadline = time.time() + 300
    while not _whole_state(run / "checkpoints" / "checkpoint-3") and time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    assert f"Interrupted ({signal.Signals(sig).name}) at step" in err and "--resume" in err
    assert manifest(run)["status"] == "interrupted"
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(bool(v.isfinite().all()) for v in weights.values())
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 0  # trained, not initial

    assert main(["--mode", "train", "--resume", str(run)]) == 0
    assert manifest(run)["status"] == "trained"
    assert manifest(run)["resumed_from"].startswith("checkpoint-")
    assert json.loads((run / "metrics.json").read_text())["metrics"]["steps"] == 8
    assert any(p.name.startswith("adapter-interrupted") for p in run.iterdir())  # the earlier save is kept aside


def _whole_state(checkpoint) -> bool:
    """The checkpoint's trainer_state.json written whole (it exists, empty, while the Trainer writes it)."""
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def test_a_checkpoint_cut_by_a_signal_while_written_is_removed(tmp_path):
    """A signal while the Trainer wrote checkpoint-3's trainer_state.json left it empty, and --resume then refused
    the run as damaged; the checkpoint being written is removed, the one before kept."""
    from medqlora.runs import RunDir

    for step, state in ((2, '{"global_step": 2}'), (3, ""), (4, '{"global_st')):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(state)
    trainer_run._remove_incomplete_checkpoints(RunDir(tmp_path))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-2"]


def test_a_second_signal_ends_the_process_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with signals.stop_like_ctrl_c():
        with pytest.raises(KeyboardInterrupt):
            signals._stop(signal.SIGTERM, None)
        signals._stop(signal.SIGINT, None)  # while the first is being handled (saving the adapter)
    assert exits == [128 + signal.SIGINT]
    assert signals.received() == signal.SIGTERM and signals.exit_code() == 143
    assert signal.getsignal(signal.SIGTERM) is not signals._stop  # the handlers before are back


def test_a_signal_while_a_child_process_starts_acts_once_its_handle_exists():
    """The fetch's pip was orphaned (and held the terminal's stderr) when SIGTERM came between its start and the
    line that could stop it: inside signals.deferred() the signal waits for the end of the block."""
    reached = []
    with signals.stop_like_ctrl_c():
        with pytest.raises(KeyboardInterrupt):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler would run here, outside deferred()
                reached.append("handle assigned")
    assert reached == ["handle assigned"] and signals.received() == signal.SIGTERM


def _nan_from_step(step: int):
    """The kit's trainer, whose loss becomes NaN from the given optimizer step on."""
    kit_trainer = train._trainer_class()

    class NanTrainer(kit_trainer):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            if self.state.global_step + 1 >= step:
                return (loss[0] * math.nan, *loss[1:]) if isinstance(loss, tuple) else loss * math.nan
            return loss

    return lambda: NanTrainer


def test_a_nan_loss_stops_training_with_the_step_and_no_adapter(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "_trainer_class", _nan_from_step(3))
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "8", "output.run_name": "nan"}))
    err = capsys.readouterr().err
    assert code == 2, err
    # (the Trainer logs a NaN loss as the mean of the earlier ones: the gradient norm gives it away)
    assert re.search(r"Training stopped at step 3: the (loss|grad norm) is nan", err), err[-1500:]
    assert "--set training.learning_rate=2e-05" in err
    assert "Traceback" not in err
    assert manifest(tmp_path / "nan")["status"] == "failed"
    assert not (tmp_path / "nan" / "adapter").exists()


def test_an_adapter_with_nan_weights_is_never_saved(tiny_model_dir, tmp_path):
    import torch

    from medqlora import backends
    from medqlora.config import load_config
    from medqlora.runs import RunDir

    from .conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, **{"output.run_name": "r"}))
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer, _ = backends.load_for_training(cfg, runtime)
    run = RunDir.create(cfg)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0, 0] = math.inf
    with pytest.raises(trainer_run.NonFiniteTraining, match="NaN or infinite"):
        train.save_adapter(model, tokenizer, run)
    assert not run.adapter.exists() and not (run.path / ".adapter.partial").exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _safetensors_disk_full(*args, **kwargs):
    """How a full disk reaches the kit from safetensors' writer: its own exception type, the OS error in its text."""
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("failure", [_disk_full, _safetensors_disk_full])
def test_a_full_disk_while_checkpointing_leaves_no_partial_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                                      failure):
    from transformers import Trainer

    def half_then_full(self, model, trial):
        folder = tmp_path / "full" / "checkpoints" / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        failure()

    monkeypatch.setattr(Trainer, "_save_checkpoint", half_then_full)  # below the kit's trainer, as safetensors is
    kit_trainer = train._trainer_class()

    class FullDisk(kit_trainer):
        pass

    monkeypatch.setattr(train, "_trainer_class", lambda: FullDisk)
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "full"}))
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert manifest(tmp_path / "full")["status"] == "failed"
    assert "No space left" in manifest(tmp_path / "full")["error"]
    assert not list((tmp_path / "full" / "checkpoints").glob("checkpoint-*"))


@pytest.mark.parametrize("failure", [_disk_full, _safetensors_disk_full])
def test_a_full_disk_while_saving_the_adapter_leaves_no_partial_files(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                                      failure):
    from peft import PeftModel

    def half_then_full(self, folder, **kwargs):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as handle:
            handle.write(b"half")
        failure()

    monkeypatch.setattr(PeftModel, "save_pretrained", half_then_full)
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "full", "training.save_steps": "0"}))
    err = capsys.readouterr().err
    assert code == 2 and "Cannot save the adapter" in err and "Traceback" not in err, err
    run = tmp_path / "full"
    assert manifest(run)["status"] == "failed"
    assert not (run / "adapter").exists() and not (run / ".adapter.partial").exists()


def test_a_crash_while_answering_after_training_marks_the_run_failed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from medqlora import generate

    def crash(*args, **kwargs):
        raise RuntimeError("generation broke")

    monkeypatch.setattr(generate, "answer", crash)
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "full", **{
        "output.run_name": "late", "eval.in_full_mode": "false"}))
    err = capsys.readouterr().err
    assert code == 1 and "internal error: RuntimeError: generation broke" in err and "Traceback" not in err, err
    facts = manifest(tmp_path / "late")
    assert facts["status"] == "failed" and "generation broke" in facts["error"]
    assert (tmp_path / "late" / "adapter" / "adapter_model.safetensors").is_file()  # the trained work is kept
