"""Hostile round 22: a flow mapping without spaces, a run's name given as --adapter, a credential in a Hub repository
name, a start stopped after the baseline evaluation."""

import json

import pytest

from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import assert_one_message, kit_argv, run_cli


@pytest.mark.parametrize("given", ["--set", "file"])
def test_a_flow_mapping_without_a_space_after_the_colon_says_so(tmp_path, given):
    """--set 'training={max_steps:5}': 'unknown key training.max_steps:5. Did you mean max_steps? YAML reads ~ and
    null as no value ...', with no word of the missing space."""
    if given == "--set":
        args = (None, ["training={max_steps:5}"])
    else:
        config = tmp_path / "c.yaml"
        config.write_text(load_config(None, []).to_yaml().replace("\ntraining:\n", "\ntraining: {max_steps:5}\n"
                                                                   "unused:\n", 1))
        args = (config, [])
    with pytest.raises(ConfigError) as refused:
        load_config(*args)
    said = str(refused.value)
    assert "unknown key 'training.max_steps:5': YAML reads 'max_steps:5' as one key with no value, for want of a " \
           "space after the colon. Write max_steps: 5 (in braces: {max_steps: 5})." in said
    assert "as no value, and the value of" not in said


def test_a_runs_name_given_as_adapter_names_the_run_under_output_dir(tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (out / "base1").mkdir(parents=True)
    (out / "base1" / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # no folder base1 here
    for extra, flag in ((["--mode", "eval", "--adapter", "base1"], "--adapter "),
                        (["--mode", "train"], "training.init_adapter=")):
        sets = {} if flag.startswith("--") else {"training.init_adapter": "base1"}
        result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--dry-run", *extra, **sets))
        assert result.code == 2
        assert_one_message(result.err, f"base1: no such file or folder here; a run of that name is under output.dir: "
                                       f"{out / 'base1'}. Give its path: {flag}{out / 'base1'}")


def test_a_hub_repository_named_with_a_credential_is_refused(monkeypatch):
    """export.push_to_hub=user/repo_$HF_TOKEN was planned (masked on the screen) and would have sent the token to
    the Hub as a repository's public name."""
    token = "hf_Qw7Zt3Lp9Xv2Bn8Kd4Rs"
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"export.push_to_hub=user/repo_{token}"])
    assert "holds the value of HF_TOKEN: a repository's name is public on the Hub" in str(refused.value)
    assert token not in str(refused.value)
    assert load_config(None, ["export.push_to_hub=user/repo"]).export.push_to_hub == "user/repo"


def test_a_start_stopped_after_the_baseline_evaluation_says_how_to_train_again(tiny_model_dir, tmp_path, capsys,
                                                                             monkeypatch):
    """SIGTERM after the baseline evaluation, before the first step: the manifest said interrupted with no stage, and
    neither the interrupt nor the same command run again said the folder was left with nothing trained."""
    from medqlora.stages import TrainingStages

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "full", **{"output.run_name": "sigeval"})
    with monkeypatch.context() as patched:
        patched.setattr(TrainingStages, "record_training_data", stopped)
        first = run_cli(capsys, argv)
    run = tmp_path / "out" / "sigeval"
    assert first.code != 0 and json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert f"The run folder {run} keeps the records of this start, with nothing trained" in first.err
    again = run_cli(capsys, argv)
    assert again.code == 2
    assert f"The run folder {run} already exists: it holds the records of an earlier start of this run" in again.err
    assert f"Remove it (rm -r {run}) to train under this name" in again.err
