"""The leakage guard: no evaluation question may be trained on, wherever in a training example it sits.

Every text that reaches a training prompt is compared (instruction, input, context, options, every
turn of a chat, system and assistant turns included), not only the example's "question", after the
same normalisation on both sides (``normalize``): markup of scraped pages undone (HTML tags removed, entities
and percent-encoding decoded), Unicode NFKC, format (Cf) and zero-width characters and combining marks removed,
case folded, runs of punctuation and whitespace made one space; its words then compared in one form each
(``compared``: plurals, possessives, forms of be/do/have, articles, digits for look-alike letters).

What is refused, and how training items are searched: overlap.py; the normalisation: leakage_text.py.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import DataError
from .leakage_text import legacy_question_hash, normalize, question_hash, words
from .overlap import CONFIG, MIN_WORDS, PART_MIN_WORDS, Item, Overlap, find_overlap

__all__ = ["CONFIG", "MIN_WORDS", "PART_MIN_WORDS", "RECORDED", "SHOWN", "Item", "Overlap", "check", "find_overlap",
           "flagged_hashes", "legacy_question_hash", "normalize", "question_hash", "words"]

SHOWN = 5  # overlaps listed in the refusal
RECORDED = 10_000  # overlaps recorded in data_stats.json when they are allowed

log = logging.getLogger(__name__)


def check(train: list[Item], evaluation: list[Item], allow: bool, ngram: int = 13,
          threshold: float = 0.5, possible: str = "warn") -> dict[str, Any]:
    """Refuse to train on evaluation questions, listing a few, unless the user allows it. Possible near copies
    (overlap_near.py) are refused with them when ``possible`` is "refuse", else reported in a warning."""
    found = _without_seams_of_config_findings(find_overlap(train, evaluation, ngram, threshold))
    overlap = [o for o in found if possible == "refuse" or not o.possible]
    reported = [o for o in found if possible != "refuse" and o.possible]
    exact = sum(o.kind == "exact" for o in overlap)
    if overlap and not allow:
        shown = "\n".join(f"  - {o.describe()}" for o in overlap[:SHOWN])
        more = f"\n  ... and {len(overlap) - SHOWN} more" if len(overlap) > SHOWN else ""
        raise DataError(
            f"{len(overlap)} training examples contain evaluation questions ({exact} exact, "
            f"{len(overlap) - exact} near duplicates); training on them would inflate the evaluation:\n"
            f"{shown}{more}\nRemove them from the training data, or set data.allow_eval_overlap: true if you "
            f"really mean to.{_possible_hint(overlap)}"
        )
    distinct = {normalize(e.question) for e in evaluation if e.part is None} - {""}  # a benchmark's items are often test items too
    result: dict[str, Any] = {"evaluation_items_checked": len(distinct), "overlapping_training_items": len(overlap)}
    if overlap:  # allowed: say what was let through, so that evaluation can refuse these items later
        result.update(exact=exact, near_duplicates=len(overlap) - exact,
                      overlaps=[o.to_dict() for o in overlap[:RECORDED]])
    if reported:
        result.update(possible_near_copies=len(reported), possible=[o.to_dict() for o in reported[:RECORDED]],
                      warning=possible_warning(reported))
        log.warning(result["warning"])
    return result


def _without_seams_of_config_findings(found: list[Overlap]) -> list[Overlap]:
    """A question the system prompt holds alone is reported once, for the config: not again for each row whose
    joined start (the system prompt's end and the row's start, data/examples.py) holds it too."""
    in_config = {(o.evaluation.dataset, o.evaluation.uid, o.evaluation.question) for o in found
                 if o.train.dataset == CONFIG}
    if not in_config:
        return found
    return [o for o in found if not ("system_prompt + " in o.field and o.field.endswith("(joined)") and
                                     (o.evaluation.dataset, o.evaluation.uid, o.evaluation.question) in in_config)]


def possible_warning(reported: list[Overlap]) -> str:
    """The warning on possible near copies: a few listed, and what to do."""
    shown = "\n".join(f"  - {o.describe()}" for o in reported[:SHOWN])
    more = f"\n  ... and {len(reported) - SHOWN} more (data_stats.json lists them)" if len(reported) > SHOWN else ""
    return (f"{len(reported)} training examples hold an evaluation question with one or two words replaced by other "
            f"words, added or left out (besides any misspellings): a reworded copy, or another question on the same topic (the guard cannot tell which):\n"
            f"{shown}{more}\nIf they are the same question, remove those rows (or set data.possible_near_copies: "
            "refuse to have every such row refused); if they are different questions, nothing needs changing.")


def _possible_hint(overlap: list[Overlap]) -> str:
    if not any(o.possible for o in overlap):
        return ""
    return (" Some are possible near copies (a word replaced, added or left out), refused because "
            "data.possible_near_copies is refuse: set it to warn if they are different questions.")


def flagged_hashes(stats: dict[str, Any]) -> set[str]:
    """Question hashes of the evaluation items a run was allowed to train on (from its data_stats.json)."""
    hashes: set[str] = set()
    for entry in stats.values() if isinstance(stats, dict) else []:
        guard = entry.get("leakage_guard") if isinstance(entry, dict) else None
        for overlap in (guard or {}).get("overlaps", []) if isinstance(guard, dict) else []:
            if isinstance(overlap, dict) and isinstance(overlap.get("evaluation_question_sha1_16"), str):
                hashes.add(overlap["evaluation_question_sha1_16"])
    return hashes
