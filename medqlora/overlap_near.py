"""Near copies of an evaluation question that the n-gram share misses (overlap.py): one or two words of the question
changed. A changed word in the middle of a question of fewer than about 40 words breaks most of its 13-word sequences
(all of them under 26 words), so the share stays under the threshold although the training text holds the question.

What counts as a near copy: the question's words aligned in order with a stretch of one training text (difflib), the
words changed, left out or added counted, when at most

- 1 word of a question of MISSPELT_MIN_WORDS (6) to 12 words is changed, and it is misspelt;
- 2 words of a question of 13 words or more (one in TYPO_EVERY (5), at most MAX_CHANGES (3)) are changed, and they
  are misspelt, except that one word in 20 (a question of 20 words or more) may be any other word, left out or added.

A possible near copy: as many words changed, but more of them other words than that (``risk`` -> ``hazard``, ``if
any`` added), at most one in a question under 13 words and two from 13 words on. Two questions on one topic differ
so too (``type 1`` / ``type 2``, ``lysosomal`` / ``glycogen``): the guard cannot tell a reworded copy from another
question, so these are reported, for the user to look at, and refused only where data.possible_near_copies says so.
Only from NEAR_MIN_WORDS (8) words on: in a shorter question one other word makes another question too often ("Which
of the following is microaerophilic" and four MedMCQA training questions with another word for its last one).

Misspelt: one typo apart (at most 2 edits, letters only, 5 or more of them): ``hypertenison`` for ``hypertension``,
not ``type 1`` for ``type 2`` or ``men`` for ``women``; two questions on the same topic differ by more. Words joined
or split (``noninvasive`` for ``non-invasive``) count as one misspelt word.

Candidates: a question is cut into pieces, one more than the words it may have changed, so a copy holds one piece
whole; pieces are indexed like n-grams, and a training text holding one is a candidate (a question of 3n words or more
needs no pieces: its disjoint n-grams serve, and the n-gram search finds them).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .leakage_text import ARTICLE

MISSPELT_MIN_WORDS = 6  # shorter questions (5 words) are matched exactly or by their n-grams only
NEAR_MIN_WORDS = 8  # shorter questions have no possible near copies (and are not looked for in another order)
LONG_WORDS = 13  # questions of this many words or more may have two words changed
TYPO_EVERY = 5  # and from 15 words on, one word in this many
MAX_CHANGES = 3  # but at most this many
POSSIBLE_OTHERS = (1, 2)  # other words of a possible near copy: under LONG_WORDS words, from LONG_WORDS on
OTHER_WORD_EVERY = 20  # of which one word in this many may be any word (not a misspelling), left out or added
MISSPELT_MIN = 5  # letters of the shortest word a misspelling is taken for
MAX_STARTS = 50  # places in one training text a question is aligned with (a piece repeated in a long text)


@dataclass(frozen=True)
class Changes:
    """The words of a near copy that differ from the question's, as shown: "'weaknes' for 'weakness'"."""
    shown: tuple[str, ...]
    count: int  # words changed, left out or added
    typos: int  # of which misspelt
    possible: bool = False  # a possible near copy (see the module), not a near copy
    articles: int = 0  # articles added or left out besides (not changes: the question is the same)

    @property
    def misspelt(self) -> bool:
        return self.typos == self.count


def changes_allowed(size: int) -> int:
    return 0 if size < MISSPELT_MIN_WORDS else 1 if size < LONG_WORDS else min(MAX_CHANGES, max(2, size // TYPO_EVERY))


def pieces(words: list[str], ngram: int) -> list[tuple[int, list[str]]]:
    """The pieces (start, words) of a question indexed to find its near copies; none for a question too short to
    have a word changed, or long enough that its disjoint n-grams serve."""
    size, allowed = len(words), changes_allowed(len(words))
    if not allowed or ngram <= 0 or size >= 3 * ngram:
        return []
    return _cut(words, allowed + 1)


def _cut(words: list[str], count: int) -> list[tuple[int, list[str]]]:
    bounds = [round(i * len(words) / count) for i in range(count + 1)]
    return [(bounds[i], words[bounds[i]:bounds[i + 1]]) for i in range(count)]


def landmarks(words: list[str], ngram: int) -> list[tuple[int, list[str]]]:
    """Stretches of the question (start, words) one of which a near copy holds whole."""
    found = pieces(words, ngram)
    if found or ngram <= 0:
        return found
    return [(start, words[start:start + ngram]) for start in range(0, len(words) - ngram + 1, ngram)]


def misspelling(a: str, b: str) -> bool:
    """Two different words that are one typo apart (at most 2 edits, letters only, 5 characters or more), or one with
    a footnote number glued to it: a misspelling, not another word (type 1 / type 2, dose / dosa are not)."""
    if footnote(a, b) or footnote(b, a):
        return True
    if min(len(a), len(b)) < MISSPELT_MIN or not (a.isalpha() and b.isalpha()) or abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1] <= 2


def footnote(marked: str, word: str) -> bool:
    """``marked`` is ``word`` with a footnote number glued to it (``women1``, ``inhibitors23``: text taken from a paper's
    PDF, or a superscript ³ made a digit): taken for a misspelling of it."""
    return len(word) >= MISSPELT_MIN and word.isalpha() and marked.startswith(word) and \
        marked[len(word):].isdigit() and len(marked) - len(word) <= 3


def _starts(split: list[str], marks: list[tuple[int, list[str]]], size: int) -> list[int]:
    """Where in a training text the question would start, by the landmarks it holds whole."""
    starts: set[int] = set()
    for offset, mark in marks:
        first, length = mark[0], len(mark)
        for position, word in enumerate(split):
            if word == first and split[position:position + length] == mark:
                starts.add(position - offset)
                if len(starts) >= MAX_STARTS:
                    return sorted(starts)
    return sorted(starts)


def _changes(question: list[str], window: list[str], allowed: int) -> Changes | None:
    """The changes that turn the question into the stretch of ``window`` aligned with it (words of the window
    before and after that stretch are not changes); None when there are more than ``allowed``."""
    present = set(window)
    if sum(word not in present for word in question) > allowed:  # cheap: each missing word is a change
        return None
    codes = [code for code in difflib.SequenceMatcher(None, question, window, autojunk=False).get_opcodes()
             if code[0] != "equal"]
    if codes and codes[0][0] == "insert" and codes[0][1] == 0:
        codes = codes[1:]
    if codes and codes[-1][0] == "insert" and codes[-1][1] == len(question):
        codes = codes[:-1]
    articles = [code for code in codes if _articles_only(code, question, window)]
    codes = [code for code in codes if code not in articles]  # an article added or left out is no change
    count = sum(1 if _joined(question[i1:i2], window[j1:j2]) else max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in codes)
    if count > allowed:
        return None
    shown: list[str] = []
    typos = 0
    for tag, i1, i2, j1, j2 in codes:
        expected, found = question[i1:i2], window[j1:j2]
        if _joined(expected, found):
            typos += 1
            shown.append(f"'{' '.join(found)}' for '{' '.join(expected)}'")
            continue
        if tag == "replace" and len(expected) == len(found):
            pairs = list(zip(found, expected))
            typos += sum(misspelling(*pair) for pair in pairs)
            shown += [f"'{f}' for '{e}'" for f, e in pairs]
            continue
        shown.append(f"'{' '.join(found)}' for '{' '.join(expected)}'" if tag == "replace" else
                     f"'{' '.join(expected)}' left out" if tag == "delete" else f"'{' '.join(found)}' added")
    return Changes(tuple(shown), count, typos, articles=len(articles))


def _articles_only(code: tuple[str, int, int, int, int], question: list[str], window: list[str]) -> bool:
    """An article added or left out ('as alternatives' for 'as an alternative'): the guard's forms make every
    article one word (leakage_text.compared), and its presence does not change the question."""
    tag, i1, i2, j1, j2 = code
    changed = question[i1:i2] if tag == "delete" else window[j1:j2] if tag == "insert" else []
    return bool(changed) and all(word == ARTICLE for word in changed)


def _joined(expected: list[str], found: list[str]) -> bool:
    """Words joined or split, their letters the same ('noninvasive' for 'non-invasive', 'health care' for
    'healthcare'): one misspelt word."""
    return len(expected) != len(found) and bool(expected) and bool(found) and "".join(expected) == "".join(found)


def judged(changes: Changes | None, size: int) -> Changes | None:
    """``changes`` when they make a near copy, marked ``possible`` when they make a possible one (see the module);
    None when neither."""
    if changes is None or (changes.count == 0 and not changes.articles):
        return None
    if changes.count == 0:  # the question itself, its articles aside
        return changes
    others = changes.count - changes.typos
    if others <= size // OTHER_WORD_EVERY:
        return changes
    if size >= NEAR_MIN_WORDS and others <= POSSIBLE_OTHERS[size >= LONG_WORDS]:
        return Changes(changes.shown, changes.count, changes.typos, possible=True)
    return None


def near_copy(question: list[str], marks: list[tuple[int, list[str]]],
              fields: list[tuple[str, list[str], set[str]]]) -> tuple[str, Changes] | None:
    """The first field (name, words, word set) holding ``question`` with a few words changed (see the module),
    and the changes; else the first holding a possible near copy; ``marks``: the question's ``landmarks``."""
    size, allowed = len(question), changes_allowed(len(question))
    if not allowed or not marks:
        return None
    wanted = set(question)
    possible = None
    for name, split, present in fields:
        variants = [(question, marks, None)]
        if len(wanted - present) > allowed:  # cheap: a changed word is the only way one can be missing
            variants = _abbreviated(question, marks, present)
        for asked, asked_marks, abbreviation in variants:
            if len(set(asked) - present) > allowed:
                continue
            for start in _starts(split, asked_marks, len(asked)):
                window = split[max(0, start - allowed):start + len(asked) + allowed]
                changes = judged(_with_abbreviation(_changes(asked, window, allowed), abbreviation, allowed), size)
                if changes is not None and not changes.possible:
                    return name, changes
                possible = possible or (changes and (name, changes))
    return possible


ABBREVIATED = (3, 6)  # the fewest and most words an abbreviation of their initials stands for (NSCLC: 5)


def _abbreviated(question: list[str], marks: list[tuple[int, list[str]]],
                 present: set[str]) -> list[tuple[list[str], list[tuple[int, list[str]]], str]]:
    """The question with a run of its words written as their initials, where a training text holds that
    abbreviation ("advanced nsclc" for "advanced non small cell lung cancer"): each such question, its landmarks
    (those outside the run, moved), and the change as shown."""
    found = []
    for length in range(ABBREVIATED[0], ABBREVIATED[1] + 1):
        for first in range(len(question) - length + 1):
            run = question[first:first + length]
            initials = "".join(word[0] for word in run)
            if initials not in present or not initials.isalpha():
                continue
            moved = [(offset - (length - 1) if offset >= first + length else offset, mark) for offset, mark in marks
                     if offset + len(mark) <= first or offset >= first + length]
            if moved:
                found.append((question[:first] + [initials] + question[first + length:], moved,
                              f"'{initials}' for '{' '.join(run)}'"))
    return found


def _with_abbreviation(changes: Changes | None, abbreviation: str | None, allowed: int) -> Changes | None:
    """The changes of a question found with a run of its words abbreviated, that run counted as one misspelt word."""
    if abbreviation is None or changes is None or changes.count + 1 > allowed:
        return changes if abbreviation is None else None
    return Changes((abbreviation, *changes.shown), changes.count + 1, changes.typos + 1)
