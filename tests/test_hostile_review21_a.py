"""Hostile round 21: a run repeated from its own config.yaml, and the advice for a run stopped before its first
checkpoint."""

import json
from pathlib import Path

import pytest

from medqlora import adapter_runs
from medqlora.config import load_config
from medqlora.errors import ModelError
from medqlora.export import left_for_export_mode

from .conftest import kit_argv, run_cli


def _saved(cfg, tmp_path: Path, name: str = "config.yaml") -> Path:
    """A config written as a run folder writes its config.yaml: every value, defaults included."""
    path = tmp_path / name
    path.write_text(cfg.to_yaml())
    return path


def test_a_runs_own_config_yaml_sets_no_export_setting_a_training_mode_would_warn_of(tmp_path):
    """A run repeated with --config RUN/config.yaml (as the README says) warned that export.formats and
    export.push_to_hub are for --mode export: the file writes every default, push_to_hub: null included."""
    again = load_config(_saved(load_config(None, []), tmp_path))
    assert {"formats", "push_to_hub"} <= again.export.model_fields_set
    assert left_for_export_mode(again, "train") is None and left_for_export_mode(again, "full") is None
    chosen = load_config(_saved(load_config(None, ["export.formats=[adapter, merged]"]), tmp_path, "merged.yaml"))
    assert left_for_export_mode(chosen, "train").startswith("export.formats is for --mode export")


def test_the_dry_run_of_a_run_repeated_from_its_config_plans_no_export_note(tiny_model_dir, tmp_path, capsys):
    saved = _saved(load_config(None, []), tmp_path)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", "--config",
                                      str(saved)))
    assert result.code == 0, result.err[-2000:]
    assert "export" not in json.loads(result.out) and "for --mode export" not in result.out + result.err


def _stopped_run(tmp_path: Path, checkpoint: bool) -> Path:
    """A kit run folder whose training a signal stopped (adapter trained so far saved), with or without a
    checkpoint to continue from."""
    run = tmp_path / "out" / "sig0"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({
        "kit_version": "0.1.0", "status": "interrupted", "error": "interrupted (SIGTERM) at step 1 of 4",
        "command": ["medical_qlora_finetuning.py", "--mode", "train"]}))
    if checkpoint:
        (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return run


@pytest.mark.parametrize("checkpoint", [False, True])
def test_an_adapter_of_a_run_stopped_before_its_first_checkpoint_is_not_advised_a_resume(tmp_path, monkeypatch,
                                                                                          checkpoint):
    """--adapter / training.init_adapter of a run interrupted before its first checkpoint advised the --resume that
    was refused with 'has no checkpoint to continue from'."""
    said = []
    monkeypatch.setattr(adapter_runs, "say", said.append)

    class Found(Exception):
        pass

    def found(folder):
        raise Found

    monkeypatch.setattr(adapter_runs.adapters, "find", found)
    run = _stopped_run(tmp_path, checkpoint)
    with pytest.raises(Found):
        adapter_runs.find_adapter(None, str(run), None, "training.init_adapter")
    [warning] = said
    assert "its training stopped before its end (status interrupted" in warning
    if checkpoint:
        assert f"to finish it: python medical_qlora_finetuning.py --mode train --config {run}/config.yaml --resume " \
               f"{run})" in warning
    else:
        assert "--resume" not in warning
        assert ("not a finished run's (no checkpoint to continue from (it stopped before its first one, "
                "training.save_steps): train it again as a new run to finish its training)") in warning


@pytest.mark.parametrize("checkpoint", [False, True])
def test_init_adapter_latest_of_a_run_stopped_before_its_first_checkpoint_is_not_advised_a_resume(tmp_path,
                                                                                               checkpoint):
    run = _stopped_run(tmp_path, checkpoint)
    with pytest.raises(ModelError) as refused:
        adapter_runs.check_latest_finished(run / "adapter", "training.init_adapter")
    message = str(refused.value)
    assert f"or set training.init_adapter to {run} to start from that adapter as it is" in message
    if checkpoint:
        assert f"Finish it first (python medical_qlora_finetuning.py --mode train --config {run}/config.yaml" in message
    else:
        assert "--resume" not in message
        assert "It has no checkpoint to continue from (it stopped before its first one, training.save_steps): train " \
               "it again as a new run first" in message
