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
