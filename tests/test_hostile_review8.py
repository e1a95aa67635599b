"""Hostile and unlucky inputs around run-folder locks, launch variables, GRPO generation batches and the kit's
cache folder: a lock file that is a named pipe, a MASTER_PORT that is no port, a generation that needs more
prompts than the data has, an empty MEDQLORA_CACHE."""

import importlib
import os
from pathlib import Path

import pytest

from medqlora import distributed
from medqlora.errors import MedQLoRAError
from medqlora.run_lock import LOCK_FILE, lock_run_folder, release_run_folders

from .conftest import assert_one_message, kit_argv, run_cli

MEDMCQA_TRAIN = Path(__file__).resolve().parents[1] / "data" / "medmcqa" / "train.jsonl"


def test_a_lock_file_that_is_a_named_pipe_is_refused_not_truncated(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK_FILE)
    with pytest.raises(MedQLoRAError, match="must be a regular file"):
        lock_run_folder(run)
    release_run_folders()
    (run / LOCK_FILE).unlink()
    lock_run_folder(run)  # a regular lock file: taken
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    release_run_folders()


@pytest.mark.parametrize("port", ["abc", "99999", "0", ""])
def test_a_master_port_that_is_no_port_is_refused_naming_it(monkeypatch, port):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", port)):
        monkeypatch.setenv(name, value)
    with pytest.raises(MedQLoRAError, match="MASTER_PORT" if port else "MASTER_ADDR and MASTER_PORT are not set"):
        distributed.check_launch()
    monkeypatch.setenv("MASTER_PORT", "29500")
    distributed.check_launch()


GRPO = {"training.method": "grpo", "data.datasets.0.source": str(MEDMCQA_TRAIN),
        "data.datasets.0.format": "multiple_choice", "data.datasets.0.max_samples": "10", "grpo.num_generations": "2",
        "grpo.max_completion_length": "8", "training.micro_batch_size": "4"}


@pytest.mark.parametrize("settings,advice", [
    ({"grpo.steps_per_generation": "8", "training.max_steps": "-1", "training.num_epochs": "1"},
     "lower grpo.steps_per_generation to at most 5"),
    ({"grpo.steps_per_generation": "64"}, "lower grpo.steps_per_generation to at most 5"),
    ({"training.micro_batch_size": "32", "grpo.num_generations": "2"}, "lower the batch"),
])
def test_a_grpo_generation_larger_than_the_data_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys, settings,
                                                                       advice):
    # 10 prompts; one generation of 4 completions x 8 steps / 2 a prompt takes 16: TRL's sampler would deal
    # nothing out (an internal error with an epoch count, an untrained adapter reported "trained" with max_steps)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                      **{**GRPO, **settings}))
    assert result.code == 2
    assert_one_message(result.err, "the training data has 10: nothing would train")
    assert advice in result.err
    ok = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                  **{**GRPO, "grpo.steps_per_generation": "5"}))
    assert ok.code == 0, ok.err


def test_an_empty_medqlora_cache_means_the_default_not_the_current_folder(monkeypatch):
    from medqlora.backends import gguf

    try:
        monkeypatch.setenv("MEDQLORA_CACHE", "")
        assert importlib.reload(gguf).CACHE_DIR == Path.home() / ".cache" / "medqlora"
        monkeypatch.setenv("MEDQLORA_CACHE", "/somewhere/cache")
        assert importlib.reload(gguf).CACHE_DIR == Path("/somewhere/cache")
    finally:
        monkeypatch.undo()
        importlib.reload(gguf)
