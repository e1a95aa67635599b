"""Hostile and unlucky inputs of data and evaluation: rows whose question is empty or blank (every format that
reads one), a validation ratio that holds out no row, the plan's count of a benchmark's items, the advice of a
benchmark whose source lacks a column, a queries file written as CSV, --no-baseline without an adapter, and a
named chat template whose special tokens the tokenizer lacks."""

import json
from pathlib import Path

import pytest

from medqlora.config import DatasetSpec
from medqlora.data import format_rows, load_rows
from medqlora.errors import DataError

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train_dry_run(capsys, model: Path, tmp_path: Path, source: Path, fmt: str, *args: str, **sets: str):
    argv = kit_argv(model, tmp_path / "out", "--dry-run", *args, **{
        "data.datasets": f"[{{source: {source}, format: {fmt}}}]", "data.eval_sets": "[]", **sets})
    return run_cli(capsys, argv)


# ---------------------------------------------------------------- a blank question (31, 32, 33, 34)

def _row(fmt: str, i: int, question: str) -> dict:
    answer = f"Answer number {i} to the question."
    if fmt == "medical_o1":
        return {"Question": question, "Complex_CoT": "Think it through.", "Response": answer}
    if fmt == "instruction":
        return {"instruction": question, "output": answer}
    if fmt == "chat":
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    if fmt == "multiple_choice":
        return {"question": question, "options": {"A": "liver", "B": "kidney", "C": "heart"}, "answer_idx": "B"}
    if fmt == "prompt_answer":
        return {"prompt": question, "answer": "42"}
    return {"question": question, "context": {"contexts": ["An abstract."]}, "final_decision": "yes",
            "long_answer": answer}


BLANK_FORMATS = [("medical_o1", "Question"), ("instruction", "instruction"), ("chat", "messages[1].content"),
                 ("multiple_choice", "question"), ("pubmedqa", "question"), ("prompt_answer", "prompt")]


@pytest.mark.parametrize(("fmt", "field"), BLANK_FORMATS)
@pytest.mark.parametrize(("blank", "said"), [("", "is empty"), ("  \t ", "is only whitespace"),
                                             ("\u200b\u200b", "is only invisible characters")])
def test_a_row_with_a_blank_question_is_refused_naming_row_and_field(tmp_path, fmt, field, blank, said):
    rows = [_row(fmt, i, f"What is finding number {i} of the series?") for i in range(4)]
    rows[2] = _row(fmt, 2, blank)
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    spec = DatasetSpec(source=str(source), format=fmt)
    with pytest.raises(DataError) as caught:
        format_rows(spec, load_rows(spec))
    assert f"row 3: field '{field}' {said}" in str(caught.value)
    assert "expected the question the response answers" in str(caught.value)


def test_a_blank_question_stops_the_dry_run_with_one_message(tiny_model_dir, tmp_path, capsys):
    rows = [_row("instruction", i, f"What is finding number {i}?") for i in range(6)]
    rows[3]["instruction"] = "   "
    source = _jsonl(tmp_path / "inst.jsonl", rows)
    result = _train_dry_run(capsys, tiny_model_dir, tmp_path, source, "instruction")
    assert result.code == 2
    assert_one_message(result.err, "inst.jsonl row 4: field 'instruction' is only whitespace")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_blank_user_turn_before_a_later_question_is_refused(tmp_path):
    turns = [{"role": "user", "content": " "}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "What is a fever?"}, {"role": "assistant", "content": "A raised temperature."}]
    source = _jsonl(tmp_path / "chat.jsonl", [{"messages": turns}])
    spec = DatasetSpec(source=str(source), format="chat")
    with pytest.raises(DataError, match=r"row 1: field 'messages\[1\].content' is only whitespace"):
        format_rows(spec, load_rows(spec))


def test_a_question_of_text_with_an_empty_input_still_trains(tmp_path):
    source = _jsonl(tmp_path / "inst.jsonl", [{"instruction": "What is a fever?", "input": "", "output": "Heat."}])
    spec = DatasetSpec(source=str(source), format="instruction")
    (example,) = format_rows(spec, load_rows(spec))
    assert example.prompt == "What is a fever?"


# ---------------------------------------------------------------- a val_ratio that holds out no row (132)

@pytest.mark.parametrize(("rows", "ratio", "advice"), [
    (8, "0.02", "Raise it to at least 0.07 (it holds out 1 of them)"),
    (1, "0.4", "1 row(s) are too few to hold any out at a ratio under 0.5"),
])
def test_a_val_ratio_that_rounds_to_no_row_is_refused_before_the_plan(tiny_model_dir, tmp_path, capsys, rows, ratio,
                                                                     advice):
    source = _jsonl(tmp_path / "inst.jsonl", [_row("instruction", i, f"What is finding {i}?") for i in range(rows)])
    result = _train_dry_run(capsys, tiny_model_dir, tmp_path, source, "instruction", **{"data.val_ratio": ratio})
    assert result.code == 2
    assert_one_message(result.err, f"data.val_ratio {ratio} of {rows} training row(s) rounds to 0 rows")
    assert advice in result.err


def test_the_smallest_val_ratio_advised_holds_out_a_row(tiny_model_dir, tmp_path, capsys):
    from medqlora.data import val_ratio_rows

    for pool in (2, 3, 7, 8, 40, 50, 99, 100, 199):
        try:
            val_ratio_rows(pool, 0.001)
        except DataError as refused:
            least = float(str(refused).split("at least ")[1].split(" ")[0])
            assert val_ratio_rows(pool, least) >= 1
    source = _jsonl(tmp_path / "inst.jsonl", [_row("instruction", i, f"What is finding {i}?") for i in range(8)])
    result = _train_dry_run(capsys, tiny_model_dir, tmp_path, source, "instruction", **{"data.val_ratio": "0.07"})
    assert result.code == 0, result.err
    assert json.loads(result.out)["validation"]["loss"] == "before and after training"


# ---------------------------------------------------------------- the plan counts the items scored (74, 133)

def _mc_file(path: Path, count: int) -> Path:
    return _jsonl(path, [{"question": f"Which organ is affected in disease {i}?",
                          "options": {"A": "liver", "B": "kidney", "C": "heart"}, "answer_idx": "B"}
                         for i in range(count)])


@pytest.mark.parametrize(("benchmarks", "said"), [
    ("[{name: two, kind: multiple_choice, source: MC, max_items: 100}]",
     "two (multiple_choice, 2 items, all its source holds, fewer than max_items 100, likelihood)"),
    ("[{name: pubmedqa, kind: pubmedqa, max_items: 1000}]",
     "pubmedqa (pubmedqa, 500 items, all its source holds, fewer than max_items 1000, likelihood)"),
    ("[{name: two, kind: multiple_choice, source: MC, max_items: 1}]", "two (multiple_choice, 1 items, likelihood)"),
    ("[{name: two, kind: multiple_choice, source: MC}]", "two (multiple_choice, 2 items, likelihood)"),
])
@pytest.mark.parametrize("mode", ["eval", "full"])
def test_the_plan_counts_the_items_a_local_benchmark_holds(tiny_model_dir, lora_folder, tmp_path, capsys, benchmarks,
                                                          said, mode):
    source = _mc_file(tmp_path / "mc2.jsonl", 2)
    adapter = ["--adapter", str(lora_folder)] if mode == "eval" else []
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", mode, *adapter,
                                      **{"eval.benchmarks": benchmarks.replace("MC", str(source))}))
    assert result.code == 0, result.err
    planned = json.loads(result.out)
    shown = planned["does"] if mode == "eval" else " ".join(planned["evaluation"])
    assert said in shown


# ---------------------------------------------------------------- a benchmark's columns advice (113, 142)

@pytest.mark.parametrize(("kind", "rows", "missing"), [
    ("cot", [{"question": "Which organ?", "options": {"A": "liver", "B": "lung"}, "answer_idx": "A"}], "'Question'"),
    ("pubmedqa", [{"instruction": "What is a fever?", "output": "Heat."}], "'question' or 'QUESTION'"),
    ("multiple_choice", [{"instruction": "What is a fever?", "output": "Heat."}], "'question'"),
])
def test_a_benchmark_source_without_a_column_names_its_benchmark_entry(tmp_path, kind, rows, missing):
    from medqlora.config import load_config
    from medqlora.evaluate import load_benchmarks

    source = _jsonl(tmp_path / "bench.jsonl", rows)
    cfg = load_config(None, [f"eval.benchmarks=[{{name: first, kind: pubmedqa, max_items: 1}}, "
                             f"{{name: mine, kind: {kind}, source: {source}}}]"])
    with pytest.raises(DataError) as refused:
        load_benchmarks(cfg)
    said = str(refused.value)
    assert f"bench.jsonl row 1: has no column {missing}" in said
    assert "Map yours with 'columns:' in eval.benchmarks.1 (the benchmark 'mine')" in said
    assert "dataset entry" not in said
    assert f"A {kind} benchmark reads " in said


def test_a_benchmark_column_advice_reaches_the_dry_run(tiny_model_dir, lora_folder, tmp_path, capsys):
    source = _jsonl(tmp_path / "inst.jsonl", [{"instruction": "What is a fever?", "output": "Heat."}])
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      str(lora_folder), **{"eval.benchmarks": f"[{{name: p, kind: pubmedqa, "
                                                                              f"source: {source}}}]"}))
    assert result.code == 2
    assert_one_message(result.err, "in eval.benchmarks.0 (the benchmark 'p'), e.g. columns: {question: your_column}")


# ---------------------------------------------------------------- a queries file that is not YAML (119)

@pytest.mark.parametrize(("name", "table"), [("q.csv", "CSV"), ("q.TSV", "TSV"), ("q.parquet", "Parquet")])
def test_a_table_file_as_queries_file_is_refused_saying_it_must_be_yaml(tmp_path, name, table):
    from medqlora.errors import ConfigError
    from medqlora.generate import load_queries

    path = tmp_path / name
    path.write_text("id,question\nq1,What is hypertension?\n")
    with pytest.raises(ConfigError) as refused:
        load_queries(str(path))
    said = str(refused.value)
    assert said.startswith(f"generation.queries_file {path}: the queries file is YAML, a list of {{id, question}} "
                           "entries under 'queries:' (e.g. 'queries:' then '  - id: q1' and '    question: ...')")
    assert f"a {table} file is not read" in said


@pytest.mark.parametrize(("text", "holds"), [("id,question\nq1,What is hypertension?\n", "it holds one text"),
                                             ("queries: hello\n", "its 'queries:' holds one text ('hello')"),
                                             ("# nothing\n", "it holds nothing")])
def test_a_queries_file_that_is_not_a_list_shows_the_shape_to_write(tmp_path, text, holds):
    from medqlora.errors import ConfigError
    from medqlora.generate import load_queries

    path = tmp_path / "queries.txt"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_queries(str(path))
    said = str(refused.value)
    assert f"read as YAML, {holds}" in said
    assert "the queries file is YAML, expected a list of {id, question} entries under 'queries:' (e.g. 'queries:' " \
           "then '  - id: q1' and '    question: ...')" in said


def test_a_csv_queries_file_stops_the_test_dry_run_with_one_message(tiny_model_dir, lora_folder, tmp_path, capsys):
    path = tmp_path / "q.csv"
    path.write_text("id,question\nq1,What is hypertension?\n")
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test", "--adapter",
                                      str(lora_folder), **{"generation.queries_file": str(path)}))
    assert result.code == 2
    assert_one_message(result.err, "a CSV file is not read. Write the queries as YAML")


# ---------------------------------------------------------------- --no-baseline without an adapter (125)

@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_no_baseline_with_no_adapter_is_refused_before_anything_is_scored(tiny_model_dir, tmp_path, capsys, dry_run):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry_run, "--mode", "eval", "--adapter",
                                      "none", "--no-baseline"))
    assert result.code == 2
    assert_one_message(result.err, "--no-baseline scores the adapter alone, and --adapter none gives no adapter")
    assert "Leave out --no-baseline to score the base model alone" in result.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- a named template without its tokens (68)

def _cfg(*sets: str):
    from medqlora.config import load_config

    return load_config(None, list(sets))


def test_llama3_template_on_a_tokenizer_without_its_tokens_is_refused_naming_the_one_that_fits(smol_tokenizer):
    import copy

    from medqlora import backends
    from medqlora.errors import ModelError

    with pytest.raises(ModelError) as refused:
        backends.prepare_tokenizer(copy.deepcopy(smol_tokenizer), _cfg("model.chat_template=llama-3"))
    said = str(refused.value)
    assert "model.chat_template: llama-3 writes turn markers that the tokenizer of" in said
    assert "<|eot_id|> (" in said and "pieces)" in said
    assert "Use model.chat_template: auto (the model's own template), or model.chat_template: chatml" in said


def test_a_named_template_whose_tokens_the_tokenizer_holds_is_kept(smol_tokenizer):
    import copy

    from medqlora import backends

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                                "<|eot_id|>"]})
    backends.prepare_tokenizer(tokenizer, _cfg("model.chat_template=llama-3"))  # its tokens are there: kept
    assert tokenizer.chat_template == backends.CHAT_TEMPLATES["llama-3"]
    backends.prepare_tokenizer(tokenizer, _cfg("model.chat_template=mistral"))  # [INST] is text by design
    assert tokenizer.chat_template == backends.CHAT_TEMPLATES["mistral"]


def test_the_dry_run_refuses_a_template_whose_tokens_the_tokenizer_lacks(tiny_model_dir, tmp_path, capsys):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run",
                                      **{"model.chat_template": "llama-3"}))
    assert result.code == 2
    assert_one_message(result.err, "model.chat_template: llama-3 writes turn markers that the tokenizer of")
    assert "Use model.chat_template: auto (the model's own template), or model.chat_template: chatml" in result.err
