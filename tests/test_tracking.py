"""Tracking: TensorBoard events in the run folder by default; W&B offline; keys never written anywhere."""

from pathlib import Path

from medqlora import tracking
from medqlora.cli import main

from .conftest import tiny_overrides

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def train(model_dir, out, **values):
    argv = ["--mode", "train"]
    for item in tiny_overrides(model_dir, out, **{"output.run_name": "run", "training.save_steps": "0", **values}):
        argv += ["--set", item]
    return main(argv)


def scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logs_loss_lr_grad_norm_and_speed_by_default(tiny_model_dir, tmp_path):
    assert train(tiny_model_dir, tmp_path) == 0
    logged = scalars(tmp_path / "run" / "tensorboard")
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert len(logged[tag]) == 4, tag  # one point per step (logging_steps 1, 4 steps)
    assert all(v > 0 for v in logged["train/tokens_per_second"])
    assert logged["train/loss"][0] > 9  # a random model over a 49k vocabulary starts near ln(49152)


def test_wandb_offline_logs_the_run_and_never_writes_the_key(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert train(tiny_model_dir, tmp_path, **{"training.report_to": "[wandb]"}) == 0
    run = tmp_path / "run"
    history = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert history and b"train/loss" in history[0].read_bytes()
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert not (run / "tensorboard").exists()  # only what was asked for


def test_wandb_without_a_key_stops_before_anything_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert train(tiny_model_dir, tmp_path, **{"training.report_to": "[tensorboard,wandb]"}) == 2
    assert "WANDB_API_KEY in the environment" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_says_how_to_install_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    assert train(tiny_model_dir, tmp_path, **{"training.report_to": "[mlflow]"}) == 2
    assert "pip install mlflow" in capsys.readouterr().err
