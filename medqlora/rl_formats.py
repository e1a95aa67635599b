"""Row formats of the methods after SFT: prompt_answer (a prompt with a checkable answer, for GRPO) and
preference (prompt / chosen / rejected, for DPO and ORPO). Registered beside the SFT formats of formats.py,
checked row by row the same way, and seen by the leakage guard like every other format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import json_text
from .errors import DataError
from .formats import CHAT_ROLES, dataset_format
from .leakage import normalize
from .rows import Example, _column, _field, _kind, _question, _response, _text, _uid, as_written, blank_said, invisible
from .secrets import printable

if TYPE_CHECKING:
    from .config import DatasetSpec


@dataclass
class PreferenceExample(Example):
    rejected: str = ""  # the reply the model should prefer less (response holds the chosen one)
    system: str = ""  # the rows' own system turn (in place of the dataset's system prompt), if they hold one
    multi_turn: bool = False  # the conversation has turns before the last question (earlier questions, replies)


@dataset_format(
    "prompt_answer", placeholders=None, fields=(("prompt", "question"), ("answer", "solution")),
    columns="prompt (or question), answer (or solution)",
    target="nothing by SFT: GRPO samples replies to the prompt and its rewards check them against the answer",
    shape='{"prompt" or "question", "answer"} (the answer a GRPO reward checks)')
def format_prompt_answer(row: dict[str, Any], spec: DatasetSpec) -> Example:
    p_name, prompt = _field(row, spec, "prompt", "question")
    _question(prompt, p_name)
    a_name, answer = _column(row, spec, "answer", "solution")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"field '{printable(a_name, 60)}' is {_kind(answer)}, expected the answer as text.")
    answer = _response(as_written(answer).strip(), a_name)
    if not normalize(answer):
        raise DataError(f"field '{printable(a_name, 60)}' is {printable(repr(answer), 40)}, which holds no letter or "
                        "digit: the answer reward (answer_match) compares a reply's words and numbers with it, so it "
                        "could never score a reply 1. Write the answer in words (e.g. positive / negative for + / -).")
    return Example(prompt=prompt, response=answer, uid=_uid(row.get("id"), "id"), texts=((p_name, prompt),),
                   answer_texts=((a_name, answer),))


def _turns(value: Any, name: str, reply: str = "the response to learn") -> list[dict[str, str]]:
    """A message list, its roles read as the chat format reads them (ShareGPT's human / gpt too); a blank user
    turn or assistant turn (``reply`` says what that turn is) refused as the chat format refuses it."""
    if isinstance(value, list) and not value:
        raise DataError(f"field '{printable(name, 60)}' is an empty list of messages: give the reply as text or as "
                        "messages ending in the assistant's reply.")
    if not isinstance(value, list):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(value)}, expected text or a list of messages.")
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"field '{printable(name, 60)}[{i}]' is not a message {{'role', 'content'}}.")
        role = message["role"]
        if not isinstance(role, str) or role.strip().lower() not in CHAT_ROLES:
            raise DataError(f"field '{printable(name, 60)}[{i}]' has role {printable(repr(role), 40)}; expected "
                            "system, user or assistant.")
        turn = {"role": CHAT_ROLES[role.strip().lower()], "content": _text(message["content"], f"{name}[{i}].content")}
        if turn["role"] == "user":
            _question(turn["content"], f"{name}[{i}].content")
        elif turn["role"] == "assistant":
            _response(turn["content"], f"{name}[{i}].content", reply)
        turns.append(turn)
    return turns


@dataclass
class PreferenceSide:
    """One side of a preference row: the system turn and user turns before its last reply, and that reply."""
    system: str
    prompt: str
    text: str
    multi_turn: bool = False  # more than one user turn, or an assistant turn, before the reply


def _refuse_messages_as_text(value: str, name: str) -> None:
    """A text cell holding a JSON list of messages (a conversational set saved as CSV, whose cells hold text only):
    read as text, the JSON itself would be the reply to prefer."""
    stripped = value.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return
    try:
        parsed = json_text.loads(stripped)
    except ValueError:
        return
    if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and ("role" in m or "from" in m)
                                                   for m in parsed):
        raise DataError(f"field '{printable(name, 60)}' is text holding a JSON list of messages "
                        f"({printable(stripped, 50)!r}), as a CSV cell holds them: read as text, the JSON itself "
                        "would be trained as the reply. Save the rows as JSONL or Parquet (their message lists stay lists), or "
                        "put the reply's text in the cell.")


def _reply(value: Any, name: str, reply: str = "the response to learn") -> PreferenceSide:
    if isinstance(value, str):
        _refuse_messages_as_text(value, name)
        return PreferenceSide("", "", _response(value, name, reply))
    turns = _turns(value, name, reply)
    if turns[-1]["role"] != "assistant":
        raise DataError(f"field '{printable(name, 60)}': the last message is not the assistant's reply.")
    systems = [t["content"] for t in turns[:-1] if t["role"] == "system"]
    users = [t["content"] for t in turns[:-1] if t["role"] == "user"]
    earlier_replies = any(t["role"] == "assistant" for t in turns[:-1])
    return PreferenceSide("\n\n".join(systems), "\n\n".join(users), turns[-1]["content"],
                 multi_turn=len(users) > 1 or earlier_replies)


def _same(a: str, b: str) -> bool:
    """The same text once spacing, invisible (format) characters and Unicode's forms of one character are ignored
    (a trailing space, a zero-width space, é written as e and an accent read the same)."""
    return _as_read(a) == _as_read(b)


def _as_read(text: str) -> list[str]:
    import unicodedata

    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").split()


def _shared(chosen: str, rejected: str, what: str, c_name: str, r_name: str) -> str:
    """What chosen and rejected both state (a prompt or a system turn): the same in both, or said in one only."""
    if chosen and rejected and not _same(chosen, rejected):
        raise DataError(f"'{printable(c_name, 60)}' and '{printable(r_name, 60)}' hold different {what}s "
                        f"({printable(chosen, 60)!r} vs {printable(rejected, 60)!r}): a preference compares two "
                        f"replies to the same {what}.")
    return chosen or rejected


@dataset_format(
    "preference", placeholders=None, fields=(("prompt",), ("chosen",), ("rejected",)),
    columns="prompt, chosen, rejected (texts, or chosen/rejected as message lists ending with the assistant reply)",
    target="DPO / ORPO: the chosen reply over the rejected one",
    shape='{"prompt", "chosen", "rejected"}: texts, or chosen/rejected as message lists '
          '[{"role", "content"}, ...] ending with the assistant reply')
def format_preference(row: dict[str, Any], spec: DatasetSpec) -> Example:
    c_name, chosen = _column(row, spec, "chosen")
    r_name, rejected = _column(row, spec, "rejected")
    c, r = _reply(chosen, c_name), _reply(rejected, r_name, "the reply to prefer less")
    in_turns = _shared(c.prompt, r.prompt, "user question", c_name, r_name)
    system = _shared(c.system, r.system, "system turn", c_name, r_name)
    p_name = spec.columns.get("prompt", "prompt")
    multi_turn = c.multi_turn or r.multi_turn
    given = row.get(p_name)
    if given is not None and not (in_turns and isinstance(given, str) and invisible(given)):
        prompt, system = _prompt_field(given, p_name, system)
        multi_turn = multi_turn or _turn_count(given) > 1
        if in_turns and not _same(in_turns, prompt):
            raise DataError(f"field '{printable(p_name, 60)}' ({printable(prompt, 60)!r}) and the user turn of "
                            f"'{printable(c_name, 60)}' ({printable(in_turns, 60)!r}) differ: keep the question in "
                            "one of them, or make them the same text.")
    else:
        prompt = in_turns
    if invisible(prompt):
        raise DataError(f"no prompt: field '{printable(p_name, 60)}' {_prompt_said(given)} and "
                        f"'{printable(c_name, 60)}' holds no user message: the replies would answer no question. Fill "
                        f"it in or leave the row out.{_prompt_column_hint(row, p_name, c_name, r_name)}")
    if _same(c.text, r.text):
        raise DataError("the chosen and rejected replies are the same text (spacing, invisible characters and Unicode "
                        "forms aside): nothing to prefer.")
    return PreferenceExample(prompt=prompt, response=c.text, rejected=r.text, system=system, multi_turn=multi_turn,
                             uid=_uid(row.get("id"), "id"), texts=((p_name, prompt),),
                             answer_texts=((c_name, c.text), (r_name, r.text)))


def _prompt_said(given: Any) -> str:
    """How the prompt field holds no question: missing, blank text (how blank), or messages without a user turn."""
    if given is None:
        return "is missing"
    if isinstance(given, str):
        return f"is {blank_said(given)}"
    return "holds no user message"


PROMPT_LIKE = ("question", "instruction", "input", "query", "prompt_text", "user")


def _prompt_column_hint(row: dict[str, Any], p_name: str, *taken: str) -> str:
    """Where the row holds its question under another name (Intel/orca_dpo_pairs: 'question'), how to map it."""
    others = [name for name in row if name not in (p_name, "system", *taken) and isinstance(row[name], str) and row[name].strip()]
    named = next((name for name in others if name.lower() in PROMPT_LIKE), None)
    if named is None and not others:
        return ""
    column = named or others[0]
    return (f" The row holds '{printable(column, 60)}': if that is the question, map it in the dataset entry with "
            f"columns: {{prompt: {printable(column, 60)}}}.")


def _turn_count(value: Any) -> int:
    """The user and assistant turns of a prompt given as a message list (text: one)."""
    if isinstance(value, str):
        return 1
    return sum(t["role"] != "system" for t in _turns(value, "prompt"))


def _prompt_field(value: Any, name: str, system: str) -> tuple[str, str]:
    """The prompt field's text (its user turns, for a message list) and the system turn it or the replies hold."""
    if isinstance(value, str):
        _refuse_messages_as_text(value, name)
        return _text(value, name), system
    turns = _turns(value, name)
    own = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
    return "\n\n".join(t["content"] for t in turns if t["role"] == "user"), _shared(own, system, "system turn", name,
                                                                                  "chosen")
