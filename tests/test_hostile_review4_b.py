"""Hostile inputs to the config, the training options and the data rows: each ends in one message naming what
to change (or is said in the plan) before any model loads."""

import json

import pytest

from medqlora import backends
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import assert_one_message, run_cli


@pytest.mark.parametrize("optimizer, package", [("galore_adamw", "galore_torch"),
                                                ("adamw_anyprecision", "torchdistx"),
                                                ("schedule_free_adamw", "schedulefree"),
                                                ("apollo_adamw", "apollo_torch")])
def test_an_optimizer_without_its_package_is_refused_before_training(optimizer, package, monkeypatch):
    from medqlora import train

    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a))
    cfg = load_config(None, [f"training.optimizer={optimizer}"])
    with pytest.raises(ConfigError, match=f"{optimizer} is built from the {package} package, which is not installed"):
        train.check_optimizer(cfg, backends.detect(cfg))


def test_the_dry_run_refuses_an_optimizer_without_its_package(capsys, monkeypatch):
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "galore_torch" else real_find_spec(name, *a))
    result = run_cli(capsys, ["--dry-run", "--set", "training.optimizer=galore_adamw"])
    assert result.code == 2
    assert_one_message(result.err, "pip install galore-torch")
