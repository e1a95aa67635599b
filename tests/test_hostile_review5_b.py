"""Inputs of a plausible wrong shape (a wrapped JSON file, a header row, a second YAML document, a look-alike
letter in a hub id, ...): each is refused with a message that names what is wrong with it and what to change."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from medqlora import harness_mmlu
from medqlora.config import DatasetSpec, load_config
from medqlora.data import format_rows, load_rows
from medqlora.errors import ConfigError, DataError

from .conftest import ROOT, assert_one_message, kit_argv, run_cli

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason='lm-evaluation-harness is the eval extra: pip install "medqlora[eval]"')


def test_a_json_file_with_its_records_under_one_key_names_the_key_and_how_to_unwrap_it(tmp_path):
    wrapped = tmp_path / "hub.json"
    wrapped.write_text(json.dumps({"data": [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]}))
    with pytest.raises(DataError, match=r"the records are a list under the key 'data' \(3 records\).*"
                                        r"jq '\.\[\"data\"\]' hub\.json > rows\.json"):
        load_rows(DatasetSpec(source=str(wrapped), format="instruction"))


def test_an_empty_message_list_in_a_preference_row_is_called_empty(tmp_path):
    rows = tmp_path / "pref.jsonl"
    rows.write_text(json.dumps({"prompt": "Dose?", "chosen": [], "rejected": "no idea"}) + "\n")
    spec = DatasetSpec(source=str(rows), format="preference")
    with pytest.raises(DataError, match="row 1: field 'chosen' is an empty list of messages: give the reply as text"):
        format_rows(spec, load_rows(spec))


def mmlu_rows(folder: Path, *rows: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    with (folder / "anatomy_test.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return folder


QUESTION = ["What bone is in the arm?", "humerus", "femur", "tibia", "fibula"]


def test_an_mmlu_header_row_is_named_a_header_mmlu_files_do_not_have(tmp_path):
    folder = mmlu_rows(tmp_path / "mmlu", ["question", "A", "B", "C", "D", "answer"], [*QUESTION, "A"])
    with pytest.raises(DataError, match=r"anatomy_test\.csv:1: the answer column \(the sixth\) holds 'answer', not a "
                                        r"letter A-D: is this line a header\? MMLU's CSV files have no header row"):
        harness_mmlu.subject_rows(folder, "anatomy")


def test_an_mmlu_answer_that_is_not_one_letter_a_to_d_is_named(tmp_path):
    for answer in ("AB", "E", ""):
        folder = mmlu_rows(tmp_path / "mmlu", [*QUESTION, "A"], [*QUESTION, answer])
        with pytest.raises(DataError, match=f"anatomy_test.csv:2: the answer column \\(the sixth\\) holds '{answer}'; "
                                            "expected one letter A, B, C or D"):
            harness_mmlu.subject_rows(folder, "anatomy")
    assert harness_mmlu.subject_rows(mmlu_rows(tmp_path / "mmlu", [*QUESTION, " C "]), "anatomy")[0]["answer"] == 2


def test_an_mmlu_file_that_is_not_a_regular_file_is_said_to_be_one(tmp_path):
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "anatomy_test.csv").symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"anatomy_test\.csv is not a regular file \(it links to /dev/zero\)"):
        harness_mmlu.subject_rows(folder, "anatomy")
    (folder / "anatomy_test.csv").unlink()
    (folder / "anatomy_test.csv").mkdir()
    with pytest.raises(DataError, match=r"anatomy_test\.csv is not a regular file\. Put MMLU's anatomy_test\.csv"):
        harness_mmlu.subject_rows(folder, "anatomy")


def test_an_mmlu_file_that_is_not_utf8_or_not_csv_is_named_not_a_crash(tmp_path):
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for data, said in ((b"Qu\xe9?,a,b,c,d,A\n", r"anatomy_test\.csv: not UTF-8 text \(byte 2\)\. Save it as UTF-8"),
                       (b"Q,a,b,c,d,A\n\"" + b"x" * 1_000_001 + b"\",a,b,c,d,A\n",
                        r"anatomy_test\.csv:2: not readable as CSV \(field larger than field limit")):
        (folder / "anatomy_test.csv").write_bytes(data)
        with pytest.raises(DataError, match=said):
            harness_mmlu.subject_rows(folder, "anatomy")


@needs_lm_eval
def test_an_lm_eval_medmcqa_file_of_another_layout_names_the_layout_it_needs(tiny_model_dir, tmp_path, capsys):
    pubmedqa_rows = tmp_path / "pq.jsonl"
    pubmedqa_rows.write_text(json.dumps({"question": "Q?", "context": {"x": 1}, "final_decision": "yes"}) + "\n")
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[medmcqa]",
                       "eval.lm_eval.medmcqa": str(pubmedqa_rows)})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "row 1: has no column 'options'; its columns are ['context', 'final_decision', "
                       "'question']. eval.lm_eval.medmcqa reads a JSONL file with one question a line: question, "
                       "options {A..D}, answer_idx (the letter), as in data/medmcqa/heldout.jsonl")
    assert "columns:" not in result.err  # the lm-eval settings have no column mapping


@pytest.mark.parametrize("repo_id, said", [
    ("me/a--b", "it holds '--', which the hub forbids in ids ('--' and '..')"),
    ("me/a..b", "it holds '..', which the hub forbids in ids"),
    ("me/name.git", "it ends in '.git', which the hub forbids in ids: drop it"),
    ("m\u0435/model", ("it holds '\\u0435' (U+0435), a character outside ASCII that may look like a Latin one; "
                       "ids use ASCII letters, digits, '-', '_' and '.' only")),
    ("me/my model", "it holds ' '; ids use ASCII letters"),
    ("me/model-", "the owner and the name may not start or end with '-' or '.'"),
    ("me/" + "x" * 97, "the owner and the name are at most 96 characters each"),
    ("model", "two non-empty parts joined by one '/'"),
])
def test_a_hub_repository_id_names_the_rule_it_breaks(repo_id, said):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"export.push_to_hub={repo_id}"])
    assert f"must be a hub repository id owner/name: {said}" in str(refused.value)


def test_a_valid_hub_repository_id_is_accepted():
    assert load_config(None, ["export.push_to_hub=my-lab/smollm2_pubmedqa-lora.v2"]).export.push_to_hub == \
        "my-lab/smollm2_pubmedqa-lora.v2"


def test_a_config_file_of_two_yaml_documents_is_told_to_keep_one(tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text("model:\n  name: x\n---\ntraining:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"two\.yaml:3: a second YAML document starts here, at a '---' line; the kit "
                                          "reads one document per file. Keep one"):
        load_config(config)
    config.write_text("---\n" + (ROOT / "config" / "training_config.yaml").read_text())
    assert load_config(config).training.max_steps  # one document after a leading '---' is read


def test_a_set_into_a_section_the_config_file_lacks_shows_what_is_missing(tmp_path):
    config = tmp_path / "no_data.yaml"
    config.write_text("base: &b\n  max_steps: 3\ntraining:\n  <<: *b\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config, ["data.datasets.0.max_samples=16"])
    message = str(refused.value)
    assert "'data.datasets' is required" in message
    assert "no_data.yaml:1: unknown key 'base'" in message
    assert "PydanticUndefined" not in message


def test_a_required_section_the_config_file_lacks_can_be_given_with_set(tmp_path):
    config = tmp_path / "no_data.yaml"
    config.write_text("training:\n  max_steps: 3\n")
    cfg = load_config(config, ["data.datasets=[{source: x.jsonl, format: instruction}]", "data.val_ratio=0.1"])
    assert cfg.data.datasets[0].source == "x.jsonl"
    assert cfg.data.val_ratio == 0.1
