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
