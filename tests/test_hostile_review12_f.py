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
