"""Hostile and unlucky inputs of the command line, the Python API, the config and the run folders: overrides
given to load_config as one string or a dict, `~` as a YAML value, ways other kits switch tracking off, --resume
beside --output-dir and its advice, paths with invisible blanks, stdout that cannot be written, and a run
folder whose manifest.json was cut off."""

import pytest

from medqlora.config import load_config
from medqlora.errors import ConfigError


def test_load_config_takes_one_override_string_and_refuses_a_dict_with_the_list_to_write():
    """One string was iterated as its characters (`--set 't': expected section.key=value`); a dict as its keys,
    reported as a --set the user never wrote."""
    assert load_config(None, overrides="training.max_steps=2").training.max_steps == 2
    assert load_config(None, overrides=("training.max_steps=3",)).training.max_steps == 3
    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides={"training.max_steps": 2})
    message = str(refused.value)
    assert "--set" not in message.split(";")[0]
    assert "overrides must be a list of \"section.key=value\" strings" in message
    assert "['training.max_steps=2']" in message
    with pytest.raises(ConfigError, match=r"got list \['training.max_steps=2', 3\]; overrides must be a list"):
        load_config(None, overrides=["training.max_steps=2", 3])


def test_a_setting_yaml_reads_as_null_says_that_tilde_is_no_value_and_what_to_write(tmp_path, capsys):
    """`output.dir: ~` (meant as the home folder) read as null: 'Input should be a valid string (got None)' said
    nothing of YAML's null."""
    from .conftest import assert_one_message, run_cli

    config = tmp_path / "c.yaml"
    config.write_text("training:\n  max_steps: 1\noutput:\n  dir: ~\n")
    result = run_cli(capsys, ["--mode", "train", "--config", str(config), "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, "c.yaml:4: 'output.dir': Input should be a valid string (got None). YAML reads ~, "
                       "null and a key with nothing after its colon as no value")
    assert "~ alone is not your home folder: for a folder under it, write ~/ and the rest, ~/outputs" in result.err
    assert "or leave the key out for its default." in result.err
    result = run_cli(capsys, ["--mode", "train", "--config", str(config), "--set", "output.dir=/tmp/x",
                              "--set", "training.max_steps=", "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, "'training.max_steps': Input should be a valid integer (got None)")
    assert "YAML reads ~, null and nothing after = as no value: give the value, or leave out this --set for its " \
           "default." in result.err and "home folder" not in result.err


@pytest.mark.parametrize("written, advice", [
    ("none", "is a list of trackers (tensorboard, wandb, mlflow); [] switches tracking off (got 'none')"),
    ("[none]", "[] switches tracking off (got ['none'])"),
    ("false", "[] switches tracking off (got False)"),
    ("all", "name those to use, e.g. [tensorboard, wandb, mlflow] ([] switches tracking off) (got 'all')"),
    ("wandb", "is a list of trackers: write [wandb] ([] switches tracking off) (got 'wandb')"),
])
def test_report_to_written_as_other_kits_write_it_says_that_an_empty_list_switches_tracking_off(written, advice):
    """transformers' `report_to=none` was refused as 'a valid list', `[none]` as not a tracker: neither said []."""
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"training.report_to={written}"])
    assert "'training.report_to': Value error, is a list of trackers" in str(refused.value)
    assert advice in str(refused.value)
    assert load_config(None, ["training.report_to=[]"]).training.report_to == []


def test_the_plan_of_a_run_without_trackers_lists_no_tracker_folder(tiny_model_dir, tmp_path, capsys):
    """report_to [] (the way to switch tracking off): the plan's outputs listed tensorboard/, never written."""
    import json

    from .conftest import kit_argv, run_cli

    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"training.report_to": "[]"}))
    assert result.code == 0, result.err[-2000:]
    outputs = json.loads(result.out)["outputs"]
    assert "run.log" in outputs
    assert not {"tensorboard/", "wandb/", "mlruns/"} & set(outputs.split("{")[1].rstrip("}").split(", "))


def _run_folder(parent):
    """A folder that --resume takes for a run of the kit (its records); the checkpoint checks come later."""
    run = parent / "killed2"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"status": "interrupted"}')
    (run / "config.yaml").write_text("training:\n  max_steps: 1\n")
    return run


def test_resume_by_the_runs_bare_name_advises_the_folder_under_output_dir(tmp_path, capsys, monkeypatch):
    """`--resume killed2` advised `outputs/<run>` though output.dir was elsewhere: that advice failed again."""
    from .conftest import assert_one_message, run_cli

    out = tmp_path / "runs"
    run = _run_folder(out)
    monkeypatch.chdir(tmp_path)
    result = run_cli(capsys, ["--mode", "train", "--resume", "killed2", "--output-dir", str(out), "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, f"--resume 'killed2': no such folder. A run of that name is in '{out}': "
                       f"--resume '{run}'.")
    config = tmp_path / "c.yaml"
    import yaml

    from medqlora.config import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.write_text(yaml.safe_dump({**raw, "output": {"dir": str(out)}}))
    result = run_cli(capsys, ["--mode", "train", "--config", str(config), "--resume", "nothere", "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, f"--resume 'nothere': no such folder. Give the run's folder ('{out}/<run>', the "
                       f"path printed when it started), or latest for the newest run under '{out}' with a checkpoint.")
    assert "outputs/<run>" not in result.err


def test_output_dir_beside_resume_is_refused_unless_it_is_the_runs_own_parent(tmp_path, capsys):
    """--output-dir with --resume RUN was dropped without a word (the run stays in its folder), while --set and
    another --config beside --resume are refused."""
    import medqlora

    from .conftest import assert_one_message, run_cli

    run = _run_folder(tmp_path / "runs")
    result = run_cli(capsys, ["--mode", "train", "--resume", str(run), "--output-dir", str(tmp_path / "other"),
                              "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, f"--resume '{run}' continues the run in its own folder, under '{run.parent}', so "
                       f"--output-dir '{tmp_path / 'other'}' would be ignored. Leave out --output-dir")
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="would be ignored. Leave out --output-dir"):
        medqlora.run_mode("train", load_config(None), resume=run, output_dir=tmp_path / "other")
    # the run's own parent folder, written another way, is no other folder: the resume goes on to its checks
    result = run_cli(capsys, ["--mode", "train", "--resume", str(run), "--output-dir", f"{run.parent}/", "--dry-run"])
    assert "--output-dir" not in result.err and "has no checkpoint to continue from" in result.err


def test_a_path_that_is_not_there_is_quoted_so_a_blank_at_its_end_shows(tmp_path, capsys):
    """`model.name: the folder /tmp/x/tiny  does not exist`: printed unquoted, the trailing blank of a copy-paste was
    invisible, and the folder named looked like one that exists."""
    from .conftest import assert_one_message, run_cli

    model = tmp_path / "tiny"
    model.mkdir()
    result = run_cli(capsys, ["--mode", "train", "--dry-run", "--set", f'model.name="{model} "',
                              "--output-dir", str(tmp_path / "out")])
    assert result.code == 2
    assert_one_message(result.err, f"model.name: the folder '{model} ' (ends with a blank; '{model}' exists) does "
                       "not exist.")
    queries = tmp_path / "q.yaml"
    queries.write_text("- What is hypertension?\n")
    with pytest.raises(ConfigError, match=r"generation.queries_file: '.*q.yaml ' \(ends with a blank; '.*q.yaml' "
                                          r"exists\) not found"):
        from medqlora.generate import load_queries

        load_queries(f"{queries} ")
    result = run_cli(capsys, ["--mode", "eval", "--adapter", f" {tmp_path}/nothing", "--dry-run",
                              "--output-dir", str(tmp_path / "out")])
    assert_one_message(result.err, f"--adapter ' {tmp_path}/nothing' (starts with a blank): no such file or folder.")
    result = run_cli(capsys, ["--mode", "train", "--resume", f"{tmp_path} ", "--dry-run"])
    assert_one_message(result.err, f"--resume '{tmp_path} ' (ends with a blank; '{tmp_path}' exists): no such folder.")


class _FullStream:
    """Standard output on a full disk: every write fails as /dev/full's does."""

    encoding = "utf-8"

    def __init__(self, error: int = 28) -> None:
        self.error = error

    def write(self, text: str) -> int:
        import os

        raise (BrokenPipeError if self.error == 32 else OSError)(self.error, os.strerror(self.error))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_plan_written_onto_a_full_disk_ends_in_exit_2_with_a_message(tiny_model_dir, tmp_path):
    """`--dry-run > /dev/full` exited 0 with nothing written and no message: a script saving the plan got success
    and an empty file."""
    import subprocess
    import sys

    from .conftest import ROOT, SCRIPT, assert_one_message, kit_argv

    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=600)
    assert result.returncode == 2
    assert_one_message(result.stderr, "medqlora: error: standard output could not be written (No space left on "
                       "device): what the command printed there is lost (a --dry-run plan, a --prompt answer")
    assert "Exception ignored" not in result.stderr
    reader_gone = subprocess.run(f"{sys.executable} {SCRIPT} {' '.join(argv)} | head -c 1 >/dev/null; "
                                 "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", cwd=ROOT,
                                 capture_output=True, text=True, timeout=600)
    assert reader_gone.returncode in (0, 1) and "medqlora: error" not in reader_gone.stderr  # a broken pipe: quiet
    assert "Traceback" not in reader_gone.stderr


def test_a_one_shot_answer_that_cannot_be_written_ends_in_exit_2(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`--mode chat --prompt ... > answer.txt` on a full disk: the answer was lost and the kit exited 0."""
    import sys

    from .conftest import assert_one_message, kit_argv, run_cli

    monkeypatch.setattr(sys, "stdout", _FullStream())
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "chat", "--adapter", "none",
                                      "--prompt", "What is hypertension?"))
    assert result.code == 2
    assert_one_message(result.err, "standard output could not be written (No space left on device)")
    assert sys.stdout.__class__ is _FullStream  # given back after the command
    monkeypatch.setattr(sys, "stdout", _FullStream(error=32))  # the reader went away: quiet, the command's own code
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "chat", "--adapter", "none",
                                      "--prompt", "What is hypertension?"))
    assert result.code == 0 and "medqlora: error" not in result.err


@pytest.mark.parametrize("manifest, why", [
    ('{"status": "trai', "is not a complete JSON object (16 bytes, starting b'{\"status\": \"trai': cut off while "
                         "it was written?)"),
    ("", "is empty"),
])
def test_a_run_folder_whose_manifest_was_cut_off_is_called_damaged_not_foreign(
        lora_folder, tmp_path, capsys, manifest, why):
    """A manifest.json cut off mid-write made the kit call its own run folder foreign without a word (its results went
    to foreign-<run>-<time>, the run's records set aside)."""
    import shutil

    from .conftest import assert_one_message, run_cli

    run = tmp_path / "out" / "corruptman"
    shutil.copytree(lora_folder, run / "adapter")
    (run / "config.yaml").write_text("training:\n  max_steps: 1\n")
    (run / "manifest.json").write_text(manifest)
    result = run_cli(capsys, ["--mode", "test", "--adapter", str(run), "--output-dir", str(tmp_path / "out")])
    assert result.code == 2
    assert_one_message(result.err, f"'{run / 'manifest.json'}' {why}: it is the record of the run that saved "
                       f"'{run / 'adapter'}' (what it trained, and on what), so the kit cannot tell whether that "
                       "adapter is the run's own. Restore manifest.json from a backup of the run folder")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["corruptman"]  # no foreign-<run> folder
