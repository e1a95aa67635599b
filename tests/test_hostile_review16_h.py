"""Hostile round 16, chat rows: a system turn in the middle of a conversation, with a chat template that has no
system role (Mistral's raises on one): `internal error: TemplateError: This template has no system role`."""

import json

import pytest

from medqlora.data.tokenize import chat_turn_messages

from .conftest import kit_argv, run_cli


class NoSystemRole:
    """A tokenizer whose chat template raises on a system turn, as Mistral's does."""

    def apply_chat_template(self, messages, **_kwargs):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("This template has no system role")
        return "".join(f"[{m['role']}]{m['content']}" for m in messages)


@pytest.mark.parametrize(("turns", "expected"), [
    ((("user", "Q1"), ("system", "Be brief."), ("assistant", "A1")),
     [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "Be brief.\n\nA1"}]),
    ((("system", "S0"), ("user", "Q1"), ("assistant", "A1"), ("system", "S2"), ("user", "Q2"), ("assistant", "A2")),
     [{"role": "user", "content": "S0\n\nQ1"}, {"role": "assistant", "content": "A1"},
      {"role": "user", "content": "S2\n\nQ2"}, {"role": "assistant", "content": "A2"}]),
    ((("user", "Q1"), ("assistant", "A1"), ("system", "after the end")),  # nothing after it is learned
     [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]),
])
def test_a_system_turn_in_the_middle_is_folded_into_the_next_message_where_the_template_has_no_system_role(
        turns, expected):
    assert chat_turn_messages(NoSystemRole(), None, turns) == expected


def test_a_template_with_a_system_role_keeps_a_system_turn_in_the_middle():
    class WithSystemRole(NoSystemRole):
        def apply_chat_template(self, messages, **_kwargs):
            return "".join(f"[{m['role']}]{m['content']}" for m in messages)

    turns = (("user", "Q1"), ("system", "Be brief."), ("assistant", "A1"))
    assert chat_turn_messages(WithSystemRole(), None, turns) == [{"role": r, "content": c} for r, c in turns]


def test_a_chat_row_with_a_system_turn_in_the_middle_trains_with_the_mistral_template(tiny_model_dir, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about fever?"},
                          {"role": "system", "content": "Answer briefly."},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(8)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{data}', format: chat}}]", "model.chat_template": "mistral"})
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err
    assert "internal error" not in result.err
