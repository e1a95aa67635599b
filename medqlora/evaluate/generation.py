"""eval.method: generate: greedy decoding, then the answer is extracted from the reply (``extract_answer``);
replies with no answer, or with several different ones, are counted as unparsed (and wrong)."""

from __future__ import annotations

import functools
import re
from typing import Any

from ..config import KitConfig
from .items import EvalItem
from .prompts import evaluation_length, prompt_ids

FINAL_RESPONSE = [re.compile(r"##\s*Final Response\s*(.*)", re.S | re.I), re.compile(r"<response>(.*?)(</response>|$)", re.S)]


@functools.lru_cache(maxsize=64)
def letter_patterns(letters: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a letter mentioned as an answer anywhere, a reply opening with one) for the option letters an item has:
    A-D, or A-J where a set has ten options (choices.py keys every layout by capital letters)."""
    cls = "[" + "".join(sorted(set(letters))) + "]"
    mentioned = re.compile(rf"(?:\(({cls})\)|\*\*({cls})\*\*|(?:option|choice)\s+({cls})\b"
                           rf"|(?:^|\s)({cls})[.):](?=\s|$))")
    return mentioned, re.compile(rf"[\s*(]*({cls})(?:[.):*]|\s*$)")


_STATED = re.compile(r"(?:the\s+)?(?:correct\s+|final\s+)?answer\s+is\s*:?\s*\(?\**([A-Za-z]+)\b", re.I)


def _stated_answers(section: str) -> list[str]:
    """The X of each 'the answer is X'; a lower-case single letter followed by a word is the article of a phrase
    ('the answer is a benign tumour'), not option A."""
    return [m.group(1) for m in _STATED.finditer(section)
            if not (len(m.group(1)) == 1 and m.group(1).islower() and re.match(r"\s+[A-Za-z]", section[m.end():]))]


def extract_answer(text: str, choices: list[str], option_texts: dict[str, str] | None = None) -> str | None:
    """The answer a reply gives, or None when it gives none or several different ones.

    Looks in the final-response section when there is one (HuatuoGPT-o1 '## Final Response' or
    <response> tags), then for 'the answer is X', then for the reply opening with an answer, then for
    exactly one answer (or exactly one option's text) mentioned as a word.
    """
    section = text
    for pattern in FINAL_RESPONSE:
        match = pattern.search(text)
        if match:
            section = match.group(1)
            break
    lookup = {c.lower(): c for c in choices}
    stated = {lookup[m.lower()] for m in _stated_answers(section) if m.lower() in lookup}
    if len(stated) == 1:
        return stated.pop()
    if stated:
        return None
    words = len(choices[0]) > 1
    mentioned, opens = letter_patterns(tuple(choices)) if not words else (None, None)
    opening = re.match(r"\W*([A-Za-z]+)\b", section) if opens is None else opens.match(section)
    if opening and opening.group(1).lower() in lookup:
        return lookup[opening.group(1).lower()]
    if mentioned is None:
        return None  # yes/no/maybe also occur in prose ("there is no evidence"): no guessing
    letters = {g for groups in mentioned.findall(section) for g in groups if g} & set(choices)
    if len(letters) == 1:
        return letters.pop()
    if option_texts and not letters:
        hits = [letter for letter, option in option_texts.items() if option and option.lower() in section.lower()]
        if len(hits) == 1:
            return hits[0]
    return None


def generated_replies(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem]) -> list[tuple[str, bool]]:
    """Greedy (or configured) replies to the items' prompts, and whether each prompt's context was shortened to
    leave room for eval.max_new_tokens within the evaluation length."""
    from ..generate import generate_texts

    limit = evaluation_length(cfg, model) - cfg.eval.max_new_tokens
    fitted = [prompt_ids(cfg, tokenizer, item, limit, reserved=cfg.eval.max_new_tokens) for item in items]
    replies = generate_texts(cfg, model, tokenizer, [tokenizer.decode(ids) for ids, _ in fitted],
                             cfg.eval.max_new_tokens, cfg.eval.batch_size)
    return [(reply, shortened) for reply, (_, shortened) in zip(replies, fitted, strict=True)]


def score_generate(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem]) -> list[dict[str, Any]]:
    replies = generated_replies(cfg, model, tokenizer, items)
    return [{"pred": extract_answer(reply, item.choices, item.option_texts), "reply": reply, "shortened": shortened}
            for item, (reply, shortened) in zip(items, replies, strict=True)]
