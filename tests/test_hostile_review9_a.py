"""Hostile and unlucky inputs around the files of a run folder, closed standard streams, llama.cpp converters that
write no usable file, and fetching llama.cpp into a cache that cannot hold it: a GRPO samples file that is a named
pipe or a hard link, a manifest that is a named pipe, a closed standard input or error, an empty or linked GGUF."""

import os

import pytest

from medqlora.errors import MedQLoRAError
from medqlora.run_files import Files
from medqlora.runs import RunDir


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
