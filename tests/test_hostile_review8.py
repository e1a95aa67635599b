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


def test_a_lock_file_hard_linked_to_a_file_outside_is_refused_and_the_file_kept(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    os.link(notes, run / LOCK_FILE)
    with pytest.raises(MedQLoRAError, match="hard link"):
        lock_run_folder(run)
    release_run_folders()
    assert notes.read_text() == "my precious notes\n"


def test_a_run_log_hard_linked_to_a_file_outside_is_refused_and_the_file_kept(tiny_model_dir, tmp_path, capsys):
    from medqlora.runs import Files

    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    out = tmp_path / "out"
    assert run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "1",
                                                                              "output.run_name": "base"})).code == 0
    (out / "base" / Files.RUN_LOG).unlink()
    os.link(notes, out / "base" / Files.RUN_LOG)
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "test", "--adapter", str(out / "base")))
    assert result.code == 2
    assert_one_message(result.err, "hard link")
    assert notes.read_text() == "my precious notes\n"


@pytest.mark.parametrize("kind,message", [("fifo", "is not a regular file"), ("folder", "is not a regular file"),
                                          ("garbage", "is not readable as parquet")])
def test_an_mmlu_parquet_file_that_cannot_be_read_is_named(tiny_model_dir, tmp_path, capsys, kind, message):
    folder = tmp_path / "mmlu"
    target = folder / "anatomy" / "test-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    {"fifo": os.mkfifo, "folder": Path.mkdir, "garbage": lambda p: p.write_bytes(b"not parquet at all")}[kind](target)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      "none", **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[mmlu_anatomy]",
                                                 "eval.lm_eval.mmlu_dir": str(folder)}))
    assert result.code == 2
    assert_one_message(result.err, message)
    assert "test-00000-of-00001.parquet" in result.err


def test_an_endless_chat_line_ends_the_conversation_without_filling_memory():
    import io

    from medqlora import chat

    class Endless(io.TextIOBase):
        """/dev/zero as text: characters for ever, never a newline."""

        def readable(self):
            return True

        def readline(self, size=-1):
            assert 0 < size <= chat.MAX_LINE_CHARS + 1, "an unbounded read of a line"
            return "\0" * size

    out, err = io.StringIO(), io.StringIO()
    assert chat._read_line(Endless(), out, err, tty=False) is None
    assert "the conversation ends" in err.getvalue()
    assert chat._read_line(io.StringIO("What is sepsis?\n"), out, err, tty=False) == "What is sepsis?\n"


def test_a_master_addr_that_names_no_address_is_said_when_the_wait_ends(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "no-such-host.invalid")
    assert "MASTER_ADDR=no-such-host.invalid names no address" in distributed._unresolvable_master()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert distributed._unresolvable_master() == ""


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_DATASETS_CACHE"])
def test_a_hugging_face_cache_variable_naming_a_file_is_refused_at_the_start(tiny_model_dir, tmp_path, capsys,
                                                                            monkeypatch, variable):
    # datasets (lm-eval's tasks) failed on it after the model had loaded and the kit's benchmark was scored
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    monkeypatch.setenv(variable, str(notes))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train"))
    assert result.code == 2
    assert_one_message(result.err, f"{variable}: {notes} cannot be a cache folder: it is not a folder")
    monkeypatch.setenv(variable, str(tmp_path / "cache" / "below"))  # a folder to be made: fine
    assert run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train")).code == 0


def _fetch_command(tmp_path, *args):
    import subprocess
    import sys

    env = {**os.environ, "MEDQLORA_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": ""}
    env.pop("LLAMA_CPP_DIR", None)
    return subprocess.run([sys.executable, "-m", "medqlora.export", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])


def test_fetching_llama_cpp_without_a_package_index_is_one_message(tmp_path):
    done = _fetch_command(tmp_path, "--fetch-llama-cpp")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "pip could not download llama.cpp's source" in done.stderr and "LLAMA_CPP_DIR" in done.stderr
    assert not (tmp_path / "cache" / "llama.cpp").exists()


def test_a_mistyped_fetch_option_is_a_usage_error(tmp_path):
    done = _fetch_command(tmp_path, "--fetch")
    assert done.returncode == 2 and "usage: python -m medqlora.export --fetch-llama-cpp" in done.stderr


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGUSR2"])
def test_slurms_warning_signal_interrupts_like_sigterm(sig):
    # SLURM's --signal=USR1@<seconds> warns a job before its time limit: the default action killed the process
    # without saving the adapter, and the manifest stayed at "training"
    import signal

    from medqlora import signals

    number = getattr(signal, sig)
    with pytest.raises(KeyboardInterrupt), signals.stop_like_ctrl_c():
        os.kill(os.getpid(), number)
        signal.sigtimedwait([], 0.5)  # let the handler run
    assert signals.received() == number and signals.exit_code() == 128 + number
    assert signal.getsignal(number) == signal.SIG_DFL  # put back after the command


def test_an_evaluation_of_nothing_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.benchmarks": "[]"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "--mode eval has nothing to score")
    with_tasks = argv + ["--set", "eval.harness=lm-eval", "--set", "eval.lm_eval.tasks=[pubmedqa]"]
    assert run_cli(capsys, with_tasks).code == 0


def test_a_checkpoint_copied_without_its_own_code_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    import json
    import shutil

    model = tmp_path / "m_remote"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                          "AutoTokenizer": ["other/repo--tokenization_y.YTokenizer", None]}
    (model / "config.json").write_text(json.dumps(config))
    argv = kit_argv(model, tmp_path / "out", "--dry-run", "--mode", "train", **{"model.trust_remote_code": "true"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "auto_map names configuration_x.py, modeling_x.py, which the folder lacks")
    assert "tokenization_y" not in result.err  # code of another repository is not looked for here


def test_an_hf_endpoint_that_is_no_url_is_refused_without_showing_it(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "bob:SuperSecretPw123@mirror.example")
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train"))
    assert result.code == 2
    assert_one_message(result.err, "HF_ENDPOINT is set but is not a URL")
    assert "SuperSecretPw123" not in result.err + result.out
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    assert run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train")).code == 0


def test_a_named_pipe_no_loader_reads_does_not_refuse_the_model(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "m_extra"
    shutil.copytree(tiny_model_dir, model)
    os.mkfifo(model / "progress.pipe")  # a download tool's leftover: never opened
    argv = kit_argv(model, tmp_path / "out", "--dry-run", "--mode", "train")
    assert run_cli(capsys, argv).code == 0
    (model / "tokenizer.json").rename(model / "tokenizer.json.bak")
    os.mkfifo(model / "tokenizer.json")  # one a loader reads: still refused (VA01)
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "tokenizer.json is not a regular file")
