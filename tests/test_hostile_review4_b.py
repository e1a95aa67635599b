"""Hostile inputs to the config, the training options and the data rows: each ends in one message naming what
to change (or is said in the plan) before any model loads."""

import json

import pytest

from medqlora import backends, plan
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import assert_one_message, kit_argv, run_cli


@pytest.mark.parametrize("optimizer, package", [("galore_adamw", "galore_torch"),
                                                ("adamw_anyprecision", "torchdistx"),
                                                ("schedule_free_adamw", "schedulefree"),
                                                ("apollo_adamw", "apollo_torch")])
def test_an_optimizer_without_its_package_is_refused_before_training(optimizer, package, monkeypatch):
    from medqlora import optimizers

    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a))
    cfg = load_config(None, [f"training.optimizer={optimizer}"])
    with pytest.raises(ConfigError, match=f"{optimizer} is built from the {package} package, which is not installed"):
        optimizers.check_optimizer(cfg, backends.detect(cfg))


def test_the_dry_run_refuses_an_optimizer_without_its_package(capsys, monkeypatch):
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "galore_torch" else real_find_spec(name, *a))
    result = run_cli(capsys, ["--dry-run", "--set", "training.optimizer=galore_adamw"])
    assert result.code == 2
    assert_one_message(result.err, "pip install galore-torch")


def test_a_constant_schedule_with_a_warmup_trains_with_constant_with_warmup_and_says_so():
    cfg = load_config(None, ["training.lr_scheduler=constant", "training.warmup_steps=2", "training.warmup_ratio=null",
                             "training.max_steps=4"])
    assert cfg.training.scheduler() == "constant_with_warmup" and cfg.training.warmup() == 2
    assert "has no warm-up" in cfg.training.scheduler_note()
    planned = plan._training_section(cfg, backends.detect(cfg), "adamw_torch")  # the dry-run's training section
    assert planned["lr_scheduler"].startswith("constant_with_warmup (lr_scheduler constant with a warm-up (2 steps)")


def test_a_constant_schedule_without_a_warmup_stays_constant():
    cfg = load_config(None, ["training.lr_scheduler=constant", "training.warmup_ratio=0"])
    assert cfg.training.scheduler() == "constant" and cfg.training.scheduler_note() is None


def test_the_trainer_gets_the_schedule_it_is_told(tmp_path):
    from medqlora import train

    cfg = load_config(None, ["training.lr_scheduler=constant", "training.warmup_steps=2", "training.warmup_ratio=null"])
    run = type("Run", (), {"path": tmp_path})()  # sft_config reads the run folder's path only
    args = train.sft_config(cfg, backends.detect(cfg), run)
    assert args.lr_scheduler_type == "constant_with_warmup" and args.warmup_steps == 2


def test_a_multiple_choice_template_without_its_options_is_refused():
    with pytest.raises(ConfigError, match=r"prompt_template': Value error, has no \{options\} placeholder, which the "
                                          r"multiple_choice format needs: the lettered options would never reach"):
        load_config(None, ["data.datasets=[{source: x.jsonl, format: multiple_choice, prompt_template: 'Q: {question}'}]"])
    cfg = load_config(None, ["data.datasets=[{source: x.jsonl, format: multiple_choice, "
                             "prompt_template: 'Q: {question} {options}'}]"])
    assert cfg.data.datasets[0].prompt_template == "Q: {question} {options}"


def test_a_pubmedqa_template_may_leave_out_the_abstract():  # the question-only setups of published runs
    cfg = load_config("llama3-8b-pubmedqa")
    assert "{context}" not in cfg.data.datasets[0].prompt_template


def _instruction_file(tmp_path, rows, name="ins.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("answer", ["\u200b\u200b", "\ufeff \u2060", "\u00ad", "\u3164"])
def test_an_answer_of_invisible_characters_is_refused_with_its_row(tmp_path, answer):
    from medqlora import data
    from medqlora.errors import DataError

    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(3)]
    rows.append({"instruction": "question 3", "output": answer})
    spec = data.DatasetSpec(source=str(_instruction_file(tmp_path, rows)), format="instruction")
    with pytest.raises(DataError, match=r"row 4.*field 'output' is only invisible characters"):
        data.format_rows(spec, data.load_rows(spec))


def test_an_answer_with_a_zero_width_space_among_its_words_is_kept(tmp_path):
    from medqlora import data

    spec = data.DatasetSpec(source=str(_instruction_file(tmp_path, [{"instruction": "q", "output": "a\u200bb"}])),
                            format="instruction")
    assert data.format_rows(spec, data.load_rows(spec))[0].response == "a\u200bb"


def test_a_misspelled_columns_key_is_named_with_the_keys_its_format_reads():
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["data.datasets=[{source: qa.csv, format: instruction, columns: {instrution: q, output: a}}]"])
    message = str(refused.value)
    assert "'data.datasets.0.columns'" in message and "unknown key 'instrution'" in message
    assert "reads instruction, question, input, output, answer, response. Did you mean 'instruction'?" in message


def test_the_prompt_and_the_answer_from_one_column_are_refused():
    for columns in ("{instruction: q, output: q}", "{output: instruction}"):
        with pytest.raises(ConfigError, match="'instruction' and 'output' would both be read from the column"):
            load_config(None, [f"data.datasets=[{{source: qa.csv, format: instruction, columns: {columns}}}]"])
    with pytest.raises(ConfigError, match=r"benchmarks.0.columns': Value error, 'question' and 'options'"):
        load_config(None, ["eval.benchmarks=[{name: mc, kind: multiple_choice, source: mc.jsonl, "
                           "columns: {question: q, options: q}}]"])
    ok = load_config(None, ["data.datasets=[{source: qa.csv, format: instruction, columns: {instruction: q, "
                            "output: a}}]"])
    assert ok.data.datasets[0].columns == {"instruction": "q", "output": "a"}


@pytest.mark.parametrize("setting, kind", [("output.run_name=10:30", "a number"),
                                           ("data.datasets.0.prompt_template=Q: {question}", "a mapping")])
def test_text_that_yaml_reads_as_something_else_is_refused_with_how_to_quote_it(setting, kind):
    key, _, value = setting.partition("=")
    with pytest.raises(ConfigError) as refused:
        load_config(None, [setting])
    assert f"YAML reads {value} as {kind}; to give it as text, quote it: --set '{key}=\"{value}\"'." in str(refused.value)
    assert getattr(load_config(None, [f'{key}="{value}"']).output if key.startswith("output")
                   else load_config(None, [f'{key}="{value}"']).data.datasets[0], key.rsplit(".", 1)[1]) == value


def test_text_that_yaml_reads_as_a_number_in_a_file_says_to_quote_it(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  datasets:\n    - {source: x.jsonl, format: pubmedqa}\noutput:\n  run_name: 10:30\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError, match="c.yaml:5: 'output.run_name'.* YAML read the value as a number; if it is "
                                          "meant as text, put it in quotes"):
        load_config(str(config))


@pytest.mark.parametrize("name", ["ins.jsonl", "qa.csv"])
def test_a_data_file_given_as_the_config_is_named_a_data_file(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": "a2"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is a data file \(\.(jsonl|csv)\), not a config.*goes in data.datasets"):
        load_config(str(path))


def test_a_json_list_of_rows_given_as_the_config_is_named_a_data_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"instruction": "q", "output": "a"}]', encoding="utf-8")
    with pytest.raises(ConfigError, match="a list of rows is a data file: it goes in data.datasets"):
        load_config(str(path))


def test_a_warmup_longer_than_an_epochs_only_run_is_refused_once_its_steps_are_known():
    from medqlora import train

    cfg = load_config(None, ["training.max_steps=-1", "training.num_epochs=1", "training.warmup_steps=10",
                             "training.warmup_ratio=null", "training.micro_batch_size=2",
                             "training.gradient_accumulation_steps=4"])
    with pytest.raises(ConfigError, match=r"warmup_steps \(10\) is not below the 2 optimizer steps of this run \(16 "
                                          r"examples, 1 epochs, batch 2 x 4\)"):
        train.check_warmup(cfg, 16)
    train.check_warmup(cfg, 200)  # 25 steps: the warm-up fits


@pytest.mark.parametrize("mode", ["--dry-run", "--mode=train"])
def test_the_dry_run_and_the_run_check_the_warmup_against_the_planned_steps(tiny_model_dir, tmp_path, capsys, mode, monkeypatch):
    argv = kit_argv(tiny_model_dir, tmp_path / "out", mode, **{"training.max_steps": "-1", "training.num_epochs": "1",
                                                                "training.warmup_steps": "50",
                                                                "training.warmup_ratio": "null"})
    monkeypatch.setattr(backends, "load_for_training", lambda *a, **k: pytest.fail("the model loaded"))
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "training.warmup_steps (50) is not below the 4 optimizer steps of this run (16 examples")


@pytest.mark.parametrize("args", [("--dry-run", "--mode", "full"), ("--mode", "full"),
                                  ("--dry-run", "--mode", "eval", "--adapter", "none"),
                                  ("--mode", "eval", "--adapter", "none")])
def test_an_eval_max_length_no_prompt_fits_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                              monkeypatch, args):
    monkeypatch.setattr(backends, "load_for_training", lambda *a, **k: pytest.fail("the model loaded"))
    monkeypatch.setattr(backends, "load_for_inference", lambda *a, **k: pytest.fail("the model loaded"))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *args, **{"eval.max_length": "9"}))
    assert result.code == 2
    assert_one_message(result.err, "more than the 8 evaluation allows (eval.max_length 9")


def test_an_eval_max_length_that_fits_is_planned(tiny_model_dir, tmp_path, capsys):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full",
                                      **{"eval.max_length": "4000"}))
    assert result.code == 0, result.err
