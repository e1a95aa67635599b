"""Hostile and unlucky inputs: MMLU answers in lower case, benchmark items whose options say the same, and
multiple-choice options in their own columns (MedMCQA's hub layout, A/B/C/D columns, a CSV file).

Findings handled here: 046, 047, 058, 059.
"""

import csv
import json
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _mmlu_eval(capsys, model: Path, tmp_path: Path, folder: Path):
    argv = kit_argv(model, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[mmlu_anatomy]",
                       "eval.lm_eval.mmlu_dir": str(folder)})
    return run_cli(capsys, argv)


def test_mmlu_answers_in_lower_case_are_read_as_their_letters(tmp_path):
    from medqlora.harness_mmlu import subject_rows

    folder = tmp_path / "mmlu"
    folder.mkdir()
    _csv(folder / "anatomy_test.csv", [["What is 1?", "w", "x", "y", "z", "a"], ["What is 2?", "w", "x", "y", "z", "c"]])
    assert [row["answer"] for row in subject_rows(folder, "anatomy")] == [0, 2]


def _organ_rows(header: list[str], answer) -> list[list]:
    return [header] + [[f"Which organ does disease {i} affect most?", "liver", "heart", "lung", "kidney", answer(i)]
                       for i in range(16)]


def _mc_dry_run(capsys, model: Path, tmp_path: Path, source: Path):
    return run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "multiple_choice"}))


def test_options_in_columns_of_their_own_are_read_from_a_csv_file_medmcqa_hub_layout_too(tiny_model_dir, tmp_path,
                                                                                           capsys):
    medmcqa = _csv(tmp_path / "medmcqa.csv", _organ_rows(["question", "opa", "opb", "opc", "opd", "cop"],
                                                         lambda i: i % 4))
    letters = _csv(tmp_path / "letters.csv", _organ_rows(["question", "A", "B", "C", "D", "answer_idx"],
                                                         lambda i: "ABCD"[i % 4]))
    for source in (medmcqa, letters):
        result = _mc_dry_run(capsys, tiny_model_dir, tmp_path, source)
        assert result.code == 0, result.err
    from medqlora.config import DatasetSpec
    from medqlora.data import format_rows, load_rows

    for source in (medmcqa, letters):
        spec = DatasetSpec(source=str(source), format="multiple_choice")
        examples = format_rows(spec, load_rows(spec))
        assert [ex.response for ex in examples[:4]] == ["A. liver", "B. heart", "C. lung", "D. kidney"]
        assert "A. liver\nB. heart\nC. lung\nD. kidney" in examples[0].prompt


def test_a_medmcqa_cop_numbered_from_one_is_refused_naming_the_hub_numbering(tiny_model_dir, tmp_path, capsys):
    first_release = _csv(tmp_path / "medmcqa.csv", _organ_rows(["question", "opa", "opb", "opc", "opd", "cop"],
                                                               lambda i: i % 4 + 1))
    result = _mc_dry_run(capsys, tiny_model_dir, tmp_path, first_release)
    assert result.code == 2
    assert_one_message(result.err, "field 'cop' is '4', expected the right option's number 0-3")
    assert "needs 1 taken off every cop" in result.err


def test_options_as_json_text_in_a_csv_cell_name_the_layouts_a_csv_file_can_hold(tiny_model_dir, tmp_path, capsys):
    options = json.dumps({"A": "liver", "B": "heart", "C": "lung", "D": "kidney"})
    source = _csv(tmp_path / "mc.csv", [["question", "options", "answer_idx"]]
                  + [[f"Which organ {i}?", options, "A"] for i in range(16)])
    result = _mc_dry_run(capsys, tiny_model_dir, tmp_path, source)
    assert result.code == 2
    assert_one_message(result.err, "which a CSV cell cannot hold. In a CSV file give one column per option: opa, opb")
    assert "or save the file as JSONL or Parquet" in result.err


def test_a_row_without_an_options_column_is_told_layouts_that_work(tiny_model_dir, tmp_path, capsys):
    source = _csv(tmp_path / "mc.csv", _organ_rows(["question", "first", "second", "third", "fourth", "answer_idx"],
                                                   lambda i: "A"))
    result = _mc_dry_run(capsys, tiny_model_dir, tmp_path, source)
    assert result.code == 2
    assert_one_message(result.err, "has no column 'options'")
    assert "or as one column per option: opa, opb, opc, opd with cop" in result.err
    assert "e.g. columns: {options: your_column}" not in result.err  # four columns cannot map onto one field


def _same_options_rows(n: int, differing: int = 0) -> list[dict]:
    same = {"A": "same", "B": "same", "C": "same", "D": "same"}
    other = {"A": "liver", "B": "heart", "C": "lung", "D": "kidney"}
    return [{"question": f"Which organ does disease {i} affect most?", "options": other if i < differing else same,
             "answer_idx": "ABCD"[i % 4]} for i in range(n)]


def test_a_benchmark_whose_every_item_states_its_answer_in_two_options_is_refused(tiny_model_dir, tmp_path, capsys):
    source = _jsonl(tmp_path / "same.jsonl", _same_options_rows(12))
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.benchmarks": f"[{{name: s, kind: multiple_choice, source: {source}}}]"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "Benchmark 's': every one of its 12 items states the answer in two options (item")
    assert "coin toss" in result.err


def test_benchmark_items_stating_their_answer_in_two_options_are_said_mmlu_and_the_shipped_medmcqa_too(
        tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "mmlu"
    folder.mkdir()
    _csv(folder / "anatomy_test.csv", [["What is 1?", "same", "same", "same", "same", "A"],
                                       ["What is 2?", "w", "x", "y", "z", "B"]])
    result = _mmlu_eval(capsys, tiny_model_dir, tmp_path, folder)
    assert result.code == 0, result.err
    said = result.out + result.err
    assert ("warning: lm-eval task mmlu_anatomy: 1 of its 2 items state the answer in two options (item anatomy-1: "
            "options A and B are both 'same'") in said
    from medqlora.config import BenchmarkSpec
    from medqlora.evaluate import load_items

    # MedMCQA's dev set holds one such item; the shipped held-out part is scored, with the item said
    items = load_items(BenchmarkSpec(name="medmcqa", kind="multiple_choice", source="data/medmcqa/heldout.jsonl"), 0)
    assert len(items) == 512  # its 514 rows less a pair that gives one question two answers (left out, said)
    assert "warning: Benchmark 'medmcqa': 1 of its 512 items state the answer in two options" in capsys.readouterr().out


def test_medmcqa_rows_whose_answer_is_hidden_name_a_split_that_has_answers():
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.formats import FORMATS

    row = {"question": "Q?", "opa": "liver", "opb": "heart", "opc": "lung", "opd": "kidney", "cop": -1}
    with pytest.raises(DataError, match="field 'cop' is -1: the row's answer is not given .*split: validation"):
        FORMATS["multiple_choice"](row, DatasetSpec(source="openlifescienceai/medmcqa", format="multiple_choice"))


def test_a_conversation_as_text_in_a_csv_cell_is_told_to_use_jsonl_or_parquet(tiny_model_dir, tmp_path, capsys):
    turns = json.dumps([{"role": "user", "content": "What is aspirin?"}, {"role": "assistant", "content": "A drug."}])
    source = _csv(tmp_path / "chat.csv", [["messages"]] + [[turns]] * 16)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "chat"}))
    assert result.code == 2
    assert_one_message(result.err, "A CSV cell holds text only: save conversations as JSONL or Parquet.")


def test_lm_eval_medmcqa_reads_a_file_in_medmcqa_hub_layout(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": f"m{i}", "question": f"Which organ does disease {i} affect most?", "opa": "liver", "opb": "heart",
             "opc": "lung", "opd": "kidney", "cop": i % 4} for i in range(8)]
    source = _jsonl(tmp_path / "medmcqa_validation.jsonl", rows)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[medmcqa]", "eval.lm_eval.medmcqa": str(source)})
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err
    assert "lm-eval medmcqa (8 items" in result.out
    from medqlora.config import load_config
    from medqlora.harness import load_tasks

    cfg = load_config(None, [f"model.name={tiny_model_dir}", "eval.harness=lm-eval", "eval.lm_eval.tasks=[medmcqa]",
                             f"eval.lm_eval.medmcqa={source}"])
    items = sorted(load_tasks(cfg)[0].items, key=lambda item: item.uid)
    assert [item.gold for item in items[:4]] == ["A", "B", "C", "D"]
