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
