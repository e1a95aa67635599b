"""Inputs an independent hostile review found handled badly: model and adapter folders holding a named pipe,
output folders inside a data folder, a dataset listed twice, and dry-runs that passed what the run refuses
(an existing run name, vLLM generation without vLLM) or left unsaid (a hub benchmark not checked)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli
from .test_adapters import make_adapter


@contextlib.contextmanager
def unblocked(fifo: Path, after_s: float = 60.0):
    """While the block runs, a reader left waiting on ``fifo`` for ``after_s`` gets end-of-file: a regression
    fails its test instead of hanging the suite."""
    done = threading.Event()

    def release() -> None:
        if done.wait(after_s):
            return
        while not done.is_set():
            with contextlib.suppress(OSError):  # ENXIO: no reader yet
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            done.wait(0.2)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _with_fifo(source: Path, folder: Path, name: str) -> Path:
    """A copy of ``source`` whose file ``name`` is a named pipe."""
    shutil.copytree(source, folder)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    return folder / name


# ---------------------------------------------------------------- named pipes in model and adapter folders

@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
def test_a_model_folder_file_that_is_a_named_pipe_is_refused(tiny_model_dir, tmp_path, capsys, name):
    fifo = _with_fifo(tiny_model_dir, tmp_path / "model", name)
    with unblocked(fifo):
        result = run_cli(capsys, kit_argv(tmp_path / "model", tmp_path / "out", "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, f"model.name: {fifo} is not a regular file")


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"])
def test_an_adapter_file_that_is_a_named_pipe_is_refused(tiny_model_dir, tmp_path, capsys, name):
    adapter = make_adapter(tmp_path / "run" / "adapter", str(tiny_model_dir))
    (adapter / "tokenizer.json").write_text("{}")
    (adapter / name).unlink()
    os.mkfifo(adapter / name)
    with unblocked(adapter / name):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test",
                                          "--adapter", str(tmp_path / "run")))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {adapter}: {name} is not a regular file")


# ---------------------------------------------------------------- dry-runs that passed what the run refuses

def test_the_dry_run_refuses_the_name_of_an_existing_run(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out" / "base").mkdir(parents=True)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{"output.run_name": "base"}))
    assert result.code == 2
    assert_one_message(result.err, f"The run folder {tmp_path / 'out' / 'base'} already exists; the kit never "
                                    "overwrites a run")


def _mc_rows(tmp_path: Path) -> Path:
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps({"question": f"Which dose of drug {i}?", "options": {"A": "1 mg", "B": "2 mg"},
                                        "answer_idx": "A"}) + "\n" for i in range(8)))
    return path


@pytest.mark.parametrize("dry_run", [True, False])
def test_vllm_generation_where_it_cannot_run_is_refused_before_a_run_folder(tiny_model_dir, tmp_path, capsys,
                                                                            dry_run):
    rows = _mc_rows(tmp_path)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", *(["--dry-run"] if dry_run else []),
                    **{"training.method": "grpo", "data.datasets.0.source": str(rows),
                       "data.datasets.0.format": "multiple_choice", "grpo.max_completion_length": "64",
                       "grpo.use_vllm": "true"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "grpo.use_vllm: generating with vLLM needs an NVIDIA GPU with Unsloth and vllm")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- the datasets taken together

def _instruction_rows(path: Path, n: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": f"Dose of drug {i}?", "output": f"{i} mg"}) + "\n"
                            for i in range(n)))
    return path


def test_an_output_folder_inside_the_data_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = _instruction_rows(tmp_path / "data" / "rows.jsonl").parent
    out = folder / "runs"
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--dry-run", **{"data.datasets.0.source": str(folder),
                                                                           "data.datasets.0.format": "instruction"}))
    assert result.code == 2
    assert_one_message(result.err, f"The output folder {out} (--output-dir or output.dir) lies inside the data folder "
                                    f"{folder} that data.datasets.0 reads")


def test_the_run_refuses_an_output_folder_inside_the_data_folder_before_making_a_run(tiny_model_dir, tmp_path,
                                                                                     capsys):
    folder = _instruction_rows(tmp_path / "data" / "rows.jsonl").parent
    result = run_cli(capsys, kit_argv(tiny_model_dir, folder, "--mode", "train",
                                      **{"data.datasets.0.source": str(folder),
                                         "data.datasets.0.format": "instruction"}))
    assert result.code == 2
    assert_one_message(result.err, "lies inside the data folder")
    assert sorted(p.name for p in folder.iterdir()) == ["rows.jsonl"]


def test_the_same_dataset_listed_twice_is_refused_pointing_at_weight(tiny_model_dir, tmp_path, capsys):
    rows = _instruction_rows(tmp_path / "rows.jsonl")
    other_spelling = tmp_path / "sub" / ".." / "rows.jsonl"
    (tmp_path / "sub").mkdir()
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets": f"[{{source: {rows}, format: instruction}}, {{source: {other_spelling}, format: instruction, "
                         "max_samples: 4}]"}))
    assert result.code == 2
    assert_one_message(result.err, "data.datasets.0 and data.datasets.1 both read")
    assert "every row would be trained twice" in result.err and "data.datasets[].weight" in result.err


def test_the_same_file_under_another_prompt_is_two_datasets(tiny_model_dir, tmp_path, capsys):
    rows = _instruction_rows(tmp_path / "rows.jsonl")
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets": f"[{{source: {rows}, format: instruction}}, {{source: {rows}, format: instruction, "
                         "prompt_template: 'Answer briefly: {question}'}]", "data.val_ratio": "0"}))
    assert result.code == 0, result.err
    assert json.loads(result.out)["training_examples"] == 16


# ---------------------------------------------------------------- what a dry-run cannot check, said

HUB_BENCHMARK = ("[{name: mine, kind: multiple_choice, source: someone/medqa-hub, max_items: 5}, "
                 "{name: shipped, kind: pubmedqa, max_items: 5}]")


@pytest.mark.parametrize("mode", ["eval", "full"])
def test_the_plan_says_a_hub_benchmark_is_not_checked_until_the_run(tiny_model_dir, tmp_path, capsys, mode):
    adapter = ["--adapter", str(make_adapter(tmp_path / "adapter", str(tiny_model_dir)))] if mode == "eval" else []
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", mode, *adapter,
                                      **{"eval.benchmarks": HUB_BENCHMARK}))
    assert result.code == 0, result.err
    planned = json.loads(result.out)
    shown = planned["does"] if mode == "eval" else " ".join(planned["evaluation"])
    assert "mine (multiple_choice, up to 5 items, likelihood) [hub dataset someone/medqa-hub: not checked by --dry-run; " \
           "the run reads it" in shown
    assert "shipped (pubmedqa, 5 items, likelihood)" in shown and shown.count("not checked by --dry-run") == 1
