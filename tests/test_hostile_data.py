"""Hostile data at the boundary: every bad value, bad file and hidden evaluation question ends in ONE
message naming the file, the row and the field (DataError; exit code 2 from the command line, no
traceback, nothing in the run folder but its config and a manifest saying 'failed')."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqlora.cli import main
from medqlora.config import DataSection, DatasetSpec
from medqlora.data import (FORMATS, MAX_FIELD_CHARS, Example, build_examples, collect, format_rows, load_rows,
                           pubmedqa_test_ids)
from medqlora.errors import DataError
from medqlora.run_lock import LOCK_FILE

from .conftest import assert_one_message, kit_argv, only_run, run_kit

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- one good row of each format

GOOD = {
    "instruction": {"instruction": "Q?", "input": "More.", "output": "A."},
    "medical_o1": {"Question": "Q?", "Complex_CoT": "Think.", "Response": "R."},
    "multiple_choice": {"question": "Q?", "options": {"A": "one", "B": "two"}, "answer_idx": "B"},
    "pubmedqa": {"pubid": "1", "question": "Q?", "context": {"contexts": ["c1", "c2"]}, "final_decision": "yes",
                 "long_answer": "L."},
    "chat": {"messages": [{"role": "system", "content": "S."}, {"role": "user", "content": "U?"},
                          {"role": "assistant", "content": "A."}]},
}


def _set(path):
    """A setter for a field of a GOOD row: 'output', 'options.A', 'context.contexts[0]', 'messages[2].content'."""
    def setter(row, value):
        target, key = row, path
        if path.startswith("options."):
            target, key = row["options"], path.split(".", 1)[1]
        elif path.startswith("context.contexts["):
            target, key = row["context"]["contexts"], int(path[-2])
        elif path.startswith("messages["):
            target, key = row["messages"][int(path[9]) - 1], "content"  # turns are counted from 1
        target[key] = value
        return row
    return setter


TEXT_FIELDS = {
    "instruction": ["instruction", "input", "output"],
    "medical_o1": ["Question", "Complex_CoT", "Response"],
    "multiple_choice": ["question", "options.A"],
    "pubmedqa": ["question", "context.contexts[0]", "final_decision", "long_answer"],
    "chat": ["messages[1].content", "messages[2].content", "messages[3].content"],
}
NON_TEXT = [(42, "a number (42)"), (4.5, "a number (4.5)"), (True, "a boolean (true)"), (False, "a boolean (false)"),
            ([1, 2], "a list ([1, 2])"), ({"a": 1}, 'an object ({"a": 1})'), ([], "a list ([])"),
            ({"nested": [{"x": [None]}]}, 'an object ({"nested": [{"x": [null]}]})')]

VALUE_CASES = [pytest.param(fmt, name, value, kind, id=f"{fmt}-{name}-{kind.split(' (')[0].replace(' ', '_')}-{i}")
               for fmt, names in TEXT_FIELDS.items() for name in names for i, (value, kind) in enumerate(NON_TEXT)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refused(spec: DatasetSpec) -> str:
    """The one message of a refused dataset (loading and formatting, as a run does)."""
    with pytest.raises(DataError) as err:
        format_rows(spec, load_rows(spec))
    message = str(err.value)
    assert "Offline?" not in message  # that hint is for hub sources only
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("fmt, name, value, kind", VALUE_CASES)
def test_a_value_that_is_not_text_is_refused_with_file_row_and_field(tmp_path, fmt, name, value, kind):
    bad = _set(name)(copy.deepcopy(GOOD[fmt]), value)
    path = write_jsonl(tmp_path / "my.jsonl", [GOOD[fmt], bad])
    message = refused(DatasetSpec(source=str(path), format=fmt))
    assert message == f"{path} row 2: field '{name}' is {kind}, expected text."


@pytest.mark.parametrize("fmt, name", [(f, n) for f, names in TEXT_FIELDS.items() for n in names if n != "input"])
def test_null_where_text_is_needed_is_refused(tmp_path, fmt, name):
    path = write_jsonl(tmp_path / "my.jsonl", [_set(name)(copy.deepcopy(GOOD[fmt]), None)])
    assert refused(DatasetSpec(source=str(path), format=fmt)) == f"{path} row 1: field '{name}' is null, expected text."


BLANK_RESPONSES = [
    ("instruction", "output", ""), ("instruction", "output", "   \n"), ("medical_o1", "Response", ""),
    ("medical_o1", "Response", "\t "), ("pubmedqa", "long_answer", ""), ("chat", "messages[3].content", ""),
    ("chat", "messages[3].content", " \n "),
]


@pytest.mark.parametrize("fmt, name, value", BLANK_RESPONSES)
def test_a_blank_response_is_refused_with_file_row_and_field(tmp_path, fmt, name, value):
    path = write_jsonl(tmp_path / "my.jsonl", [GOOD[fmt], _set(name)(copy.deepcopy(GOOD[fmt]), value)])
    what = "empty" if not value else f"only whitespace ({value!r})".replace("\n", "\\n").replace("\t", "\\t")
    assert refused(DatasetSpec(source=str(path), format=fmt)) == (
        f"{path} row 2: field '{name}' is {what}, expected the response to learn. Fill it in or leave the row out.")


def test_a_null_or_absent_input_is_just_no_input(tmp_path):
    path = write_jsonl(tmp_path / "my.jsonl", [{"instruction": "Q?", "input": None, "output": "A."},
                                                {"instruction": "Q?", "output": "A."}])
    spec = DatasetSpec(source=str(path), format="instruction")
    assert [e.prompt for e in format_rows(spec, load_rows(spec))] == ["Q?", "Q?"]


@pytest.mark.parametrize("fmt, row, fragment", [
    ("chat", {"messages": "hi"}, "field 'messages' is text ('hi'), expected a list of"),
    ("chat", {"messages": {"role": "user"}}, "field 'messages' is an object"),
    ("chat", {"messages": 7}, "field 'messages' is a number (7), expected a list of"),
    ("chat", {"messages": None}, "field 'messages' is null, expected a value."),
    ("chat", {"messages": []}, "each 'messages' list must end with an assistant turn"),
    ("chat", {"messages": ["hi", {"role": "assistant", "content": "A."}]}, "field 'messages' turn 1 is text ('hi')"),
    ("chat", {"messages": [[1], {"role": "assistant", "content": "A."}]}, "field 'messages' turn 1 is a list ([1])"),
    ("chat", {"messages": [{"content": "U?"}, {"role": "assistant", "content": "A."}]}, "turn 1 has no 'role'"),
    ("chat", {"messages": [{"role": "user"}, {"role": "assistant", "content": "A."}]}, "turn 1 has no 'content'"),
    ("chat", {"messages": [{"role": "bot", "content": "U?"}, {"role": "assistant", "content": "A."}]},
     "turn 1 has role 'bot'; expected system, user or assistant"),
    ("chat", {"messages": [{"role": 3, "content": "U?"}, {"role": "assistant", "content": "A."}]}, "has role 3;"),
    ("chat", {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A."}]},
     "field 'messages[1].content' is a number (5), expected text"),
    ("chat", {"messages": [{"role": "user", "content": "U?"}, {"role": "assistant", "content": None}]},
     "field 'messages[2].content' is null, expected text"),
    ("chat", {"messages": [{"role": "user", "content": "U?"}]}, "must end with an assistant turn"),
    ("chat", {"messages": [{"role": "assistant", "content": "A."}]}, "has no user turn before its last assistant"),
    ("multiple_choice", {"question": "Q?", "options": "A or B", "answer_idx": "A"}, "field 'options' is text"),
    ("multiple_choice", {"question": "Q?", "options": {}, "answer_idx": "A"}, "field 'options' is empty"),
    ("multiple_choice", {"question": "Q?", "options": ["x"], "answer_idx": "A"},
     "field 'options' has one option: a multiple-choice question needs at least two"),
    ("multiple_choice", {"question": "Q?", "options": {"A": "x"}, "answer_idx": "A"}, "field 'options' has one option"),
    ("multiple_choice", {"question": "Q?", "options": ["x", "y"], "answer_idx": True},
     "field 'answer_idx' is a boolean (true), expected an option's letter"),
    ("multiple_choice", {"question": "Q?", "options": ["x", "y"], "answer_idx": ["A"]}, "field 'answer_idx' is a list"),
    ("multiple_choice", {"question": "Q?", "options": ["x", "y"], "answer_idx": "E"},
     "answer_idx 'E' is not one of the options ['A', 'B']"),
    ("pubmedqa", {**GOOD["pubmedqa"], "context": 12}, "field 'context' is a number (12), expected the abstract's"),
    ("pubmedqa", {**GOOD["pubmedqa"], "context": {"labels": []}}, "field 'context' is an object without 'contexts'"),
    ("pubmedqa", {**GOOD["pubmedqa"], "pubid": [1]}, "field 'pubid' is a list ([1]), expected an id"),
    ("pubmedqa", {**GOOD["pubmedqa"], "pubid": {"id": 1}}, "field 'pubid' is an object"),
    ("pubmedqa", {**GOOD["pubmedqa"], "final_decision": "probably"}, "field 'final_decision': 'probably' is not yes"),
    ("instruction", {"output": "A."}, "has no column 'instruction' or 'question'; its columns are ['output']"),
    ("medical_o1", {"Question": "Q?", "Complex_CoT": "x", "Response": "r" * (MAX_FIELD_CHARS + 1)},
     f"field 'Response' is {MAX_FIELD_CHARS + 1:,} characters long; one field may hold at most"),
])
def test_rows_of_the_wrong_shape_are_refused_with_file_row_and_field(tmp_path, fmt, row, fragment):
    path = write_jsonl(tmp_path / "my.jsonl", [GOOD[fmt], row])
    message = refused(DatasetSpec(source=str(path), format=fmt))
    assert message.startswith(f"{path} row 2: ") and fragment in message, message


def test_rows_that_are_not_records_are_refused(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([GOOD["instruction"], "just text", 3]))
    assert refused(DatasetSpec(source=str(path), format="instruction")) == (
        f"{path} row 2: expected a record (JSON object), got text ('just text').")


def test_a_pubmedqa_id_from_a_typed_column_still_holds_out_the_test_question(tmp_path):
    """12345678.0 (a float column) is PMID 12345678: a test question is not let through by its type."""
    pmid = sorted(pubmedqa_test_ids())[0]
    rows = [{**GOOD["pubmedqa"], "pubid": float(pmid)}, {**GOOD["pubmedqa"], "pubid": 5}]
    examples = format_rows(DatasetSpec(source="x.jsonl", format="pubmedqa"), rows)
    assert [e.uid for e in examples] == [pmid, "5"]


# ---------------------------------------------------------------- files


def parquet_bytes(tmp_path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD["instruction"]] * 50), str(path))
    return path.read_bytes()


GARBAGE = bytes(range(256)) * 4  # binary: not UTF-8
ASCII_GARBAGE = bytes(range(128)) * 4  # control characters and NUL, but decodable


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.jsonl", b"", "is empty"),
    ("empty.csv", b"", "is empty"),
    ("empty.json", b"", "is empty"),
    ("empty.parquet", b"", "is empty"),
    ("blank.jsonl", b"\n\n   \n\t\n", "has no records"),
    ("blank.csv", b"\n\n\n", "has no records"),
    ("header-only.csv", b"instruction,output\n", "has no records"),
    ("empty-list.json", b"[]", "has no records"),
    ("empty-object.json", b"{}", "has no records"),
    ("scalar.json", b"42", "expected a JSON list of records or a dict keyed by id, got a number (42)"),
    ("garbage.csv", GARBAGE, "not UTF-8 text (byte 128). Is it really a .csv file?"),
    ("garbage.json", GARBAGE, "not UTF-8 text (byte 128). Is it really a .json file?"),
    ("garbage.jsonl", GARBAGE, "not UTF-8 text (byte 128). Is it really a .jsonl file?"),
    ("garbage.parquet", GARBAGE, "not a readable Parquet file"),
    ("ascii-garbage.csv", ASCII_GARBAGE, "ascii-garbage.csv:1: contains a NUL byte: is it a binary file"),
    ("ascii-garbage.json", ASCII_GARBAGE, "not valid JSON"),
    ("ascii-garbage.jsonl", ASCII_GARBAGE, "ascii-garbage.jsonl:1: not valid JSON"),
    ("latin1.csv", "instruction,output\ncafé,thé\n".encode("latin-1"), "not UTF-8 text"),
    ("utf16.jsonl", json.dumps(GOOD["instruction"]).encode("utf-16"), "not UTF-8 text"),
    ("nul.csv", b"instruction,output\nq\x00,a\n", "nul.csv:2: contains a NUL byte"),
    ("unclosed-quote.csv", b'instruction,output\n"q,a\n', ":2: a quoted cell opened in the record on this line is never closed"),
    ("short-row.csv", b"instruction,output\nq\n", "1 cell, but the header names 2 columns"),
    ("long-row.csv", b"instruction,output\nq,a,b\n", "3 cells, but the header names 2 columns"),
    ("twice.csv", b"output,output\na,b\n", "the header names column 'output' twice"),
    ("jsonl-named.json", (json.dumps(GOOD["instruction"]) + "\n") * 2, "name it .jsonl"),
    ("csv-named.jsonl", b"instruction,output\nq,a\n", "not valid JSON"),
    ("truncated.jsonl", json.dumps(GOOD["instruction"])[:-5].encode(), "truncated.jsonl:1: not valid JSON"),
    ("deep.json", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ("deep.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n", "nested too deeply"),
    ("huge-cell.csv", b"instruction,output\nq," + b"x" * (MAX_FIELD_CHARS + 10) + b"\n",
     f"a cell longer than {MAX_FIELD_CHARS:,} characters"),
], ids=lambda value: value if isinstance(value, str) and "." in value and len(value) < 40 else "")
def test_bad_files_are_refused_with_the_file_and_what_is_wrong(tmp_path, name, content, fragment):
    """(Parameter ids are the file names.)"""
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    message = refused(DatasetSpec(source=str(path), format="instruction"))
    assert str(path) in message and fragment in message, message


@pytest.mark.parametrize("name, cut", [("truncated.parquet", 0.5), ("no-footer.parquet", 0.98),
                                       ("parquet-named.json", None), ("parquet-named.csv", None)])
def test_parquet_truncated_or_misnamed_is_refused(tmp_path, name, cut):
    blob = parquet_bytes(tmp_path)
    path = tmp_path / name
    path.write_bytes(blob[: int(len(blob) * cut)] if cut else blob)
    message = refused(DatasetSpec(source=str(path), format="instruction"))
    assert str(path) in message
    assert ("not a readable Parquet file" if name.endswith(".parquet") else "not UTF-8 text") in message


def test_a_parquet_file_with_typed_columns_is_checked_row_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "typed.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "Q?", "output": 42}]), str(path))
    assert refused(DatasetSpec(source=str(path), format="instruction")) == (
        f"{path} row 1: field 'output' is a number (42), expected text.")


def test_a_csv_file_is_text_whatever_its_cells_look_like(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("\ufeffq,a\n42,true\n\n3.5,null\n")
    spec = DatasetSpec(source=str(path), format="instruction", columns={"instruction": "q", "output": "a"})
    rows = load_rows(spec)
    assert rows == [{"q": "42", "a": "true"}, {"q": "3.5", "a": "null"}] and rows.lines == [2, 4]
    assert [(e.prompt, e.response) for e in format_rows(spec, rows)] == [("42", "true"), ("3.5", "null")]


def test_a_bad_row_of_a_jsonl_file_names_its_line_too(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n" + json.dumps(GOOD["instruction"]) + "\n\n\n" + json.dumps({"instruction": "Q", "output": 1}))
    assert refused(DatasetSpec(source=str(path), format="instruction")) == (
        f"{path} row 2 (line 5): field 'output' is a number (1), expected text.")


def test_a_100_mb_field_is_refused_quickly(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as handle:
        handle.write('{"instruction": "Q?", "output": "')
        for _ in range(100):
            handle.write("x" * 1_000_000)
        handle.write('"}\n')
    message = refused(DatasetSpec(source=str(path), format="instruction"))
    assert message == (f"{path} row 1: field 'output' is 100,000,000 characters long; one field may hold at most "
                       f"{MAX_FIELD_CHARS:,} (far more than any max_seq_length). Shorten it or leave the row out.")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_link_to_a_device_is_not_a_regular_file(tmp_path, device):
    path = tmp_path / "train.jsonl"
    path.symlink_to(device)
    assert refused(DatasetSpec(source=str(path), format="instruction")) == (
        f"Dataset file {path} is not a regular file (it links to {device}).")


def test_a_pipe_is_not_a_regular_file(tmp_path):
    import os

    path = tmp_path / "train.jsonl"
    os.mkfifo(path)
    assert refused(DatasetSpec(source=str(path), format="instruction")) == f"Dataset file {path} is not a regular file."


def test_a_folder_of_mixed_file_types_is_refused(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD["instruction"]])
    (folder / "b.csv").write_text("instruction,output\nQ?,A.\n")
    message = refused(DatasetSpec(source=str(folder), format="instruction"))
    assert message == (f"The data folder {folder} holds files of different types (csv: b.csv; json: a.jsonl); only one "
                       "type would be read. Keep one type in the folder, or list each file as its own dataset.")
    (folder / "b.csv").unlink()
    (folder / "c.json").write_text(json.dumps([GOOD["instruction"]]))  # .json and .jsonl are one type: both are read
    assert len(load_rows(DatasetSpec(source=str(folder), format="instruction"))) == 2


def test_a_local_folder_that_cannot_be_read_gets_no_offline_hint(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(GARBAGE)
    message = refused(DatasetSpec(source=str(folder), format="instruction"))
    assert message.startswith(f"{folder / 'train.parquet'}: not a readable Parquet file")


def test_every_file_of_a_data_folder_is_read_whatever_its_name(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [GOOD["instruction"]] * 12)
    write_jsonl(folder / "dev.jsonl", [GOOD["instruction"]] * 20)  # no file name picks a split
    rows = load_rows(DatasetSpec(source=str(folder), format="instruction"))
    assert len(rows) == 32 and rows.files == ["dev.jsonl", "train.jsonl"]
    write_jsonl(folder / "test.jsonl", [GOOD["instruction"], {"instruction": "Q?", "output": 5}])
    assert refused(DatasetSpec(source=str(folder), format="instruction")) == (
        f"{folder / 'test.jsonl'} row 2: field 'output' is a number (5), expected text.")


def test_the_shipped_pubmedqa_folder_names_the_file_that_is_not_records():
    folder = ROOT / "data" / "pubmedqa"
    message = refused(DatasetSpec(source=str(folder), format="pubmedqa"))
    assert message.startswith(f"{folder / 'pqal_split_pmids.json'}: expected a JSON list of records")
    assert "Unknown split" not in message


@pytest.mark.parametrize("options, named", [({"subset": "pqa_artificial"}, "subset: pqa_artificial applies"),
                                            ({"split": "test"}, "split: test applies"),
                                            ({"subset": "a", "split": "b"}, "subset: a and split: b apply")])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_hub_options_on_a_local_source_are_refused_not_ignored(tmp_path, options, named, kind):
    path = write_jsonl(tmp_path / "my.jsonl", [GOOD["instruction"]])
    source = tmp_path if kind == "folder" else path
    message = refused(DatasetSpec(source=str(source), format="instruction", **options))
    assert message.startswith(f"Dataset '{source}' is a local {kind}, read whole: {named} to hub datasets only.")


@pytest.mark.parametrize("name, content, row", [
    ("my.jsonl", '{"instruction": "Q?", "output": "A.", "n": {"deep": [1, 9' + "9" * 5000 + "]}}\n", "my.jsonl:1"),
    ("my.json", '[{"instruction": "Q?", "output": "A.", "n": -' + "9" * 5000 + "}]", "my.json row 1"),
])
def test_an_integer_too_long_to_read_names_file_row_and_field(tmp_path, name, content, row):
    (tmp_path / name).write_text(content)
    message = refused(DatasetSpec(source=str(tmp_path / name), format="instruction"))
    field = "n.deep[1]" if name.endswith("l") else "n"
    assert message == (f"{tmp_path}/{row}: field '{field}' holds an integer too long to read (over 4000 digits). "
                       "Write it as a quoted string, or remove it.")
    assert "sys." not in message


@pytest.mark.parametrize("name, content, row, key", [
    ("my.jsonl", '{"instruction": "Q?", "output": "A."}\n{"instruction": "Q?", "output": "first answer", '
     '"output": "second answer"}\n', "my.jsonl:2", "output"),
    ("my.json", '[{"instruction": "Q?", "output": "A."}, {"instruction": "Q?", "output": "A.", '
     '"meta": {"id": 1, "id": 2}}]', "my.json row 2", "meta.id"),
])
def test_a_key_given_twice_in_a_json_row_is_refused_with_file_row_and_key(tmp_path, name, content, row, key):
    (tmp_path / name).write_text(content)
    message = refused(DatasetSpec(source=str(tmp_path / name), format="instruction"))
    assert message == (f"{tmp_path}/{row}: key '{key}' appears twice in one object (JSON would keep only the last "
                       "value). Keep one of them.")


def test_a_weight_that_rounds_to_no_draws_is_refused_with_the_smallest_weight_that_draws_one(tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": "A."} for i in range(16)]
    path = write_jsonl(tmp_path / "my.jsonl", rows)
    with pytest.raises(DataError) as err:
        build_examples(DatasetSpec(source=str(path), format="instruction", weight=0.001), rows, seed=0)
    assert str(err.value) == (f"Dataset '{path}': weight 0.001 of its 16 examples rounds to 0 draws, so nothing of "
                              "it would be trained on. Give it a weight of at least 0.0625 (one draw), or leave it "
                              "out.")
    assert "holding out" not in str(err.value)
    examples, info = build_examples(DatasetSpec(source=str(path), format="instruction", weight=0.0625), rows, seed=0)
    assert len(examples) == info["used"] == 1


@pytest.mark.parametrize("mark, what", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_delimited_by_semicolons_or_tabs_is_refused_naming_the_delimiter(tmp_path, mark, what):
    path = tmp_path / "semi.csv"
    path.write_text(f"instruction{mark}output\nWhat is aspirin?{mark}A drug.\n")
    message = refused(DatasetSpec(source=str(path), format="instruction"))
    header = "'instruction" + ("\\t" if mark == "\t" else mark) + "output'"  # the tab written as \t
    assert message == (f"{path}:1: the header is one column, {header}, with {what} in it: the file looks delimited "
                       f"by {what}, not by commas. A .csv data file must be comma-separated: save it with commas "
                       "(quoting cells that contain commas), or as .jsonl.")
    assert "columns:" not in message
    one = tmp_path / "one.csv"
    one.write_text("instruction\nWhat is aspirin?; a drug\n")  # one real column: the usual missing-column advice
    assert "Map yours with 'columns:'" in refused(DatasetSpec(source=str(one), format="instruction"))


def test_a_missing_source_names_each_folder_once_and_a_link_loop_as_such(tmp_path, monkeypatch):
    from medqlora.data import sources as data_module  # where local sources are looked up

    (tmp_path / "loop1.jsonl").symlink_to("loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to("loop1.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    loop = tmp_path / "loop1.jsonl"
    assert refused(DatasetSpec(source=str(loop), format="instruction")) == (
        f"Dataset file '{loop}' is a symbolic link that loops back to itself: point it, or a link it leads through, "
        "at a real file.")
    dangling = tmp_path / "dangling.jsonl"
    assert refused(DatasetSpec(source=str(dangling), format="instruction")) == (
        f"Dataset file '{dangling}' is a symbolic link to {tmp_path / 'gone.jsonl'}, which does not exist: point it "
        "at a real file.")
    absent = tmp_path / "absent.jsonl"
    assert refused(DatasetSpec(source=str(absent), format="instruction")) == f"Dataset file '{absent}' not found."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_module, "KIT_ROOT", tmp_path)
    assert refused(DatasetSpec(source="absent.jsonl", format="instruction")) == (
        f"Dataset file 'absent.jsonl' not found (looked in {tmp_path}).")  # the one folder, once
    assert refused(DatasetSpec(source="loop2.jsonl", format="instruction")).startswith(
        f"Dataset file 'loop2.jsonl' ({tmp_path / 'loop2.jsonl'}) is a symbolic link that loops back to itself")


def test_a_jsonl_queries_file_is_refused_saying_the_queries_file_is_yaml(tmp_path):
    from medqlora.errors import ConfigError
    from medqlora.generate import load_queries

    lines = [{"id": "q1", "question": "What is anaemia?"}, {"id": "q2", "question": "Why?"}]
    jsonl = write_jsonl(tmp_path / "q.jsonl", lines)
    with pytest.raises(ConfigError) as err:
        load_queries(str(jsonl))
    assert str(err.value).startswith(f"generation.queries_file {jsonl}: the queries file is YAML, a list of "
                                     "{id, question} entries under 'queries:'")
    assert "JSONL, one JSON object a line, is not read" in str(err.value) and "unknown key" not in str(err.value)
    one = write_jsonl(tmp_path / "q.yaml", lines[:1])  # one JSON line under a YAML name
    with pytest.raises(ConfigError) as err:
        load_queries(str(one))
    assert str(err.value).startswith(f"{one}:1: one {{id, question}} object, not a list: the queries file is YAML")
    assert str(err.value).endswith("Put '- ' before each entry, under 'queries:'.")
    (tmp_path / "ok.yaml").write_text("".join(f"- {json.dumps(line)}\n" for line in lines))
    assert [q["id"] for q in load_queries(str(tmp_path / "ok.yaml"))] == ["q1", "q2"]


def test_data_text_in_messages_is_printable(tmp_path):
    path = write_jsonl(tmp_path / "my.jsonl", [{"instruction": "Q?", "output": "A.", "\x1b[2Jevil\nkey": 1},
                                                {"instruction": "Q?", "answer_idx": 1}])
    spec = DatasetSpec(source=str(path), format="multiple_choice")
    message = refused(spec)  # no column 'question'... its columns are [...] with the key escaped
    assert "\x1b" not in message and "\\x1b[2Jevil\\nkey" in message
    bad_role = write_jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "us\u202eer\r", "content": "x"},
                                                                   {"role": "assistant", "content": "y"}]}])
    message = refused(DatasetSpec(source=str(bad_role), format="chat"))
    assert "\u202e" not in message and "\r" not in message and "\\u202e" in message


# ---------------------------------------------------------------- evaluation questions hidden in training data

PQAL = json.loads(Path("data/pubmedqa/ori_pqal.json").read_text())
PMID = sorted(pubmedqa_test_ids())[3]
QUESTION = PQAL[PMID]["QUESTION"]
LONG_PMID = max(sorted(pubmedqa_test_ids()), key=lambda p: len(PQAL[p]["QUESTION"].split()))
LONG = PQAL[LONG_PMID]["QUESTION"]
Q1_PMID = "19100463"  # 22 words
Q1 = PQAL[Q1_PMID]["QUESTION"]
Q1_WORDS = Q1.split()
Q1_HEAD, Q1_TAIL = " ".join(Q1_WORDS[:11]), " ".join(Q1_WORDS[11:])
Q1_ABSTRACT = PQAL[Q1_PMID]["CONTEXTS"]
CYRILLIC = str.maketrans("aeoicpxyABEKMHOPCTX", "аеоісрхуАВЕКМНОРСТХ")
GREEK = str.maketrans("oviktABEHIKMNOPTXZ", "ονικτΑΒΕΗΙΚΜΝΟΡΤΧΖ")


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


HIDDEN = [
    ("in-input", "instruction", {"instruction": "Summarise.", "input": QUESTION, "output": "ok"}, "input", "exact"),
    ("in-earlier-chat-turn", "chat", chat(("user", QUESTION), ("assistant", "Let me see."), ("user", "Well?"),
                                          ("assistant", "yes")), "messages[1] (user)", "exact"),
    ("in-system-turn", "chat", chat(("system", "Context: " + QUESTION), ("user", "Answer."), ("assistant", "yes")),
     "messages[1] (system)", "exact"),
    ("zero-width", "instruction", {"instruction": "\u200b".join(QUESTION), "output": "ok"}, "instruction", "exact"),
    ("bidi-and-soft-hyphen", "instruction", {"instruction": "\u202a" + QUESTION.replace("e", "e\u00ad") + "\u202c",
                                             "output": "ok"}, "instruction", "exact"),
    ("nfkc-fullwidth", "instruction", {"instruction": "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c
                                                              for c in QUESTION), "output": "ok"}, "instruction",
     "exact"),
    ("case-and-punctuation", "instruction", {"instruction": "-- " + QUESTION.upper().replace(" ", " ... ") + " ?!",
                                             "output": "ok"}, "instruction", "exact"),
    ("embedded-in-longer-text", "instruction", {"instruction": "Read this.", "input": f"Some notes. {QUESTION} "
                                                "Please think about it carefully.", "output": "ok"}, "input", "exact"),
    ("in-options", "multiple_choice", {"question": "Which?", "options": {"A": QUESTION, "B": "no"}, "answer_idx": "A"},
     "options.A", "exact"),
    ("in-pubmedqa-context", "pubmedqa", {"pubid": "7", "question": "Q?", "context": ["intro", f"We asked: {QUESTION}"],
                                         "final_decision": "yes", "long_answer": "L."}, "context[1]", "exact"),
    ("light-paraphrase", "instruction",
     {"instruction": " ".join(LONG.rstrip("?").split()[:-1]) + " in adults?", "output": "ok"}, "instruction",
     "near duplicate"),
    # (id, format, row, field, kind, PMID, part of the test item)
    ("split-over-two-user-turns", "chat", chat(("user", Q1_HEAD), ("user", Q1_TAIL), ("assistant", "yes")),
     "messages[1] (user) + messages[2] (user) (joined)", "exact", Q1_PMID, None),
    ("split-over-user-turns-with-an-answer-between", "chat",
     chat(("user", Q1_HEAD), ("assistant", "Go on."), ("user", Q1_TAIL), ("assistant", "yes")), "user turns (joined)",
     "exact", Q1_PMID, None),
    ("split-over-instruction-and-input", "instruction", {"instruction": Q1_HEAD, "input": Q1_TAIL, "output": "yes"},
     "instruction + input (joined)", "exact", Q1_PMID, None),
    ("cyrillic-homoglyphs", "instruction", {"instruction": Q1.translate(CYRILLIC), "output": "yes"}, "instruction",
     "exact", Q1_PMID, None),
    ("greek-homoglyphs", "instruction", {"instruction": Q1.translate(GREEK), "output": "yes"}, "instruction", "exact",
     Q1_PMID, None),
    ("html-entities", "instruction", {"instruction": "&amp; " + Q1.replace(" ", "&nbsp;").replace("?", "&#39;"),
                                      "output": "yes"}, "instruction", "exact", Q1_PMID, None),
    ("html-entities-escaped-twice", "instruction", {"instruction": Q1.replace(" ", "&amp;nbsp;"), "output": "yes"},
     "instruction", "exact", Q1_PMID, None),
    ("whole-abstract-reworded-question", "instruction",
     {"instruction": "Does this method work?", "input": "\n".join(Q1_ABSTRACT), "output": "yes"}, "input", "exact",
     Q1_PMID, "abstract"),
    ("abstract-as-pubmedqa-context-without-pubid", "pubmedqa",
     {"question": "Does this method work?", "context": Q1_ABSTRACT, "final_decision": "yes", "long_answer": "It does."},
     "question + ... + context[%d] (joined)" % (len(Q1_ABSTRACT) - 1), "exact", Q1_PMID, "abstract"),
    ("one-abstract-paragraph", "instruction", {"instruction": "Summarise.", "input": Q1_ABSTRACT[1], "output": "ok"},
     "input", "exact", Q1_PMID, "abstract paragraph 2"),
    ("long-answer-as-output", "instruction", {"instruction": "What did they find?",
                                              "output": PQAL[Q1_PMID]["LONG_ANSWER"]}, "output", "exact", Q1_PMID,
     "long answer"),
    ("long-answer-in-medical-o1-response", "medical_o1", {"Question": "What did they find?", "Complex_CoT": "Think.",
                                                          "Response": PQAL[Q1_PMID]["LONG_ANSWER"]}, "Response",
     "exact", Q1_PMID, "long answer"),
    ("question-in-chat-answer", "chat", chat(("user", "Ask me something."), ("assistant", Q1)),
     "messages[2] (assistant)", "exact", Q1_PMID, None),
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt, row, field, kind, pmid, part",
                         [pytest.param(*(h[1:] + (None, None))[:6], id=h[0]) for h in HIDDEN])
def test_an_evaluation_question_hidden_in_training_data_is_refused(tmp_path, fmt, row, field, kind, pmid, part):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD[fmt], row])
    data = DataSection(datasets=[DatasetSpec(source=str(path), format=fmt)])
    with pytest.raises(DataError) as err:
        collect(data, seed=0)
    message = str(err.value)
    pmid = pmid or (LONG_PMID if kind == "near duplicate" else PMID)
    pmid += f" ({part})" if part else ""
    assert f"1 training examples contain evaluation questions ({int(kind == 'exact')} exact" in message
    how = "contains" if kind == "exact" else "shares 13 of the 14 13-word sequences (93%) of"
    assert f"training '0:{path}' row 2 " in message and f" field '{field}' {how} evaluation" in message, message
    assert f"evaluation 'pubmedqa-test' item {pmid}" in message and "data.allow_eval_overlap: true" in message
    assert "Traceback" not in message
    [allowed] = collect(data.model_copy(update={"allow_eval_overlap": True}), seed=0)
    guard = allowed.info["leakage_guard"]
    assert guard["overlapping_training_items"] == 1
    assert guard["near_duplicates" if kind == "near duplicate" else "exact"] == 1
    assert guard["overlaps"][0]["evaluation_part"] == (part or "question")


@pytest.mark.slow
def test_a_system_prompt_holding_an_evaluation_question_is_refused_once(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD["instruction"]] * 3)
    data = DataSection(datasets=[DatasetSpec(source=str(path), format="instruction")],
                       system_prompt=f"You are a careful assistant. For example: {Q1}")
    with pytest.raises(DataError) as err:
        collect(data, seed=0)
    message = str(err.value)
    assert message.startswith("1 training examples contain evaluation questions (1 exact"), message
    assert f"the config's field 'data.system_prompt' contains evaluation 'pubmedqa-test' item {Q1_PMID}:" in message
    plain = data.model_copy(update={"system_prompt": "You are a careful medical assistant."})
    assert collect(plain, seed=0)[0].info["leakage_guard"]["overlapping_training_items"] == 0


@pytest.mark.parametrize("pubid", ["PMID:19100463", " 19100463 ", "pmid 19100463", "019100463", 19100463,
                                   "https://pubmed.ncbi.nlm.nih.gov/19100463/"])
def test_a_pubmedqa_test_item_is_held_out_whatever_its_pubid_looks_like(pubid):
    row = {"pubid": pubid, "question": "Reworded?", "context": ["Some other text entirely."],
           "final_decision": "yes", "long_answer": "Yes."}
    examples, info = build_examples(DatasetSpec(source="x.jsonl", format="pubmedqa"),
                                    [row, {**GOOD["pubmedqa"], "pubid": "12345"}], seed=0)
    assert info["held_out_pubmedqa_test"] == 1 and [e.uid for e in examples] == ["12345"]


# ---------------------------------------------------------------- end to end: the command line


E2E = [
    ("number-in-output", "my.jsonl", [{"instruction": "Q?", "output": "A."}, {"instruction": "Q?", "output": 42}],
     "my.jsonl row 2: field 'output' is a number (42), expected text."),
    ("null-chat-content", "my.jsonl", [chat(("user", None), ("assistant", "A."))],
     "my.jsonl row 1: field 'messages[1].content' is null, expected text."),
    ("question-in-input", "my.jsonl", [{"instruction": "Summarise.", "input": QUESTION, "output": "ok"}],
     f"row 1 field 'input' contains evaluation 'pubmedqa-test' item {PMID}"),
    ("empty-file", "empty.jsonl", None, "empty.jsonl is empty."),
    ("garbage-csv", "garbage.csv", GARBAGE, "garbage.csv: not UTF-8 text"),
    ("truncated-parquet", "half.parquet", b"PAR1" + GARBAGE[:100], "half.parquet: not a readable Parquet file"),
]


def write_case(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_jsonl(path, content)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, content, fragment", [pytest.param(*e[1:], id=e[0]) for e in E2E])
def test_bad_data_from_the_command_line_is_one_message_and_a_failed_manifest(tmp_path, capsys, name, content,
                                                                              fragment):
    path = write_case(tmp_path, name, content)
    out = tmp_path / "outputs"
    fmt = "chat" if "messages" in json.dumps(content if isinstance(content, list) else []) else "instruction"
    datasets = ["--set", f"data.datasets=[{{source: '{path}', format: {fmt}}}]"]
    assert main(["--dry-run", "--output-dir", str(out)] + datasets) == 2  # the dry run checks the same rows
    assert_one_message(capsys.readouterr().err, fragment)
    assert not out.exists()
    assert main(["--mode", "train", "--output-dir", str(out)] + datasets) == 2
    assert_one_message(capsys.readouterr().err, fragment)
    run = only_run(out)
    assert {p.name for p in run.iterdir()} <= {"manifest.json", "config.yaml", "run.log", LOCK_FILE}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and fragment in manifest["error"]


@pytest.mark.slow
def test_dry_run_checks_local_rows_beside_a_hub_source_and_refuses_a_missing_path(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Q?", "output": ["A."]}])
    mixed = f"data.datasets=[{{source: someone/some-hub-set, format: instruction}}, {{source: '{bad}', format: instruction}}]"
    assert main(["--dry-run", "--set", mixed]) == 2
    assert_one_message(capsys.readouterr().err, "bad.jsonl row 1: field 'output' is a list ([\"A.\"]), expected text.")
    for missing in ("./nope.jsonl", "nope.parquet", "~/nope/train.csv"):
        assert main(["--dry-run", "--set", f"data.datasets=[{{source: '{missing}', format: instruction}}]"]) == 2
        err = capsys.readouterr().err
        assert_one_message(err, "train.csv' not found." if missing.startswith("~") else "not found (looked in")
        assert "Offline?" not in err
    hub_only = "data.datasets=[{source: someone/some-hub-set, format: instruction}]"
    assert main(["--dry-run", "--set", hub_only]) == 0  # hub sources are not downloaded by a dry run
    assert "unknown until downloaded" in capsys.readouterr().out


@pytest.mark.slow
def test_dry_run_guards_the_benchmarks_a_full_run_evaluates_on(tmp_path, capsys):
    medmcqa = [json.loads(line) for line in Path("data/medmcqa/dev_subset.jsonl").read_text().splitlines()[:3]]
    train = write_jsonl(tmp_path / "train.jsonl", [{"instruction": "Explain.", "input": medmcqa[1]["question"],
                                                    "output": "ok"}])
    argv = ["--dry-run", "--set", f"data.datasets=[{{source: '{train}', format: instruction}}]", "--set",
            "eval.benchmarks=[{name: medmcqa, kind: multiple_choice, source: data/medmcqa/dev_subset.jsonl}]"]
    assert main(argv + ["--mode", "full"]) == 2
    assert_one_message(capsys.readouterr().err, "contains evaluation 'medmcqa' item")
    assert main(argv + ["--mode", "train"]) == 0  # a train run evaluates nothing
    capsys.readouterr()


def test_a_fresh_process_prints_one_message_and_exit_code_2(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "my.jsonl", [{"instruction": "Q?", "output": 42}])
    out = tmp_path / "outputs"
    argv = kit_argv(tiny_model_dir, out, "--mode", "train",
                    **{"data.datasets": f"[{{source: '{bad}', format: instruction}}]"})
    result = run_kit(argv, timeout=300)
    assert result.returncode == 2
    assert_one_message(result.stderr, "my.jsonl row 1: field 'output' is a number (42), expected text.")


# ---------------------------------------------------------------- property: any JSON value as a row

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
KEYS = sorted({k for row in GOOD.values() for k in row} | {"QUESTION", "CONTEXTS", "answer", "conversations", "id",
                                                           "realidx", "response", "LONG_ANSWER"})
# a row: GOOD keys with arbitrary values (so the checks past the first column are reached too), or anything
rows = st.one_of(
    st.sampled_from(sorted(GOOD)).flatmap(lambda fmt: st.fixed_dictionaries(
        {}, optional={k: st.one_of(st.just(copy.deepcopy(v)), json_values) for k, v in GOOD[fmt].items()})),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6),
    st.fixed_dictionaries({"messages": st.lists(st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                               "content": json_values}), json_values), max_size=4)}),
    json_values,
)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(rows, st.sampled_from(sorted(FORMATS)))
def test_any_json_value_as_a_row_is_an_example_or_a_data_error(row, fmt):
    spec = DatasetSpec(source="my.jsonl", format=fmt)
    try:
        if not isinstance(row, dict):
            with pytest.raises(DataError, match="my.jsonl row 1: expected a record"):
                format_rows(spec, [row])
            return
        example = FORMATS[fmt](row, spec)  # the formatter itself: no KeyError/TypeError left for a catch-all
    except DataError as err:
        assert str(err).strip()
        return
    assert isinstance(example, Example)
    assert isinstance(example.prompt, str) and isinstance(example.response, str) and example.response
    assert all(isinstance(f, str) and isinstance(t, str) for f, t in example.guard_texts())


@pytest.mark.slow
@PROPERTY
@given(st.lists(rows, min_size=1, max_size=4), st.sampled_from(sorted(FORMATS)),
       st.sampled_from(["jsonl", "json", "parquet"]))
def test_any_json_rows_in_any_file_format_load_or_are_refused_with_a_data_error(tmp_path_factory, records, fmt, kind):
    path = tmp_path_factory.mktemp("rows") / f"my.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "json":
        path.write_text(json.dumps(records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist([r for r in records if isinstance(r, dict)]), str(path))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            return  # values Parquet cannot hold in one column
    spec = DatasetSpec(source=str(path), format=fmt)
    try:
        examples = format_rows(spec, load_rows(spec))
    except DataError as err:
        assert str(err).strip() and "Offline?" not in str(err)
        return
    assert all(isinstance(e.prompt, str) and isinstance(e.response, str) for e in examples)


@pytest.mark.slow
def test_a_benchmark_of_one_option_items_is_refused_not_scored(tmp_path, capsys):
    bench = write_jsonl(tmp_path / "b.jsonl", [{"question": f"Q{i}?", "options": {"A": "x"}, "answer_idx": "A"}
                                               for i in range(3)])
    argv = ["--mode", "eval", "--adapter", "none", "--output-dir", str(tmp_path / "out"), "--set",
            f"eval.benchmarks=[{{name: b, kind: multiple_choice, source: '{bench}'}}]"]
    for dry in (["--dry-run"], []):
        assert main(argv + dry) == 2
        assert_one_message(capsys.readouterr().err, f"{bench} row 1: field 'options' has one option")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing scored or written


@pytest.mark.parametrize("overrides, fragment", [
    ({"model.max_seq_length": "8"}, "No training example fits model.max_seq_length=8, even cut (data.too_long: "
                                    "truncate)"),
    ({"model.max_seq_length": "8", "data.too_long": "drop"}, "No training examples fit model.max_seq_length=8 (the "
                                                            "shortest is"),
    ({"dataset": "validation"}, "No training examples: every dataset has use_for: validation. Give at least one"),
])
def test_dry_run_tokenizes_like_a_run_and_both_give_the_advice_that_applies(tiny_model_dir, tmp_path, capsys,
                                                                             overrides, fragment):
    overrides = dict(overrides)
    use_for = overrides.pop("dataset", None)
    if use_for:
        path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"Q{i}?", "output": "A."} for i in range(16)])
        overrides["data.datasets"] = f"[{{source: '{path}', format: instruction, use_for: {use_for}}}]"
    out = tmp_path / "outputs"
    argv = kit_argv(tiny_model_dir, out, **overrides)
    assert main(["--dry-run"] + argv) == 2
    err = capsys.readouterr().err
    assert_one_message(err, fragment)
    assert "val_ratio" not in err and ("set data.too_long: truncate" not in err or "drop" in str(overrides))
    assert main(["--mode", "train"] + argv) == 2
    assert_one_message(capsys.readouterr().err, fragment)
    manifest = json.loads((only_run(out) / "manifest.json").read_text())
    assert manifest["status"] == "failed" and fragment in manifest["error"]


SHORT_PMID = "26163474"  # 'Is there a connection between sublingual varices and hypertension?': 9 words


@pytest.mark.parametrize("text, caught", [
    ("Is there a connection between sublingual varices and hypertenison?", ("hypertenison", "hypertension")),
    ("Please answer: is there a conection between sublingual varices and hypertension? Thanks.",
     ("conection", "connection")),
    ("Is there a connection between sublingual varices and diabetes?", None),  # another question, not a typo
    ("Is there a connection between lingual varices and hypertension?", None),  # a word dropped: two differ
])
def test_a_short_evaluation_question_with_one_typo_is_caught(tmp_path, text, caught):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD["instruction"], {"instruction": text, "output": "ok"}])
    data = DataSection(datasets=[DatasetSpec(source=str(path), format="instruction")])
    if caught is None:
        assert collect(data, seed=0)[0].info["leakage_guard"]["overlapping_training_items"] == 0
        return
    with pytest.raises(DataError) as err:
        collect(data, seed=0)
    message = str(err.value)
    assert "1 training examples contain evaluation questions (0 exact, 1 near duplicates)" in message
    assert (f"training '0:{path}' row 2 field 'instruction' contains, with one word misspelt ('{caught[0]}' for "
            f"'{caught[1]}'), evaluation 'pubmedqa-test' item {SHORT_PMID}") in message, message


def test_the_typo_check_keeps_the_guard_fast():
    from medqlora.leakage import Item, find_overlap

    evaluation = [Item("e", str(i), f"what is the most common treatment of condition{i} in older patients")
                  for i in range(1000)]
    train = [Item("t", str(i), "x", texts=(("input", "what is the most common treatment of condition in older "
                                                     f"patients and adults number{i} " * 5),)) for i in range(20_000)]
    assert find_overlap(train, evaluation) == []  # its time: bench/leakage_speed.py
