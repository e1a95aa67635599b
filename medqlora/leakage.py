"""The leakage guard: no evaluation question may be trained on.

Questions are compared after normalisation (case, punctuation and whitespace ignored), so a
PubMedQA test question copied into a user's JSONL is caught as well as the same PMID.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import DataError

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return _NON_WORD.sub(" ", str(text).lower()).strip()


def question_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    dataset: str  # which dataset (training or evaluation) it comes from
    uid: str | None
    question: str


def find_overlap(train: list[Item], evaluation: list[Item]) -> list[tuple[Item, Item]]:
    """Pairs (training item, evaluation item) with the same normalised question."""
    by_hash = {question_hash(e.question): e for e in evaluation if normalize(e.question)}
    return [(t, by_hash[h]) for t in train if (h := question_hash(t.question)) in by_hash]


def check(train: list[Item], evaluation: list[Item], allow: bool) -> dict[str, int]:
    """Refuse to train on evaluation questions, listing a few, unless the user allows it."""
    overlap = find_overlap(train, evaluation)
    if overlap and not allow:
        shown = "\n".join(
            f"  - training '{t.dataset}' item {t.uid or '?'} = evaluation '{e.dataset}' item {e.uid or '?'}: "
            f"{t.question[:90]!r}"
            for t, e in overlap[:5]
        )
        raise DataError(
            f"{len(overlap)} training examples are evaluation questions; training on them would inflate the "
            f"evaluation:\n{shown}\nRemove them from the training data, or set data.allow_eval_overlap: true "
            "if you really mean to."
        )
    return {"evaluation_items_checked": len(evaluation), "overlapping_training_items": len(overlap)}
