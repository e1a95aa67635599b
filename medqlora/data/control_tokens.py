"""Control tokens of the model's tokenizer (its chat template's turn markers, end of text) written as text in a
training row. The tokenizer reads such text as the token itself, so a row holding '<|im_end|>' would teach the
model to end its turn, or open another speaker's, in the middle of a reply: almost always a data bug (a
conversation exported with its template applied, a scraped chat log). Such rows are refused, naming the field."""

from __future__ import annotations

import re
from typing import Any

from ..config import DataSection
from ..errors import DataError
from ..secrets import printable
from .examples import Collected


def control_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens (those it matches in text as single control tokens), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = {t.content for t in added.values() if getattr(t, "special", False)}
    tokens |= set(getattr(tokenizer, "all_special_tokens", None) or ())
    return sorted((t for t in tokens if isinstance(t, str) and t.strip()), key=len, reverse=True)


def refuse_control_tokens(collected: list[Collected], tokenizer: Any, data: DataSection | None = None) -> None:
    """Refuses a system prompt (data.system_prompt, or a dataset's own) or the first dataset whose rows hold a
    control token as text, naming the setting, or the row and field, and the token."""
    tokens = control_tokens(tokenizer)
    if not tokens:
        return
    pattern = re.compile("|".join(re.escape(t) for t in tokens))
    settings = [] if data is None else [("data.system_prompt", data.system_prompt)] + [
        (f"data.datasets.{i}.system_prompt", spec.system_prompt) for i, spec in enumerate(data.datasets)]
    for name, text in settings:
        if text and (match := pattern.search(text)):
            raise DataError(
                f"{name} holds {printable(match.group(), 40)!r} as text, a control token of the model's tokenizer: "
                "it is read as the token itself, so every prompt would end the system turn (or open another) "
                "inside the system prompt. Remove that marker from the setting; the chat template adds the turn "
                "markers itself.")
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
