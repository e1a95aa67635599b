"""Hostile and unlucky inputs around the files of a run folder, closed standard streams, llama.cpp converters that
write no usable file, and fetching llama.cpp into a cache that cannot hold it: a GRPO samples file that is a named
pipe or a hard link, a manifest that is a named pipe, a closed standard input or error, an empty or linked GGUF."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqlora.errors import MedQLoRAError
from medqlora.run_files import Files
from medqlora.runs import RunDir

from .conftest import assert_one_message, kit_argv, run_cli


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    return RunDir(run)


def test_a_grpo_samples_file_that_is_a_named_pipe_is_refused_not_waited_on(tmp_path):
    run = _run_folder(tmp_path)
    os.mkfifo(run.path / Files.GRPO_SAMPLES)
    with pytest.raises(MedQLoRAError, match="grpo_samples.jsonl is not a regular file"):
        run.check_links()  # checked when a resumed run starts, before any work
    with pytest.raises(MedQLoRAError, match="is not a regular file"):
        run.append_text(Files.GRPO_SAMPLES, "{}\n")  # and when written: no reader, no wait


def test_a_grpo_samples_file_hard_linked_outside_is_refused_and_the_file_kept(tmp_path):
    run = _run_folder(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    os.link(notes, run.path / Files.GRPO_SAMPLES)
    with pytest.raises(MedQLoRAError, match="hard link"):
        run.check_links()
    with pytest.raises(MedQLoRAError, match="hard link"):
        run.append_text(Files.GRPO_SAMPLES, '{"completion": "secret"}\n')
    assert notes.read_text() == "my precious notes\n"


def test_grpo_samples_are_appended_to_the_run_folders_own_file(tmp_path):
    run = _run_folder(tmp_path)
    run.append_text(Files.GRPO_SAMPLES, "one\n")
    run.append_text(Files.GRPO_SAMPLES, "two\n")
    run.check_links()
    assert (run.path / Files.GRPO_SAMPLES).read_text() == "one\ntwo\n"


def test_chat_with_standard_input_closed_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when the kit starts with standard input closed
    for dry_run in ((), ("--dry-run",)):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry_run, "--mode", "chat",
                                          "--adapter", "none"))
        assert result.code == 2
        assert_one_message(result.err, "--prompt")
        assert "standard input, which is closed" in result.err


def test_a_user_error_with_standard_error_closed_still_exits_2(tmp_path):
    """A launcher that closes stderr: the descriptor is often taken by a file opened read-only at start."""
    taken = tmp_path / "launcher.sh"
    taken.write_text("#!/bin/sh\n")
    script = Path(__file__).resolve().parents[1] / "medical_qlora_finetuning.py"
    with taken.open("rb") as read_only:
        result = subprocess.run([sys.executable, str(script), "--dry-run", "--set", "training.max_steps=0"],
                                stdout=subprocess.DEVNULL, stderr=read_only, timeout=300)
    assert result.returncode == 2
    assert taken.read_text() == "#!/bin/sh\n"
