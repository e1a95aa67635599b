"""Hostile and unlucky inputs of the fourteenth round: data columns whose names differ from the format's by blanks
or case, an invisible sample query, a YAML null inside a list or mapping given with --set, and a JSON array in a
.jsonl file (docs/errors.md ZN rows).

Findings handled here: 144, 145, 175, 182, 183, 194."""

import json
from pathlib import Path

import pytest

from medqlora.config import DatasetSpec, load_config
from medqlora.data import format_rows, load_rows
from medqlora.errors import ConfigError, DataError

from .conftest import assert_one_message, kit_argv, run_cli


def _examples(path: Path, text: str, **spec):
    path.write_text(text)
    dataset = DatasetSpec(source=str(path), format="instruction", **spec)
    return format_rows(dataset, load_rows(dataset))


# ---------------------------------------------------------------- column names with blanks or in another case

@pytest.mark.parametrize("header", ["instruction ,output", " instruction,output ", "instruction\u00a0,output"],
                         ids=["blank-after", "blanks-around", "no-break-space"])
def test_a_column_name_with_blanks_around_it_is_read_as_that_column(tmp_path, header):
    """A spreadsheet's header 'instruction ' was refused as 'has no column instruction', the blank not named."""
    (example,) = _examples(tmp_path / "rows.csv", f"{header}\nWhat is a?,Answer a\n")
    assert (example.prompt, example.response) == ("What is a?", "Answer a")


def test_a_column_name_with_blanks_is_read_in_a_dry_run_too(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "sp.csv"
    data.write_text("instruction ,output\n" + "".join(f"What is finding {i}?,Answer {i}\n" for i in range(8)))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", "--set",
                                      f"data.datasets=[{{source: {data}, format: instruction}}]"))
    assert result.code == 0, result.err


@pytest.mark.parametrize("text,said", [
    ("Instruction,instruction,output\nWhat is a?,What is b?,Answer\n",
     "columns 'instruction' and 'Instruction' can each be the instruction format's 'instruction', and they differ "
     "(\"What is b?\" / \"What is a?\"): one would be dropped without a word. Choose the one to read with columns: "
     "{instruction: Instruction} (or {instruction: instruction})"),
    ("Instruction,question,output\nWhat is a?,What is b?,Answer\n",
     "columns 'question' and 'Instruction' can each be the instruction format's 'instruction'"),
    ("instruction,instruction ,output\nWhat is a?,What is b?,Answer\n",
     "columns 'instruction' and 'instruction ' can each be"),
    ("instruction,Input,output\nWhat is a?,Some context,Answer\n",
     "column 'Input' differs from the instruction format's 'input' in case only: names are matched in their case, so "
     "it would be dropped without a word. Read it with columns: {input: Input} in the dataset entry"),
    ("instruction,input,INPUT,output\nWhat is a?,One,Two,Answer\n",
     "columns 'input' and 'INPUT' can each be the instruction format's 'input'"),
], ids=["same-name-other-case", "other-case-of-another-name", "same-name-with-blank", "optional-other-case",
        "optional-both-cases"])
def test_two_columns_for_one_field_that_differ_in_case_or_blanks_are_refused_naming_both(tmp_path, text, said):
    """'Instruction' beside 'instruction' with another text: the first was dropped without a word."""
    with pytest.raises(DataError) as refused:
        _examples(tmp_path / "rows.csv", text)
    assert "row 1 (line 2): " + said in str(refused.value)


def test_columns_of_one_field_in_two_cases_read_when_they_agree_or_when_columns_chooses(tmp_path):
    (same,) = _examples(tmp_path / "same.csv", "Instruction,instruction,output\nWhat is a?,What is a?,Answer\n")
    assert same.prompt == "What is a?"
    (chosen,) = _examples(tmp_path / "chosen.csv", "Instruction,instruction,output\nWhat is a?,What is b?,Answer\n",
                          columns={"instruction": "Instruction"})
    assert chosen.prompt == "What is a?"
    (extra,) = _examples(tmp_path / "input.csv", "instruction,Input,output\nWhat is a?,Some context,Answer\n",
                         columns={"input": "Input"})
    assert extra.prompt == "What is a?\n\nSome context"


def test_a_column_another_format_reads_as_written_is_that_formats_column_not_a_copy_in_another_case(tmp_path):
    """medical-o1 rows built from MedQA keep MedQA's 'question' beside their own 'Question' (the shipped demo data):
    two fields, not one field written twice."""
    rows = tmp_path / "o1.jsonl"
    rows.write_text(json.dumps({"question": "MedQA's vignette?", "Question": "The open question?",
                                "Complex_CoT": "Reasoning.", "Response": "The answer."}) + "\n")
    spec = DatasetSpec(source=str(rows), format="medical_o1")
    (example,) = format_rows(spec, load_rows(spec))
    assert example.prompt == "The open question?"


def test_a_column_only_in_another_case_is_refused_naming_it_as_the_mapping_to_write(tmp_path):
    with pytest.raises(DataError) as refused:
        _examples(tmp_path / "cap.csv", "Instruction,Output\nWhat is a?,A\n")
    assert ("has no column 'instruction' or 'question'; its columns are ['Instruction', 'Output'] (names are matched "
            "in their case: 'Instruction' is not 'instruction' or 'question'). Map yours with 'columns:' in the "
            "dataset entry, e.g. columns: {instruction: Instruction}.") in str(refused.value)


# ---------------------------------------------------------------- an invisible sample query (175)

@pytest.mark.parametrize("question,said", [("\\u200b", "is only invisible characters (\\u200b)"),
                                           ("\\ufeff\\u2060", "is only invisible characters (\\ufeff\\u2060)"),
                                           ("\\u3000 ", "is only whitespace ('\\u3000 ')")],
                         ids=["zero-width-space", "bom-and-word-joiner", "ideographic-space"])
def test_a_sample_query_whose_question_is_invisible_is_refused_naming_its_id(tiny_model_dir, tmp_path, capsys,
                                                                             question, said):
    """`question: "\\u200b"` was answered into sample_responses.md: an invisible question and an answer to it."""
    queries = tmp_path / "q_inv.yaml"
    queries.write_text(f'queries:\n  - id: ok\n    question: What is a?\n  - id: inv\n    question: "{question}"\n')
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--adapter", "none",
                                      "--set", f"generation.queries_file={queries}"))
    assert result.code == 2
    assert_one_message(result.err, f"q_inv.yaml:4: entry 2 (query 'inv'): 'question' {said}; it must be the "
                                   "question to answer, as visible text.")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("sample_responses.md"))


# ---------------------------------------------------------------- a YAML null inside a list or mapping (182, 183)

@pytest.mark.parametrize("override,said", [
    ("lora.target_modules=[q_proj, ~]", "'lora.target_modules.1': Input should be a valid string (got None). YAML "
     "reads ~ and null as no value, and element 1 (counted from 0) of the list lora.target_modules is one: give it, "
     "or remove it from the list."),
    ("data.datasets.0.columns={instruction: ~}", "'data.datasets.0.columns.instruction': Input should be a valid "
     "string (got None). YAML reads ~ and null as no value, and the value of 'instruction' in "
     "data.datasets.0.columns is one: give it, or remove that key."),
    ("data.datasets=[~]", "element 0 (counted from 0) of the list data.datasets is one: give it, or remove it"),
], ids=["list-element", "mapping-value", "list-of-sections"])
def test_a_null_inside_a_list_or_mapping_given_with_set_names_the_element_without_path_advice(override, said):
    """The null advice spoke of the home folder for a module name and of 'a key with nothing after its colon' for
    a value typed after '='."""
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    message = str(refused.value)
    assert said in message
    assert "home folder" not in message and "nothing after its colon" not in message


def test_the_home_folder_advice_is_kept_for_settings_that_name_a_file_or_folder_only(tmp_path):
    for setting in ("output.dir", "model.name", "generation.queries_file", "data.datasets.0.source"):
        with pytest.raises(ConfigError) as refused:
            load_config(None, [f"{setting}=~"])
        assert "nothing after = as no value: give the value (~ alone is not your home folder" in str(refused.value)
    for setting in ("training.optimizer", "data.datasets.0.format"):
        with pytest.raises(ConfigError) as refused:
            load_config(None, [f"{setting}=~"])
        assert "as no value" in str(refused.value) and "home folder" not in str(refused.value), setting


def test_a_null_column_in_a_config_file_speaks_of_the_key_with_nothing_after_its_colon(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  datasets:\n    - source: x.jsonl\n      format: instruction\n      columns:\n"
                      "        instruction:\n")
    result = run_cli(capsys, ["--mode", "train", "--config", str(config), "--dry-run"])
    assert result.code == 2
    assert_one_message(result.err, "c.yaml:6: 'data.datasets.0.columns.instruction': Input should be a valid string "
                                   "(got None). YAML reads ~, null and a key with nothing after its colon as no "
                                   "value, and the value of 'instruction' in data.datasets.0.columns is one")
    assert "home folder" not in result.err


# ---------------------------------------------------------------- a JSON array in a .jsonl file (194)

ROWS = [{"instruction": "What is a?", "output": "A"}, {"instruction": "What is b?", "output": "B"}]


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty-printed"])
def test_a_json_array_in_a_jsonl_file_is_told_to_be_named_json(tmp_path, indent):
    """The array on one line got 'expected a JSON object per line, got a list'; pretty-printed, 'not valid JSON'."""
    array_as = tmp_path / "array_as.jsonl"
    array_as.write_text(json.dumps(ROWS, indent=indent) + "\n")
    with pytest.raises(DataError) as refused:
        load_rows(DatasetSpec(source=str(array_as), format="instruction"))
    assert (f"{array_as}: the file is one JSON array of 2 records, not JSON Lines (one object a line, which a .jsonl "
            "file holds). Name it .json (the kit reads a .json file holding a list of records)") in str(refused.value)
    renamed = array_as.rename(tmp_path / "array_as.json")
    spec = DatasetSpec(source=str(renamed), format="instruction")
    assert [e.prompt for e in format_rows(spec, load_rows(spec))] == ["What is a?", "What is b?"]


def test_a_jsonl_file_whose_lines_are_lists_still_names_the_line(tmp_path):
    lists = tmp_path / "lists.jsonl"
    lists.write_text("[1, 2]\n[3]\n")
    with pytest.raises(DataError, match=r"lists.jsonl:1: expected a JSON object per line, got a list \(\[1, 2\]\)"):
        load_rows(DatasetSpec(source=str(lists), format="instruction"))
