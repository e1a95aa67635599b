"""Verifiable rewards for GRPO: named functions with TRL's reward signature, each tested on crafted replies.

A reward function receives the completions of a generation batch and the columns of their rows
(``kind``, ``answer``, ``choices``, ``option_texts``), and returns one float per completion, or None
where it does not apply (TRL leaves those out of that reward's mean). Answers are read with
``evaluate.extract_answer``, the one implementation the ``generate`` evaluation also uses, so a reward
rises exactly when that evaluation would count the reply correct.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import json_text
from .evaluate import FINAL_RESPONSE, PUBMEDQA_LABELS, extract_answer, split_cot
from .leakage import normalize

Reward = Callable[..., list[float | None]]

MULTIPLE_CHOICE = "multiple_choice"
PUBMEDQA = "pubmedqa"
ANSWER = "answer"  # prompt_answer rows


def _options(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return raw
    return json_text.loads(raw) if raw else {}


def multiple_choice(completions: list[str], kind: list[str], answer: list[str], choices: list[list[str]],
                    option_texts: list[str] | None = None, **_: Any) -> list[float | None]:
    """1.0 when the reply's answer (as the generate evaluation reads it) is the right option, else 0.0;
    None for rows that are not multiple choice."""
    texts = option_texts or [""] * len(completions)
    return [float(extract_answer(c, list(ch), _options(o)) == a) if k == MULTIPLE_CHOICE else None
            for c, k, a, ch, o in zip(_texts(completions), kind, answer, choices, texts, strict=True)]


def pubmedqa_label(completions: list[str], kind: list[str], answer: list[str], **_: Any) -> list[float | None]:
    """1.0 when the reply's yes/no/maybe (read as the generate evaluation reads it) is the gold label."""
    return [float(extract_answer(c, PUBMEDQA_LABELS) == a) if k == PUBMEDQA else None
            for c, k, a in zip(_texts(completions), kind, answer, strict=True)]


def final_section(text: str) -> str:
    """The final response of a reply ('## Final Response' or <response>), else the whole reply."""
    for pattern in FINAL_RESPONSE:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return text


def answer_match(completions: list[str], kind: list[str], answer: list[str], **_: Any) -> list[float | None]:
    """prompt_answer rows: 1.0 when the final response opens with the answer or says 'the answer is <answer>'
    (compared as normalized words), else 0.0."""
    rewards: list[float | None] = []
    for c, k, a in zip(_texts(completions), kind, answer, strict=True):
        if k != ANSWER:
            rewards.append(None)
            continue
        final, gold = normalize(final_section(c)), normalize(a)
        stated = re.search(r"\banswer is (.*)", final)
        hit = bool(gold) and (_opens_with(final, gold) or (stated is not None and _opens_with(stated.group(1), gold)))
        rewards.append(float(hit))
    return rewards


def _opens_with(text: str, gold: str) -> bool:
    text = text.strip()
    return text == gold or text.startswith(gold + " ")


def format_reward(style: str) -> Reward:
    """The format of the run: huatuo ('## Thinking' then '## Final Response') or tags (<think>...</think> then
    <response>...</response>), graded so that a small model finds the slope: 0.25 each for a reasoning part,
    a final part, the two in that order, and both non-empty. answer: the plain answer format of the kit's
    multiple-choice and PubMedQA rows ('C. <option>', 'yes. ...'): 0.5 for a reply that gives one answer (read
    by the evaluation's extraction), 0.5 more when it opens with it."""

    def reward(completions: list[str], choices: list[list[str]] | None = None, option_texts: list[str] | None = None,
               **_: Any) -> list[float | None]:
        texts = _texts(completions)
        if style != "answer":
            return [format_score(c, style) for c in texts]
        rows = zip(texts, choices or [[]] * len(texts), option_texts or ["{}"] * len(texts), strict=True)
        return [answer_format_score(c, list(ch), _options(o)) if ch else None for c, ch, o in rows]

    reward.__name__ = f"format_{style}"
    return reward


_MARKERS = {"huatuo": (re.compile(r"##\s*Thinking", re.IGNORECASE), re.compile(r"##\s*Final Response", re.IGNORECASE)),
            "tags": (re.compile(r"<think>"), re.compile(r"<response>"))}


def format_score(text: str, style: str) -> float:
    opening, closing = _MARKERS[style]
    think, final = opening.search(text), closing.search(text)
    score = 0.25 * bool(think) + 0.25 * bool(final)
    if think and final and think.start() < final.start():
        score += 0.25
        reasoning, response = split_cot(text, style)
        if reasoning and response:
            score += 0.25
    return score


def answer_format_score(text: str, choices: list[str], option_texts: dict[str, str] | None = None) -> float:
    given = extract_answer(text, choices, option_texts)
    if given is None:
        return 0.0
    words = len(choices[0]) > 1
    opening = re.match(r"\W*([A-Za-z]+)\b", text) if words else re.match(r"[\s*(]*([A-Z])[.):]", text)
    return 1.0 if opening and opening.group(1).lower() == given.lower() else 0.5


def overlong_penalty(max_length: int, buffer: int) -> Reward:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer tokens, then falling linearly to -1 at
    max_length (a completion cut there reached it)."""

    def reward(completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [overlong_score(len(ids), max_length, buffer) for ids in completion_ids]

    reward.__name__ = "overlong"
    return reward


def overlong_score(length: int, max_length: int, buffer: int) -> float:
    start = max_length - buffer
    if length >= max_length:
        return -1.0
    if buffer <= 0 or length <= start:
        return 0.0
    return -(length - start) / buffer


def _texts(completions: list[Any]) -> list[str]:
    """Plain-text completions as they are; chat completions ([{'role', 'content'}]) by their content."""
    return [c if isinstance(c, str) else "".join(m.get("content", "") for m in c) for c in completions]


def build(grpo: Any, kinds: set[str], style: str | None) -> tuple[list[Reward], list[float]]:
    """The reward functions of a run and their weights: the answer rewards of the row kinds it trains on, the
    format reward of its style, and the overlong penalty (those weighted 0 are left out)."""
    w = grpo.rewards
    chosen: list[tuple[Reward, float]] = []
    if MULTIPLE_CHOICE in kinds:
        chosen.append((multiple_choice, w.multiple_choice))
    if PUBMEDQA in kinds:
        chosen.append((pubmedqa_label, w.pubmedqa_label))
    if ANSWER in kinds:
        chosen.append((answer_match, w.answer))
    if style:
        chosen.append((format_reward(style), w.format))
    chosen.append((overlong_penalty(grpo.max_completion_length, grpo.overlong_tokens()), w.overlong))
    chosen = [(f, weight) for f, weight in chosen if weight > 0]
    return [f for f, _ in chosen], [weight for _, weight in chosen]
