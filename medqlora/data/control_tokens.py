"""Control tokens of the model's tokenizer (its chat template's turn markers, end of text) written as text in
anything that reaches the model's prompt. The tokenizer reads such text as the token itself, so a training row
holding '<|im_end|>' would teach the model to end its turn, or open another speaker's, in the middle of a reply,
and a question, a query, a system prompt or a benchmark item holding one would end its turn inside the prompt:
almost always a data bug (a conversation exported with its template applied, a scraped chat log).

One rule for every text: ``control_token_in`` finds the token, ``refuse_control_text`` refuses it naming where it
was. Each boundary applies it to the texts it brings in: the training rows and the config's prompt texts
(``refuse_control_tokens``), --mode chat's --prompt and typed lines (chat.py), the queries file (generate.py) and the
benchmark items (evaluate/prompts.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..config import DataSection
from ..errors import DataError, MedQLoRAError
from ..secrets import printable
from .examples import Collected

WHY = ("a control token of the model's tokenizer: it is read as the token itself, so the prompt would end its turn "
       "(or open another speaker's) inside the text")


def control_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens (those it matches in text as single control tokens), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = {t.content for t in added.values() if getattr(t, "special", False)}
    tokens |= set(getattr(tokenizer, "all_special_tokens", None) or ())
    return sorted((t for t in tokens if isinstance(t, str) and t.strip()), key=len, reverse=True)


def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    tokens = control_tokens(tokenizer) if tokenizer is not None else []
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def control_token_in(tokenizer: Any, texts: Iterable[tuple[str, str | None]]) -> tuple[str, str] | None:
    """(where, token) of the first of ``texts`` ((where, text) pairs) that holds a control token of the
    tokenizer as text; None when none does (or there is no tokenizer)."""
    pattern = _pattern(tokenizer)
    if pattern is None:
        return None
    for where, text in texts:
        if isinstance(text, str) and (match := pattern.search(text)):
            return where, match.group()
    return None


def control_token_said(where: str, token: str) -> str:
    """The one message for a control token found in ``where``."""
    return (f"{where} holds {printable(token, 40)!r} as text, {WHY}. Remove that marker (the chat template adds the "
            "turn markers itself; a conversation belongs in a chat 'messages' list, one message per turn).")


def refuse_control_text(tokenizer: Any, texts: Iterable[tuple[str, str | None]],
                        error: type[MedQLoRAError] = DataError) -> None:
    """Refuses the first of ``texts`` that holds a control token as text, with ``error``, naming where it was."""
    hit = control_token_in(tokenizer, texts)
    if hit is not None:
        raise error(control_token_said(*hit))


def prompt_settings(data: DataSection) -> list[tuple[str, str | None]]:
    """The config's texts that go into every prompt: the system prompts and the datasets' prompt templates."""
    texts: list[tuple[str, str | None]] = [("data.system_prompt", data.system_prompt)]
    for i, spec in enumerate(data.datasets):
        texts += [(f"data.datasets.{i}.system_prompt", spec.system_prompt),
                  (f"data.datasets.{i}.prompt_template", spec.prompt_template)]
    return texts


def refuse_control_tokens(collected: list[Collected], tokenizer: Any, data: DataSection | None = None) -> None:
    """Refuses a prompt setting (prompt_settings) or the first dataset whose rows hold a control token as text,
    naming the setting, or the row and field, and the token."""
    if data is not None:
        refuse_control_text(tokenizer, prompt_settings(data))
    pattern = _pattern(tokenizer)
    if pattern is None:
        return
    for c in collected:
        found = [(ex, name, match.group()) for ex in c.examples for name, text in _fields(ex)
                 if (match := pattern.search(text))]
        if found:
            ex, name, token = min(found, key=lambda hit: hit[0].row or 0)
            rows = len({id(e) for e, _, _ in found})
            raise DataError(
                f"{printable(c.spec.source, 200)} row {ex.row or '?'}: field '{printable(name, 60)}' holds "
                f"{printable(token, 40)!r} as text ({rows} row(s) of this dataset hold such tokens), a control token "
                "of the model's tokenizer: it is read as the token itself, so training would teach the model to end "
                "its turn or open another one inside the text. Remove those markers from the data (a conversation "
                "belongs in a chat 'messages' list, one message per turn), or leave the rows out.")


def _fields(example: Any) -> list[tuple[str, str]]:
    """Each text field of a row once (the guard's joined views left out)."""
    return [(name, text) for name, text in example.guard_texts() if not name.endswith("(joined)")]


def prompt_fields(example: Any) -> list[tuple[str, str]]:
    """The texts of an example that reach its prompt (its fields, else the prompt as rendered)."""
    if example.texts:
        return [(name, text) for name, text in example.texts if not name.endswith("(joined)")]
    user = example.prompt_template.format(context=example.context) if example.context is not None else example.prompt
    return [("prompt", user)]
