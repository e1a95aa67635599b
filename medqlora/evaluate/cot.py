"""Chain-of-thought benchmarks (medical-o1 style): the reasoning and final response of a reply, format
compliance, reasoning length and ROUGE-L of the final response."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from ..config import KitConfig
from ..distributed import shared_map
from .generation import generated_replies
from .items import EvalItem
from .metrics import speed_of


def split_cot(text: str, style: str) -> tuple[str | None, str | None]:
    """(reasoning, final response) of a reply in the given style; None for a missing part."""
    if style == "tags":
        thinking = re.search(r"<think>(.*?)(?:</think>|$)", text, re.S)
        final = re.search(r"<response>(.*?)</response>", text, re.S)
    else:
        thinking = re.search(r"## Thinking\s*(.*?)\s*(?:## Final Response|$)", text, re.S)
        final = re.search(r"## Final Response\s*(.*)", text, re.S)
    return (thinking.group(1).strip() if thinking else None, final.group(1).strip() if final else None)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def cot_metrics(replies: list[str], references: list[str], style: str) -> dict[str, Any]:
    """Format compliance (both parts present), replies that at least open the reasoning part, mean reasoning
    length in words (of those), ROUGE-L of the final response (of the whole reply where it has none)."""
    parts = [split_cot(r, style) for r in replies]
    closed = [style != "tags" or "</think>" in r for r in replies]
    compliant = [t is not None and f is not None and c for (t, f), c in zip(parts, closed, strict=True)]
    reasoning = [len(t.split()) for t, _ in parts if t is not None]
    rouge = [rouge_l(f if f is not None else r, split_cot(ref, style)[1] or ref)
             for (_, f), r, ref in zip(parts, replies, references, strict=True)]
    n = len(replies)
    return {
        "items": n,
        "started_reasoning": round(100 * len(reasoning) / n, 2) if n else math.nan,
        "format_compliance": round(100 * sum(compliant) / n, 2) if n else math.nan,
        "mean_reasoning_words": round(sum(reasoning) / len(reasoning), 1) if reasoning else 0.0,
        "rouge_l": round(100 * sum(rouge) / n, 2) if n else math.nan,
    }


def score_cot(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem], style: str) -> dict[str, Any]:
    began = time.perf_counter()
    answered = shared_map(lambda part: generated_replies(cfg, model, tokenizer, part), items)
    replies = [reply for reply, _ in answered]
    metrics = cot_metrics(replies, [i.gold for i in items], style)
    metrics.update(method="generate", style=style, **speed_of(len(items), time.perf_counter() - began),
                   shortened=sum(shortened for _, shortened in answered),
                   per_item=[{"uid": i.uid, "reply": r} for i, r in zip(items, replies, strict=True)])
    return metrics
