"""The leakage guard: no evaluation question may be trained on, wherever in a training example it sits.

Every text that reaches a training prompt is compared (instruction, input, context, options, every
turn of a chat, system and assistant turns included), not only the example's "question", after the
same normalisation on both sides (``normalize``): markup of scraped pages undone (HTML tags removed, entities
and percent-encoding decoded), Unicode NFKC, format (Cf) and zero-width characters and combining marks removed,
case folded, runs of punctuation and whitespace made one space.

What is refused, and how training items are searched: overlap.py; the normalisation: leakage_text.py.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError
from .leakage_text import legacy_question_hash, normalize, question_hash, words
from .overlap import CONFIG, MIN_WORDS, PART_MIN_WORDS, Item, Overlap, find_overlap

__all__ = ["CONFIG", "MIN_WORDS", "PART_MIN_WORDS", "RECORDED", "SHOWN", "Item", "Overlap", "check", "find_overlap",
           "flagged_hashes", "legacy_question_hash", "normalize", "question_hash", "words"]

SHOWN = 5  # overlaps listed in the refusal
RECORDED = 10_000  # overlaps recorded in data_stats.json when they are allowed


def check(train: list[Item], evaluation: list[Item], allow: bool, ngram: int = 13,
          threshold: float = 0.5) -> dict[str, Any]:
    """Refuse to train on evaluation questions, listing a few, unless the user allows it."""
    overlap = find_overlap(train, evaluation, ngram, threshold)
    exact = sum(o.kind == "exact" for o in overlap)
    if overlap and not allow:
        shown = "\n".join(f"  - {o.describe()}" for o in overlap[:SHOWN])
        more = f"\n  ... and {len(overlap) - SHOWN} more" if len(overlap) > SHOWN else ""
        raise DataError(
            f"{len(overlap)} training examples contain evaluation questions ({exact} exact, "
            f"{len(overlap) - exact} near duplicates); training on them would inflate the evaluation:\n"
            f"{shown}{more}\nRemove them from the training data, or set data.allow_eval_overlap: true if you "
            "really mean to."
        )
    distinct = {normalize(e.question) for e in evaluation if e.part is None} - {""}  # a benchmark's items are often test items too
    result: dict[str, Any] = {"evaluation_items_checked": len(distinct), "overlapping_training_items": len(overlap)}
    if overlap:  # allowed: say what was let through, so that evaluation can refuse these items later
        result.update(exact=exact, near_duplicates=len(overlap) - exact,
                      overlaps=[o.to_dict() for o in overlap[:RECORDED]])
    return result


def flagged_hashes(stats: dict[str, Any]) -> set[str]:
    """Question hashes of the evaluation items a run was allowed to train on (from its data_stats.json)."""
    hashes: set[str] = set()
    for entry in stats.values() if isinstance(stats, dict) else []:
        guard = entry.get("leakage_guard") if isinstance(entry, dict) else None
        for overlap in (guard or {}).get("overlaps", []) if isinstance(guard, dict) else []:
            if isinstance(overlap, dict) and isinstance(overlap.get("evaluation_question_sha1_16"), str):
                hashes.add(overlap["evaluation_question_sha1_16"])
    return hashes
