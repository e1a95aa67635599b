"""Hostile and unlucky inputs of the Python API and of a few settings: path objects, a dict or bytes where the kit
wants its config or text, ``baseline=None``, a config changed by assignment into one the command line refuses, an
invisible --prompt, a mistyped union setting, the plan of --mode train and the loss of one logged step."""

import io
import json
from pathlib import Path

import pytest

import medqlora
from medqlora.config import load_config
from medqlora.errors import ConfigError
from medqlora.run_files import Files

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    return load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out"))


def test_run_mode_takes_path_objects_where_it_takes_paths(cfg, tmp_path):
    """A pathlib.Path (a Run's own .path / .adapter) is a path like its text: checked, never a TypeError."""
    with pytest.raises(ConfigError, match="--resume .*: no such folder"):
        medqlora.run_mode("train", cfg, resume=tmp_path / "no-such-run")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="--output-dir .*notes.txt: is a file"):
        medqlora.run_mode("chat", cfg, adapter=tmp_path / "run", output_dir=a_file, prompt="hi")
    from medqlora.commands import python_options

    options = python_options(output_dir=tmp_path, adapter=tmp_path / "run", resume=Path("r"))
    assert (options.output_dir, options.adapter, options.resume) == (str(tmp_path), str(tmp_path / "run"), "r")
    with pytest.raises(ConfigError, match=r"run_mode: adapter=3 \(int\): give a path, as a str or a pathlib.Path"):
        medqlora.run_mode("chat", cfg, adapter=3, prompt="hi")


def test_run_mode_refuses_a_dict_config_and_a_bytes_prompt_with_one_message(cfg):
    with pytest.raises(ConfigError, match="run_mode: cfg is dict, not the kit's config: build it with "
                                          r"medqlora.config.load_config"):
        medqlora.run_mode("chat", {"model": {}}, adapter="none", prompt="hi")
    with pytest.raises(ConfigError, match=r"run_mode: prompt is bytes, not text.*prompt.decode\(\)"):
        medqlora.run_mode("chat", cfg, adapter="none", prompt=b"hi")


def test_run_mode_reads_baseline_none_as_not_given(cfg):
    """baseline=None is the keyword left at its meaning, not --no-baseline: the next problem is the one said."""
    with pytest.raises(ConfigError, match="--prompt is empty"):
        medqlora.run_mode("chat", cfg, adapter="none", prompt=" ", baseline=None)
    with pytest.raises(ConfigError, match=r"run_mode: baseline='no' \(str\): give True .* or False"):
        medqlora.run_mode("eval", cfg, adapter="none", baseline="no")


@pytest.mark.parametrize(("section", "name", "value", "said"), [
    ("training", "eval_steps", 2, "training.eval_steps needs a validation set"),
    ("training", "method", "dpo", "training.method: dpo learns from prompt / chosen / rejected rows"),
])
def test_run_mode_checks_a_config_changed_by_assignment_as_load_config_does(cfg, tmp_path, section, name, value,
                                                                            said):
    """An assignment is checked within its section only; run_mode checks the whole config again before any work,
    so it never trains what the command line refuses, nor leaves a run folder whose config.yaml the kit refuses."""
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError, match=f"the config given to run_mode: {said}"):
        medqlora.run_mode("train", cfg)
    assert not (tmp_path / "out").exists()  # no run folder


def test_run_mode_keeps_an_unchanged_config_as_load_config_made_it(cfg):
    from medqlora.commands import python_config

    checked = python_config(cfg)
    assert checked == cfg
    assert checked.export.model_fields_set == cfg.export.model_fields_set  # what the run says of given settings


def test_a_prompt_of_zero_width_characters_is_as_empty_as_a_blank_one(tiny_model_dir, tmp_path, capsys):
    for dry_run in ((), ("--dry-run",)):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry_run, "--mode", "chat",
                                          "--adapter", "none", "--prompt", "\u200b\u200b\ufeff"))
        assert result.code == 2
        assert_one_message(result.err, "--prompt is empty: give the question to answer.")


def test_a_chat_line_of_zero_width_characters_asks_nothing():
    from medqlora.chat import _command

    out, err = io.StringIO(), io.StringIO()
    assert _command("\u200b\u2060", None, out, err) == "next"
    assert out.getvalue() == err.getvalue() == ""


@pytest.mark.parametrize(("setting", "choices"), [("generation.static_cache", "true, false or auto"),
                                                  ("training.gradient_checkpointing", "true, false or unsloth")])
def test_a_wrong_value_of_a_union_setting_is_one_readable_line(setting, choices):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"{setting}=Auto"])
    message = str(raised.value)
    assert f"'{setting}': expected {choices} (got 'Auto')." in message
    assert message.count("\n  - ") == 1 and ".bool" not in message and "literal[" not in message


def test_the_plan_of_train_lists_no_sample_answers_and_full_does(tiny_model_dir, tmp_path, capsys):
    plans = {}
    for mode in ("train", "full"):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", mode))
        assert result.code == 0, result.err
        plans[mode] = json.loads(result.out)
    assert Files.SAMPLES not in plans["train"]["outputs"]
    assert "sample answers" not in plans["train"]["processes"]["ranks"][0]["writes"]
    assert Files.SAMPLES in plans["full"]["outputs"]
    assert plans["full"]["processes"]["ranks"][0]["writes"].endswith("sample answers")


def test_one_logged_step_says_it_shows_no_trend():
    from medqlora.report import loss_trend

    line = loss_trend([{"step": 3, "loss": 10.8906, "learning_rate": 1e-4}, {"train_loss": 10.88, "step": 4}])
    assert line.startswith("10.8906 at step 3, the only logged step: no trend")
    assert "->" not in line
    assert loss_trend([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]).startswith("2.0000 -> 1.0000")
