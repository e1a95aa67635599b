"""Hostile and unlucky inputs on the data and config side: dataset options another format reads, a PubMedQA CV
fold that holds out nothing, reasoning rows with an empty chain of thought, rows with two columns for one field,
a data folder listed beside a file inside it, method settings the chosen method does not use, and LoRA target
modules the local model lacks (at --dry-run)."""

import json
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _instruction_rows(n: int = 12) -> list[dict]:
    return [{"instruction": f"What is the usual adult dose of drug number {i}?", "output": f"{i} mg daily."}
            for i in range(n)]


def _dry_run(capsys, model: Path, tmp_path: Path, **settings: str):
    return run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run", "--mode", "train", **settings))


@pytest.mark.parametrize("option,value,fragment", [
    ("cot_style", "tags", "cot_style: tags is an option of the medical_o1 format"),
    ("long_answer", "false", "long_answer: false is an option of the pubmedqa format"),
    ("cv_fold", "5", "cv_fold 5 holds out PubMedQA's official cross-validation fold by pubid"),
])
def test_an_option_of_another_format_is_refused_not_ignored(tiny_model_dir, tmp_path, capsys, option, value,
                                                            fragment):
    data = _jsonl(tmp_path / "ins.jsonl", _instruction_rows())
    base = {"data.datasets.0.source": str(data), "data.datasets.0.format": "instruction"}
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **base, **{f"data.datasets.0.{option}": value})
    assert refused.code == 2
    assert_one_message(refused.err, fragment)
    assert "this dataset is instruction" in refused.err
    # the defaults the kit's own config writes on its pubmedqa entry are kept when the format is switched
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **base, **{"data.datasets.0.long_answer": "true",
                                                                 "data.datasets.0.cot_style": "huatuo"})
    assert ok.code == 0, ok.err


def test_a_cv_fold_that_holds_out_no_row_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    rows = [{"question": f"Does drug {i} lower the blood pressure of adults?", "context": "An abstract.",
             "final_decision": "yes", "long_answer": "It does."} for i in range(12)]  # no pubid: no fold holds them
    data = _jsonl(tmp_path / "pq.jsonl", rows)
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": str(data),
                                                             "data.datasets.0.format": "pubmedqa",
                                                             "data.datasets.0.cv_fold": "5"})
    assert refused.code == 2
    assert_one_message(refused.err, "none of its 12 rows is")
    assert "no validation set" in refused.err


@pytest.mark.parametrize("cot", ["", "  \n", "\u200b"])
def test_a_reasoning_row_with_an_empty_chain_of_thought_is_refused(tiny_model_dir, tmp_path, capsys, cot):
    rows = [{"Question": f"Which drug treats condition {i}?", "Complex_CoT": "Think it through." if i else cot,
             "Response": f"Drug {i}."} for i in range(12)]
    data = _jsonl(tmp_path / "o1.jsonl", rows)
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": str(data),
                                                             "data.datasets.0.format": "medical_o1"})
    assert refused.code == 2
    assert_one_message(refused.err, "o1.jsonl row 1: field 'Complex_CoT' is")
    assert "expected the reasoning" in refused.err and "format: instruction" in refused.err
    # the advised way to train on the responses alone is accepted
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": str(data),
                                                        "data.datasets.0.format": "instruction",
                                                        "data.datasets.0.columns": "{instruction: Question, "
                                                                                   "output: Response}"})
    assert ok.code == 0, ok.err


@pytest.mark.parametrize("fmt,extra,field_name,other", [
    ("instruction", {"question": "What is the dose?"}, "instruction", "question"),
    ("instruction", {"answer": "Another answer."}, "output", "answer"),
])
def test_two_different_columns_for_one_field_are_refused_until_one_is_chosen(tiny_model_dir, tmp_path, capsys, fmt,
                                                                               extra, field_name, other):
    rows = [{**row, **extra} for row in _instruction_rows()]
    data = _jsonl(tmp_path / "both.jsonl", rows)
    base = {"data.datasets.0.source": str(data), "data.datasets.0.format": fmt}
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **base)
    assert refused.code == 2
    assert_one_message(refused.err, f"both.jsonl row 1: columns '{field_name}' and '{other}' can each be")
    assert f"columns: {{{field_name}: {other}}}" in refused.err
    for choice in (other, field_name):  # either choice, written as the message says, is read
        ok = _dry_run(capsys, tiny_model_dir, tmp_path, **base,
                      **{"data.datasets.0.columns": f"{{{field_name}: {choice}}}"})
        assert ok.code == 0, ok.err


def test_two_columns_for_one_field_holding_the_same_text_are_read(tiny_model_dir, tmp_path, capsys):
    rows = [{**row, "answer": f" {row['output']} "} for row in _instruction_rows()]
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": str(_jsonl(tmp_path / "s.jsonl", rows)),
                                                        "data.datasets.0.format": "instruction"})
    assert ok.code == 0, ok.err


def test_an_answer_and_a_different_solution_are_refused_for_grpo():
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.formats import FORMATS

    spec = DatasetSpec(source="x.jsonl", format="prompt_answer")
    with pytest.raises(DataError, match="columns 'answer' and 'solution' can each be"):
        FORMATS["prompt_answer"]({"prompt": "What is 2+2?", "answer": "4", "solution": "5"}, spec)
    assert FORMATS["prompt_answer"]({"prompt": "What is 2+2?", "answer": 4, "solution": "4"}, spec).response == "4"
    chosen = DatasetSpec(source="x.jsonl", format="prompt_answer", columns={"answer": "solution"})
    assert FORMATS["prompt_answer"]({"prompt": "What is 2+2?", "answer": "4", "solution": "5"}, chosen).response == "5"


@pytest.mark.parametrize("folder_first", [True, False])
def test_a_data_folder_and_a_file_inside_it_both_listed_are_refused(tiny_model_dir, tmp_path, capsys, folder_first):
    folder = tmp_path / "data"
    folder.mkdir()
    inside = _jsonl(folder / "ins.jsonl", _instruction_rows())
    entries = [f"{{source: {folder}, format: instruction}}", f"{{source: {inside}, format: instruction}}"]
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{
        "data.datasets": "[" + ", ".join(entries if folder_first else entries[::-1]) + "]"})
    assert refused.code == 2
    assert_one_message(refused.err, f"data.datasets.0 and data.datasets.1 both read {inside} the same way (a data "
                                    "folder and a file inside it)")
    # the file under another prompt is another dataset, as for the same file listed twice
    other = f"{{source: {inside}, format: instruction, prompt_template: 'Question: {{question}}'}}"
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets": f"[{entries[0]}, {other}]"})
    assert ok.code == 0, ok.err


def test_method_settings_the_chosen_method_does_not_use_are_said(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from medqlora.recipe import Recipe

    data = _jsonl(tmp_path / "ins.jsonl", _instruction_rows())
    settings = {"data.datasets.0.source": str(data), "data.datasets.0.format": "instruction",
                "grpo.num_generations": "8", "grpo.use_vllm": "true", "preference.beta": "0.5"}
    planned = _dry_run(capsys, tiny_model_dir, tmp_path, **settings)
    assert planned.code == 0, planned.err
    unused = json.loads(planned.out)["unused"]
    assert unused[0].startswith("grpo.num_generations and grpo.use_vllm are settings of training.method: grpo, and "
                                "this run trains with sft: they are unused")
    assert unused[1].startswith("preference.beta is a setting of training.method: dpo or orpo")
    # the run says it too, before it trains
    monkeypatch.setattr(Recipe, "train_mode", lambda self: None)
    ran = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **settings))
    assert ran.code == 0, ran.err
    assert "warning: grpo.num_generations and grpo.use_vllm are settings of training.method: grpo" in ran.out
    # settings left at their defaults, or used by the method, are not named
    quiet = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": str(data),
                                                           "data.datasets.0.format": "instruction",
                                                           "grpo.num_generations": "4"})
    assert quiet.code == 0 and "unused" not in json.loads(quiet.out)


def test_lora_target_modules_the_local_model_lacks_are_refused_at_dry_run(tiny_model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    from medqlora.backends import lora

    run_check, models = lora.check_target_modules, []

    def recorded(cfg, model):
        models.append(model)
        run_check(cfg, model)

    monkeypatch.setattr(lora, "check_target_modules", recorded)
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{"lora.target_modules": "[q_proj, query]"})
    assert refused.code == 2
    assert_one_message(refused.err, f"lora.target_modules: ['query'] do not exist in {tiny_model_dir}. Its linear "
                                    "layers include: ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj'")
    assert models and next(models[0].parameters()).device.type == "meta"  # the run's check, on the meta model
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **{"lora.target_modules": "[q_proj, v_proj]"})
    assert ok.code == 0, ok.err


def test_the_training_file_given_as_the_validation_set_too_is_refused(tiny_model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "ins.jsonl", _instruction_rows())
    trained = f"{{source: {data}, format: instruction}}"
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{
        "data.datasets": f"[{trained}, {{source: {tmp_path}/./ins.jsonl, format: instruction, use_for: validation}}]"})
    assert refused.code == 2
    assert_one_message(refused.err, f"data.datasets.1 (use_for: validation) reads {data}, which data.datasets.0 "
                                    "trains on")
    assert "val_first_n" in refused.err
    held = _jsonl(tmp_path / "held.jsonl", _instruction_rows(14)[12:])
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **{
        "data.datasets": f"[{trained}, {{source: {held}, format: instruction, use_for: validation}}]"})
    assert ok.code == 0, ok.err


@pytest.mark.parametrize("source,fragment", [
    ("someone/medds/extra", "nor a hub dataset id (name or owner/name)"),
    ("someone/medds@main", "a revision such as @main cannot be pinned"),
    ("hf://datasets/someone/medds", "nor a hub dataset id"),
])
def test_a_dataset_source_that_is_neither_a_path_nor_a_hub_id_is_refused_at_dry_run(tiny_model_dir, tmp_path,
                                                                                    capsys, source, fragment):
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets.0.source": source,
                                                             "data.datasets.0.format": "instruction"})
    assert refused.code == 2
    assert_one_message(refused.err, f"Dataset '{source}' is neither a local file or folder")
    assert fragment in refused.err
    from medqlora.config import DatasetSpec
    from medqlora.data.sources import load_rows
    from medqlora.errors import DataError

    with pytest.raises(DataError, match="nor a hub dataset id"):  # the run refuses it before any download
        load_rows(DatasetSpec(source=source, format="instruction"))


def test_logging_steps_beyond_the_run_are_said_by_the_plan_and_the_run(tiny_model_dir, tmp_path, capsys,
                                                                       monkeypatch):
    from medqlora.errors import ConfigError
    from medqlora.stages import TrainingStages

    data = _jsonl(tmp_path / "ins.jsonl", _instruction_rows())
    settings = {"data.datasets.0.source": str(data), "data.datasets.0.format": "instruction",
                "training.logging_steps": "1000"}
    planned = _dry_run(capsys, tiny_model_dir, tmp_path, **settings)
    assert planned.code == 0, planned.err
    assert json.loads(planned.out)["logging"].startswith("training.logging_steps (1000) is beyond this run's 4 "
                                                         "optimizer steps: no training loss will be logged")

    def stop(self):  # right after the data is prepared: the model is not needed to show the warning
        raise ConfigError("stopped before the model loads")

    monkeypatch.setattr(TrainingStages, "fit_memory", stop)
    ran = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **settings))
    assert "warning: training.logging_steps (1000) is beyond this run's 4 optimizer steps" in ran.out
    quiet = _dry_run(capsys, tiny_model_dir, tmp_path, **{**settings, "training.logging_steps": "4"})
    assert quiet.code == 0 and "logging" not in json.loads(quiet.out)


def test_an_evaluation_with_nothing_to_score_is_refused(tiny_model_dir, tmp_path, capsys):
    for dry in (["--dry-run"], []):  # the plan and the run, before the model loads
        refused = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry, "--mode", "eval", "--adapter",
                                           "none", **{"eval.benchmarks": "[]"}))
        assert refused.code == 2
        assert_one_message(refused.err, "--mode eval has nothing to score: eval.benchmarks is empty and "
                                        "eval.harness is not set")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_auto_grpo_format_follows_an_exported_adapter_and_earlier_grpo_stages(tmp_path):
    from medqlora import grpo
    from medqlora.config import load_config

    def run_folder(name: str, cfg) -> Path:
        (tmp_path / name / "adapter").mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text(cfg.to_yaml())
        return tmp_path / name

    def grpo_from(adapter: Path):
        return load_config(None, ["training.method=grpo", "data.datasets.0.format=multiple_choice",
                                  "data.datasets.0.source=data/medmcqa/train.jsonl", "grpo.num_generations=2",
                                  "training.micro_batch_size=2", f"training.init_adapter={adapter}"])

    sft = run_folder("o1t", load_config(None, ["data.datasets=[{source: x.jsonl, format: medical_o1, "
                                                "cot_style: tags}]"]))
    (sft / "export" / "adapter").mkdir(parents=True)
    assert grpo.format_style(grpo_from(sft / "adapter")) == "tags"
    assert grpo.format_style(grpo_from(sft / "export" / "adapter")) == "tags"  # the exported copy: the same run
    second = run_folder("g1", grpo_from(sft / "adapter"))  # a GRPO stage on multiple-choice rows, format auto
    assert grpo.format_style(grpo_from(second / "adapter")) == "tags"  # a third stage keeps what the first taught
    plain = run_folder("plain", load_config(None, ["data.datasets.0.format=instruction",
                                                   "data.datasets.0.source=x.jsonl"]))
    assert grpo.format_style(grpo_from(plain / "adapter")) == "answer"  # no stage taught a reasoning format
