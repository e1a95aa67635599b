"""Bad inputs that a --dry-run must refuse as the run does (the same check, shared), and inputs whose meaning the
kit would otherwise change without a word: each is refused with one message that says what to change."""

import json

import pytest

from medqlora import harness
from tests.conftest import run_cli


@pytest.fixture
def lm_eval_here(monkeypatch):
    """lm-evaluation-harness taken as installed (importing it takes long; these tests never run it)."""
    monkeypatch.setattr(harness, "check_installed", lambda: None)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _drug_questions(n: int = 8) -> list[str]:
    return [f"What is the usual adult dose of drug number {i}?" for i in range(n)]


def test_the_dry_run_guards_training_rows_against_the_lm_eval_items(tmp_path, capsys, lm_eval_here):
    train = _jsonl(tmp_path / "train.jsonl", [{"instruction": q, "output": "A dose."} for q in _drug_questions()])
    medqa = _jsonl(tmp_path / "medqa.jsonl", [{"question": q, "options": dict(zip("ABCD", "1234")), "answer_idx": "A"}
                                             for q in _drug_questions()])
    result = run_cli(capsys, ["--dry-run", "--mode", "full", "--output-dir", str(tmp_path / "out"),
                              "--set", f"data.datasets=[{{source: {train}, format: instruction}}]",
                              "--set", "eval.harness=lm-eval", "--set", "eval.lm_eval.tasks=[medqa]",
                              "--set", f"eval.lm_eval.medqa={medqa}"])
    assert result.code == 2
    assert "8 training examples contain evaluation questions" in result.err
    assert "'lm-eval medqa' item" in result.err
