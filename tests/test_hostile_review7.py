"""Inputs an independent hostile review found handled badly: text a tokenizer cannot read (half of a UTF-16
surrogate pair, from a data file or a config value), control tokens in a system prompt, and launch settings
that name processes which never start."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import assert_one_message, kit_argv, run_cli
from .test_distributed import free_port


def _dry_run(capsys, model_dir, tmp_path, *sets):
    given = dict(item.split("=", 1) for item in sets)  # a key set here replaces the base's (one --set per key)
    argv = ["--dry-run", "--output-dir", str(tmp_path / "out")]
    for key, value in {"model.name": str(model_dir), "model.max_seq_length": "256", **given}.items():
        argv += ["--set", f"{key}={value}"]
    return run_cli(capsys, argv)


def _rows(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- half of a surrogate pair

def test_a_data_row_with_half_a_surrogate_pair_is_refused_naming_its_field(tiny_model_dir, tmp_path, capsys):
    good = "".join(json.dumps({"instruction": f"Dose of drug {i}?", "output": f"{i} mg"}) + "\n" for i in range(6))
    path = _rows(tmp_path, "rows.jsonl", good + '{"instruction": "Pain \\ud800 relief?", "output": "ibuprofen"}\n')
    result = _dry_run(capsys, tiny_model_dir, tmp_path, f"data.datasets=[{{source: {path}, format: instruction}}]")
    assert result.code == 2
    assert_one_message(result.err, "rows.jsonl:7: field 'instruction' holds half of a UTF-16 surrogate pair")


def test_a_pair_written_whole_is_read(tiny_model_dir, tmp_path, capsys):
    rows = "".join(json.dumps({"instruction": f"Dose of drug {i} \ud83d\ude00?", "output": f"{i} mg"}) + "\n"
                   for i in range(6))
    path = _rows(tmp_path, "rows.jsonl", rows)
    result = _dry_run(capsys, tiny_model_dir, tmp_path, f"data.datasets=[{{source: {path}, format: instruction}}]",
                      "data.val_ratio=0", "data.eval_sets=[]")
    assert result.code == 0, result.err


@pytest.mark.parametrize("where", ["set", "file"])
def test_a_config_value_with_half_a_surrogate_pair_is_refused(tiny_model_dir, tmp_path, capsys, where):
    value = '"Be brief \\ud800."'
    if where == "set":
        result = _dry_run(capsys, tiny_model_dir, tmp_path, f"data.system_prompt={value}")
    else:
        config = _rows(tmp_path, "run.yaml", f"data:\n  system_prompt: {value}\n")
        result = run_cli(capsys, ["--dry-run", "--config", str(config), "--output-dir", str(tmp_path / "out"),
                                  "--set", f"model.name={tiny_model_dir}"])
    assert result.code == 2
    assert_one_message(result.err, "holds half of a UTF-16 surrogate pair")


# ---------------------------------------------------------------- control tokens in a system prompt

@pytest.mark.parametrize("setting", ["data.system_prompt", "data.datasets.0.system_prompt"])
def test_a_system_prompt_holding_a_control_token_is_refused(tiny_model_dir, tmp_path, capsys, setting):
    rows = "".join(json.dumps({"instruction": f"Dose of drug {i}?", "output": f"{i} mg"}) + "\n" for i in range(6))
    path = _rows(tmp_path, "rows.jsonl", rows)
    result = _dry_run(capsys, tiny_model_dir, tmp_path, f"data.datasets=[{{source: {path}, format: instruction}}]",
                      f"{setting}=Be brief.<|im_end|>")
    assert result.code == 2
    assert_one_message(result.err, f"{setting} holds '<|im_end|>' as text, a control token of the model's tokenizer")


# ---------------------------------------------------------------- a launch whose other processes never start

def _alone_in_a_group_of_two(tiny_model_dir, tmp_path, limit_s):
    """This process, started with the launch variables of a group of two whose other member never comes."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    code = (f"import sys, medqlora.distributed as d; d.RENDEZVOUS_LIMIT_S = {limit_s}; "
            "from medqlora.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"training.gradient_accumulation_steps": "2"})
    process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process, int(env["MASTER_PORT"])


def test_a_process_whose_group_never_gathers_says_why_and_exits(tiny_model_dir, tmp_path):
    process, _ = _alone_in_a_group_of_two(tiny_model_dir, tmp_path, limit_s=5)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-2000:]
    assert "WORLD_SIZE=2 processes were to meet" in err and "Traceback" not in err, err[-2000:]
    assert "torchrun --nproc_per_node N" in err


def test_sigterm_ends_a_process_waiting_for_its_group(tiny_model_dir, tmp_path):
    process, port = _alone_in_a_group_of_two(tiny_model_dir, tmp_path, limit_s=600)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not _listening(process.pid, port):
        time.sleep(0.5)  # rank 0 listens on MASTER_PORT once it waits for the others
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM


def _listening(pid, port):
    import psutil

    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.Process(pid).net_connections(kind="tcp"))


# ---------------------------------------------------------------- two commands in one run folder

def test_a_second_command_in_a_run_folder_in_use_is_refused_before_it_touches_it(tiny_model_dir, tmp_path, capsys):
    """A double-started --resume: the second command says another one holds the folder, and writes nothing there."""
    from medqlora.cli import main

    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "r",
                                                                         "training.max_steps": "1"})) == 0
    run = tmp_path / "r"
    log_before = (run / "run.log").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, b'4242\\n', 0); "
                               "print('held', flush=True); time.sleep(120)", str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli(capsys, ["--mode", "export", "--adapter", str(run), "--set", "export.formats=[adapter]"])
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 2
    assert_one_message(result.err, f"Another medqlora command (process 4242) is using the run folder {run} right now")
    assert (run / "run.log").read_bytes() == log_before
    again = run_cli(capsys, ["--mode", "export", "--adapter", str(run), "--set", "export.formats=[adapter]"])
    assert again.code == 0, again.err  # free again once the other command ended


def test_a_queries_file_with_half_a_surrogate_pair_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    queries = _rows(tmp_path, "q.yaml", 'queries:\n  - id: a\n    question: "Hi \\ud800 there"\n')
    result = run_cli(capsys, ["--dry-run", "--mode", "test", "--adapter", "none", "--output-dir", str(tmp_path / "o"),
                              "--set", f"model.name={tiny_model_dir}", "--set", f"generation.queries_file={queries}"])
    assert result.code == 2
    assert_one_message(result.err, "holds half of a UTF-16 surrogate pair")


# ---------------------------------------------------------------- dry-run gaps

def test_the_dry_run_refuses_a_max_seq_length_beyond_the_models_context(tiny_model_dir, tmp_path, capsys):
    limit = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    result = _dry_run(capsys, tiny_model_dir, tmp_path, f"model.max_seq_length={limit * 4}")
    assert result.code == 2
    assert_one_message(result.err, f"model.max_seq_length={limit * 4} exceeds what {tiny_model_dir} supports ({limit})")


@pytest.mark.parametrize("setting", ["export.push_to_hub=someone/medical-model", "export.formats=[merged]"])
def test_export_settings_in_a_training_mode_are_said_to_wait_for_export_mode(tiny_model_dir, tmp_path, capsys,
                                                                              setting):
    result = _dry_run(capsys, tiny_model_dir, tmp_path, setting)
    assert result.code == 0, result.err
    note = json.loads(result.out)["export"]
    assert note.startswith(f"not in this mode: export.{setting.split('=')[0].split('.')[1]} is for --mode export")
    assert "--mode export --adapter latest" in note
    assert "export" not in json.loads(_dry_run(capsys, tiny_model_dir, tmp_path).out)


def test_a_training_run_with_a_hub_repository_says_it_uploads_nothing(tiny_model_dir, tmp_path, capsys):
    from medqlora.cli import main

    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "1", "export.push_to_hub": "someone/medical-model"})) == 0
    assert "warning: export.push_to_hub is for --mode export: --mode train trains and saves the adapter, and " \
           "exports or uploads nothing" in capsys.readouterr().out
