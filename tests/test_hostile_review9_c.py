"""Hostile and unlucky inputs: two list-valued columns for one field, numbers and signs as GRPO answers, cache
variables that cannot be cache folders, two reasoning formats in one run, a copy of the training file as the
validation set, a full run with nothing to evaluate, an empty benchmark name, and lm-eval settings without
eval.harness."""

import json
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _dry_run(capsys, model: Path, tmp_path: Path, *args: str, **settings: str):
    return run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run", *args, **settings))


def _chat(i: int, user: str, assistant: str, layout: str) -> list[dict]:
    if layout == "messages":
        return [{"role": "user", "content": f"{user} {i}?"}, {"role": "assistant", "content": f"{assistant} {i}."}]
    return [{"from": "human", "value": f"{user} {i}?"}, {"from": "gpt", "value": f"{assistant} {i}."}]


def test_two_different_conversations_in_one_row_are_refused_and_one_conversation_in_both_layouts_is_read(
        tiny_model_dir, tmp_path, capsys):
    differ = [{"messages": _chat(i, "What is drug", "It is a painkiller", "messages"),
               "conversations": _chat(i, "Tell me about toxin", "It is deadly", "sharegpt")} for i in range(12)]
    base = {"data.datasets.0.format": "chat"}
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **base,
                       **{"data.datasets.0.source": str(_jsonl(tmp_path / "both.jsonl", differ))})
    assert refused.code == 2
    assert_one_message(refused.err, "both.jsonl row 1: columns 'messages' and 'conversations' can each be")
    chosen = _dry_run(capsys, tiny_model_dir, tmp_path, **base, **{
        "data.datasets.0.source": str(tmp_path / "both.jsonl"), "data.datasets.0.columns": "{messages: conversations}"})
    assert chosen.code == 0, chosen.err
    same = [{"messages": _chat(i, "What is drug", "It is a painkiller", "messages"),
             "conversations": _chat(i, "What is drug", "It is a painkiller", "sharegpt")} for i in range(12)]
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **base,
                  **{"data.datasets.0.source": str(_jsonl(tmp_path / "same.jsonl", same))})
    assert ok.code == 0, ok.err


def test_pubmedqa_context_beside_a_different_contexts_list_is_refused():
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.formats import FORMATS

    spec = DatasetSpec(source="x.jsonl", format="pubmedqa")
    row = {"question": "Q?", "final_decision": "yes", "long_answer": "la", "pubid": "1",
           "context": {"contexts": ["ctx a"], "labels": ["BACKGROUND"]}}
    with pytest.raises(DataError, match="columns 'context' and 'CONTEXTS' can each be"):
        FORMATS["pubmedqa"]({**row, "CONTEXTS": ["other context"]}, spec)
    assert "ctx a" in FORMATS["pubmedqa"]({**row, "CONTEXTS": [" ctx a "]}, spec).context
