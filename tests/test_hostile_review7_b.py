"""Hostile and unlucky inputs around evaluation files and exports: an MMLU subject in both layouts, a GGUF type
whose quantizer is missing, the machine's paths in an export meant for the Hub, and where a second export goes."""

import csv
from pathlib import Path

from .conftest import assert_one_message, kit_argv, run_cli

MMLU_ROW = ["Which bone is the longest in the human body?", "Femur", "Tibia", "Humerus", "Radius", "A"]


def _mmlu_in_both_layouts(tmp_path: Path) -> Path:
    import datasets

    folder = tmp_path / "mmlu"
    (folder / "anatomy").mkdir(parents=True)
    with (folder / "anatomy_test.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(MMLU_ROW)
    rows = [{"question": "The heart has how many chambers?", "choices": ["Two", "Three", "Four", "Five"], "answer": 2}]
    datasets.Dataset.from_list(rows).to_parquet(folder / "anatomy" / "test-00000-of-00001.parquet")
    return folder


def test_an_mmlu_subject_in_both_layouts_is_refused_naming_both_files(tiny_model_dir, tmp_path, capsys):
    folder = _mmlu_in_both_layouts(tmp_path)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[mmlu_anatomy]",
                       "eval.lm_eval.mmlu_dir": str(folder)})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "holds the subject in both layouts")
    assert "anatomy_test.csv" in result.err and "test-00000-of-00001.parquet" in result.err
    (folder / "anatomy_test.csv").unlink()  # one layout left: read
    assert run_cli(capsys, argv).code == 0
