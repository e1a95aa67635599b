"""Row formats of the methods after SFT: prompt_answer (a prompt with a checkable answer, for GRPO) and
preference (prompt / chosen / rejected, for DPO and ORPO). Registered beside the SFT formats of formats.py,
checked row by row the same way, and seen by the leakage guard like every other format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DataError
from .formats import dataset_format
from .rows import Example, _column, _field, _kind, _response, _text, _uid
from .secrets import printable

if TYPE_CHECKING:
    from .config import DatasetSpec


@dataclass
class PreferenceExample(Example):
    rejected: str = ""  # the reply the model should prefer less (response holds the chosen one)


@dataset_format(
    "prompt_answer", placeholders=None, fields=(("prompt", "question"), ("answer", "solution")),
    columns="prompt (or question), answer (or solution)",
    target="nothing by SFT: GRPO samples replies to the prompt and its rewards check them against the answer",
    shape='{"prompt" or "question", "answer"} (the answer a GRPO reward checks)')
def format_prompt_answer(row: dict[str, Any], spec: DatasetSpec) -> Example:
    p_name, prompt = _field(row, spec, "prompt", "question")
    a_name, answer = _column(row, spec, "answer", "solution")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"field '{printable(a_name, 60)}' is {_kind(answer)}, expected the answer as text.")
    answer = _response(str(answer).strip(), a_name)
    return Example(prompt=prompt, response=answer, uid=_uid(row.get("id"), "id"), texts=((p_name, prompt),),
                   answer_texts=((a_name, answer),))


def _turns(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"field '{printable(name, 60)}' is {_kind(value)}, expected text or a list of messages.")
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"field '{printable(name, 60)}[{i}]' is not a message {{'role', 'content'}}.")
        turns.append({"role": str(message["role"]), "content": _text(message["content"], f"{name}[{i}].content")})
    return turns


def _reply(value: Any, name: str) -> tuple[str, str]:
    """(the prompt the conversation holds before its last reply, that last assistant reply)."""
    if isinstance(value, str):
        return "", _response(value, name)
    turns = _turns(value, name)
    if turns[-1]["role"] != "assistant":
        raise DataError(f"field '{printable(name, 60)}': the last message is not the assistant's reply.")
    users = [t["content"] for t in turns[:-1] if t["role"] == "user"]
    return "\n\n".join(users), _response(turns[-1]["content"], name)


@dataset_format(
    "preference", placeholders=None, fields=(("prompt",), ("chosen",), ("rejected",)),
    columns="prompt, chosen, rejected (texts, or chosen/rejected as message lists ending with the assistant reply)",
    target="DPO / ORPO: the chosen reply over the rejected one",
    shape='{"prompt", "chosen", "rejected"}: texts, or chosen/rejected as message lists '
          '[{"role", "content"}, ...] ending with the assistant reply')
def format_preference(row: dict[str, Any], spec: DatasetSpec) -> Example:
    c_name, chosen = _column(row, spec, "chosen")
    r_name, rejected = _column(row, spec, "rejected")
    prompt_from_chosen, chosen_text = _reply(chosen, c_name)
    _, rejected_text = _reply(rejected, r_name)
    p_name = spec.columns.get("prompt", "prompt")
    if p_name in row and row[p_name] is not None:
        value = row[p_name]
        prompt = (_text(value, p_name) if isinstance(value, str)
                  else "\n\n".join(t["content"] for t in _turns(value, p_name) if t["role"] == "user"))
    else:
        prompt = prompt_from_chosen
    if not prompt.strip():
        raise DataError(f"no prompt: field '{printable(p_name, 60)}' is missing and '{printable(c_name, 60)}' holds "
                        "no user message.")
    if chosen_text == rejected_text:
        raise DataError("the chosen and rejected replies are the same text: nothing to prefer.")
    return PreferenceExample(prompt=prompt, response=chosen_text, rejected=rejected_text,
                             uid=_uid(row.get("id"), "id"), texts=((p_name, prompt),),
                             answer_texts=((c_name, chosen_text), (r_name, rejected_text)))

