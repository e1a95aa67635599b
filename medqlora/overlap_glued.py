"""Evaluation questions whose blanks were moved in a training text (overlap.py): every blank removed
("Doadjuvantaromatase..."), zero-width spaces for blanks (which the guard removes, leakage_text.py), words broken across
lines without a hyphen ("cardio\\nvascular", text extracted from a PDF), letters spaced out ("D o  a d j u v a n t"). The
words of such a text are not the question's, so neither the exact match nor the n-grams see it; the model still reads
the whole question.

A question of at least ``MIN_LETTERS`` letters is looked for letter for letter, its blanks and punctuation aside: the
question's letters as one string, exactly, inside a training text's letters as one string. Index: the KEY letters at
two offsets of each remainder modulo STEP (the first ones, past runs of letters many questions start with: "which of the
following is the most"); a training text's letters are looked up at every STEP-th offset, so an occurrence of the
question meets one of its keys."""

from __future__ import annotations

from typing import Any

MIN_LETTERS = 40  # shorter questions without blanks are too likely to be found inside other texts
KEY = 20  # letters of a key
STEP = 20  # a training text's letters are looked up at every STEP-th offset (KEY + STEP - 1 <= MIN_LETTERS)
COMMON = 16  # a key this many questions start with ("whichofthefollowingi") is passed over for a later one


class GluedQuestions:
    """The long evaluation questions as strings of letters, and the training texts found holding one."""

    def __init__(self, questions: list[tuple[list[str], Any]], vocab: dict[str, int] | None = None) -> None:
        self.letters = [("".join(split), item) for split, item in questions if sum(map(len, split)) >= MIN_LETTERS]
        starts: dict[str, int] = {}  # how many questions hold a key among their first 2 x STEP
        for glued, _ in self.letters:
            for key in {glued[offset:offset + KEY] for offset in range(2 * STEP)}:
                starts[key] = starts.get(key, 0) + 1
        self.keys: dict[str, list[tuple[int, int]]] = {}  # KEY letters -> (question, offset of the key in it)
        for question, (glued, _) in enumerate(self.letters):
            for offset in _key_offsets(glued, starts):
                self.keys.setdefault(glued[offset:offset + KEY], []).append((question, offset))
        self.found: dict[int, tuple[Any, str]] = {}  # train index -> (evaluation item, field)

    def look(self, t_index: int, field: str, split: list[str]) -> None:
        """Note the training text ``split`` (the words of field ``field`` of training item ``t_index``) when its
        letters hold a long question's letters."""
        if not self.keys or not split or t_index in self.found:
            return
        text = "".join(split)
        keys = self.keys
        hits = [start for start in range(0, len(text) - KEY + 1, STEP) if text[start:start + KEY] in keys]
        for start in hits:
            for question, offset in keys[text[start:start + KEY]]:
                glued, item = self.letters[question]
                if start >= offset and text.startswith(glued, start - offset):
                    self.found[t_index] = (item, field)
                    return


def _key_offsets(glued: str, starts: dict[str, int]) -> list[int]:
    """The offsets of a question's keys: for each remainder modulo STEP, the first two whose letters fewer than COMMON
    questions start with."""
    chosen: list[int] = []
    for remainder in range(STEP):
        offsets = range(remainder, len(glued) - KEY + 1, STEP)
        chosen += [offset for offset in offsets if starts.get(glued[offset:offset + KEY], 0) < COMMON][:2]
    return chosen
