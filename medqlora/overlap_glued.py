"""Evaluation questions whose words were glued together in a training text (overlap.py): every blank removed
("Doadjuvantaromatase..."), or replaced by zero-width spaces, which the guard removes (leakage_text.py). The words of
such a text are not the question's, so neither the exact match nor the n-grams see it; the model still reads the
whole question.

A question of at least ``MIN_LETTERS`` letters (without its blanks) is looked for, exactly, in the training texts
without their blanks; only texts holding a word of ``LONG_WORD`` characters or more that no evaluation question
holds (words glued together) are searched, so ordinary text costs one look at its longest word."""

from __future__ import annotations

from typing import Any

MIN_LETTERS = 40  # shorter questions without blanks are too likely to be found inside other texts
LONG_WORD = 20  # a training word this long that no evaluation question holds: words glued together?
KEY = 20  # the first letters of a glued question, its key in the index


class GluedQuestions:
    """The long evaluation questions without their blanks, and the training texts found holding one."""

    def __init__(self, questions: list[tuple[list[str], Any]], vocab: dict[str, int]) -> None:
        self.index: dict[str, list[tuple[str, Any]]] = {}
        self.vocab = vocab
        for split, item in questions:
            glued = "".join(split)
            if len(glued) >= MIN_LETTERS:
                self.index.setdefault(glued[:KEY], []).append((glued, item))
        self.found: dict[int, tuple[Any, str]] = {}  # train index -> (evaluation item, field)

    def look(self, t_index: int, field: str, split: list[str]) -> None:
        """Note the training text ``split`` (the words of field ``field`` of training item ``t_index``) when it
        holds a long question with its blanks removed."""
        if not self.index or not split or t_index in self.found:
            return
        if max(map(len, split)) < LONG_WORD or all(len(word) < LONG_WORD or word in self.vocab for word in split):
            return
        text = "".join(split)
        index = self.index
        for start in range(len(text) - MIN_LETTERS + 1):
            for glued, item in index.get(text[start:start + KEY], ()):
                if text.startswith(glued, start):
                    self.found[t_index] = (item, field)
                    return
