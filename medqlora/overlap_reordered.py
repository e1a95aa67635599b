"""Evaluation questions whose words were put in another order in a training text (overlap.py): clauses swapped ("In
postmenopausal women with early breast cancer, do adjuvant aromatase inhibitors increase the cardiovascular risk?"),
three clauses rearranged, or words shuffled. Every word is kept, yet each of the question's 13-word sequences is broken,
and so are the stretches the near-copy alignment (overlap_near.py) holds in order.

What counts as a reordered copy: a stretch of one training text, no longer than the question (plus ``SLACK`` words)
and within as many sentences as it has, that holds the question's content words (each as often as the question does;
``FUNCTION_WORDS`` aside: "do", "the", "in" come and go when clauses move) in any order, but for the changes the
in-order alignment allows: for a question of NEAR_MIN_WORDS (8) to 12 words one word misspelt, from 13 words two (from 15
words one in five, at most three), of
which one in 20 content words may be any other word (left out, added, or another in its place). Content words missing
and content words added count as the alignment counts them (a misspelt word in the place of another counts once). A
question with fewer than ``MIN_CONTENT`` distinct content words is not looked for so.

Two questions on one topic that differ by a content word that is no misspelling of it (another drug, "men" for
"women", "type 1" for "type 2", another outcome) are two questions; "decrease" for "increase" is two letters apart, a
misspelling, as in the in-order check. A stretch across more sentences than the question has (the end of one question
and the start of the next, in text made from one template) is none. Known limit: the word order is what is ignored,
so two questions made of the same words in another order ("risk of A in B" / "risk of B in A") are taken for one.

Candidates: the training texts (fields) are indexed by the content words of the questions they hold (one pass over
the word ids the n-gram search makes, numpy); for each question, the texts holding all but its allowed changes of its
``RARE`` rarest content words (by how many texts hold them) are counted out at once; only those are looked at word by
word.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .leakage_text import compared, unmarked
from .overlap_near import MISSPELT_MIN, NEAR_MIN_WORDS, OTHER_WORD_EVERY, Changes, changes_allowed, misspelling

# words that come and go when a question's clauses are moved (articles, forms of be/do/have, common prepositions,
# question words); negations and words of comparison or time (not, without, more, before) are content words
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been being do does did has have had of in on at to for by from with as and or "
    "that which what who whom whose this these those there it its".split())
MIN_CONTENT = 5  # questions with fewer content words are not looked for in another order
SLACK = 2  # a stretch may be this many words longer than the question (a function word added)
RARE = 6  # content words of a question counted to find its candidate texts
FIRM = 64  # the weight of a word that must be there, counting the rare words a text holds (more than RARE)
# where a sentence ends: . ? ! and a blank, or a blank line (a line break alone may wrap a sentence)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n[ \t]*\n\s*")


@dataclass(frozen=True)
class _Question:
    words: list[str]
    content: Counter  # its content words, each with how often the question holds it
    ids: list[int]  # their word ids
    item: Any
    allowed: int  # content words that may be missing or changed
    others: int  # of which not misspelt (left out, or another word in its place)
    sentences: int  # how many sentences it has: a copy is looked for within as many

    @property
    def size(self) -> int:
        return sum(self.content.values())


def _question(split: list[str], item: Any, vocab: dict[str, int]) -> _Question | None:
    content = Counter(word for word in split if word not in FUNCTION_WORDS)
    if len(split) < NEAR_MIN_WORDS or len(content) < MIN_CONTENT:
        return None
    return _Question(split, content, sorted(vocab[word] for word in content), item, changes_allowed(len(split)),
                     sum(content.values()) // OTHER_WORD_EVERY, max(1, len(sentences(item.question).starts) - 1))


class ReorderedQuestions:
    """The questions looked for in another order, the index of the training texts by their content words, and the
    reordered copies found."""

    def __init__(self, questions: list[tuple[list[str], Any]], vocab: dict[str, int]) -> None:
        import numpy as np

        self.questions = [q for split, item in questions if (q := _question(split, item, vocab)) is not None]
        self.wanted = np.zeros(len(vocab) + 1, dtype=bool)
        self.misspellable = np.zeros(len(vocab) + 1, dtype=bool)  # words that a misspelling may stand for
        for q in self.questions:
            for word in q.content:
                self.wanted[vocab[word]] = True
                self.misspellable[vocab[word]] = _could_be_misspelt(word)
        self.pairs: list[Any] = []  # per chunk: word id * 2^32 + text index, of content words, each pair once

    def take(self, ids_list: list[int], starts_list: list[int], first_text: int) -> None:
        """Index one chunk of training word ids (0 between texts), whose texts start at ``starts_list``."""
        if not self.questions:
            return
        import numpy as np

        ids = np.asarray(ids_list, dtype=np.int64)
        positions = np.nonzero(self.wanted[ids])[0]
        texts = np.searchsorted(np.asarray(starts_list, dtype=np.int64), positions, side="right") - 1 + first_text
        self.pairs.append(np.unique(ids[positions] << 32 | texts))

    def find(self, train: list[Any], text_owner: list[int], skip: set[int]) -> dict[int, tuple[Any, str, Changes]]:
        """Training item index -> (evaluation item, field, changes) of the reordered copies; ``text_owner``: the
        training item of each indexed text; items in ``skip`` are not looked at."""
        candidates = self._candidates()
        wanted = {text for _, texts in candidates for text in texts if text_owner[text] not in skip}
        fields = _text_fields(train, text_owner, wanted)
        found: dict[int, tuple[Any, str, Changes]] = {}
        for q_index, texts in candidates:
            q = self.questions[q_index]
            for text in texts:
                if text not in fields or text_owner[text] in found:
                    continue
                name, text_words = fields[text]
                changes = reordered_copy(q, text_words)
                if changes is not None:
                    found[text_owner[text]] = (q.item, name, changes)
        return found

    def _candidates(self) -> list[tuple[int, list[int]]]:
        """(question index, the text indices holding nearly all of its rarest content words), each question once."""
        import numpy as np

        if not self.questions or not self.pairs:
            return []
        pairs = np.concatenate(self.pairs)
        if not len(pairs):  # no training text holds a content word of the questions
            return []
        pairs.sort()  # by word id, then text index
        word_of = pairs >> 32
        texts = pairs & 0xFFFFFFFF
        bounds = np.searchsorted(word_of, np.arange(len(self.wanted) + 1))
        held = bounds[1:] - bounds[:-1]  # texts holding each word id
        result = []
        mask = np.zeros(int(texts.max()) + 1, dtype=bool)
        for q_index, q in enumerate(self.questions):
            rare = sorted(q.ids, key=held.__getitem__)[:RARE]
            if sum(held[word] > 0 for word in rare) >= len(rare) - q.allowed:
                chosen = self._holding(q, rare, texts, bounds, mask)
                if len(chosen):
                    result.append((q_index, chosen.tolist()))
        return result

    def _holding(self, q: _Question, rare: list[int], texts: Any, bounds: Any, mask: Any) -> Any:
        """The texts holding the question's ``rare`` words (the rarest first) but for the changes it allows: a word
        too short to be misspelt (or a number) missing is a change of another word. ``mask``: all False, one a text,
        left so."""
        import numpy as np

        firm = [not self.misspellable[word] for word in rare]
        # a first cut, without sorting: the texts holding a word that must be there, or one of the allowed + 1 rarest
        first = [rare[firm.index(True)]] if q.others == 0 and any(firm) else rare[:q.allowed + 1]
        base = np.concatenate([texts[bounds[word]:bounds[word + 1]] for word in first])
        mask[base] = True
        parts = [part[mask[part]] for part in (texts[bounds[word]:bounds[word + 1]] for word in rare)]
        mask[base] = False
        values, inverse = np.unique(np.concatenate(parts), return_inverse=True)
        weights = np.concatenate([np.full(len(part), FIRM if is_firm else 1) for part, is_firm in zip(parts, firm)])
        score = np.bincount(inverse, weights=weights).astype(np.int64)
        held_firm, held_all = score // FIRM, score // FIRM + score % FIRM
        return values[(held_firm >= sum(firm) - q.others) & (held_all >= len(rare) - q.allowed)]


def reordered_copy(q: _Question, text: _Text) -> Changes | None:
    """The changes of the first stretch of ``text`` that holds the question's content words in any order, within
    what the near-copy check allows and as many sentences as the question has (see the module); None when there is
    none."""
    for start, end, present in text.groups(q.sentences):
        missing = [(word, count) for word, count in q.content.items() if word not in present]
        if sum(count for _, count in missing) <= q.allowed and \
                sum(count for word, count in missing if not _could_be_misspelt(word)) <= q.others:
            changes = _in_stretch(q, text.words, start, end)
            if changes is not None:
                return changes
    return None


def _in_stretch(q: _Question, split: list[str], start: int, end: int) -> Changes | None:
    """The changes of the first stretch of ``split[start:end]`` no longer than the question (and ``SLACK``) that
    holds its content words but for the allowed changes; None when there is none."""
    content = q.content
    hits = [position for position in range(start, end) if split[position] in content]
    width, need = len(q.words) + SLACK, q.size - q.allowed
    counts: Counter[str] = Counter()
    first = covered = 0
    for position in hits:
        word = split[position]
        covered += counts[word] < content[word]
        counts[word] += 1
        while position - hits[first] >= width:
            gone = split[hits[first]]
            covered -= counts[gone] <= content[gone]
            counts[gone] -= 1
            first += 1
        while counts[split[hits[first]]] > content[split[hits[first]]]:  # a surplus word at its start: left out
            counts[split[hits[first]]] -= 1
            first += 1
        if covered >= need:
            changes = _changes(q, counts, split[hits[first]:position + 1])
            if changes is not None:
                return changes
    return None


def _changes(q: _Question, present: Counter, stretch: list[str]) -> Changes | None:
    """How ``stretch`` (holding ``present`` of the question's content words) differs from the question, its function
    words aside: content words missing, and added, a misspelt word counting once (as the in-order alignment counts a
    replacement); None when more than the near-copy check allows."""
    missing = [word for word, count in sorted(q.content.items()) for _ in range(count - present[word])]
    added = Counter(word for word in stretch if word not in FUNCTION_WORDS)
    added.subtract(q.content)
    extra = [word for word, count in added.items() for _ in range(count)]
    count = max(len(missing), len(extra))
    could_be_misspelt = sum(map(_could_be_misspelt, missing))
    if count > q.allowed or count - min(could_be_misspelt, len(extra)) > q.others:
        return None
    shown, typos = [], 0
    for word in missing:
        typo = next((other for other in extra if _misspelt(other, word)), None)
        if typo is not None:
            extra.remove(typo)
            typos += 1
        shown.append(f"'{typo}' for '{word}'" if typo else f"'{word}' left out")
    shown += [f"'{word}' added" for word in extra]
    if count - typos > q.others:
        return None
    return Changes(tuple(shown), count, typos)


class _Text:
    """A training text's words, and where its sentences start."""

    def __init__(self, split: list[str], starts: list[int]) -> None:
        self.words, self.starts = split, starts + [len(split)]
        self._groups: dict[int, list[tuple[int, int, frozenset[str]]]] = {}

    def groups(self, count: int) -> list[tuple[int, int, frozenset[str]]]:
        """Each run of ``count`` sentences in a row (all of them when there are fewer): start, end, its words."""
        if count not in self._groups:
            starts = self.starts
            runs = range(max(1, len(starts) - count))
            self._groups[count] = [(starts[i], starts[min(i + count, len(starts) - 1)],
                                    frozenset(self.words[starts[i]:starts[min(i + count, len(starts) - 1)]]))
                                   for i in runs]
        return self._groups[count]


def sentences(text: str) -> _Text:
    """The words of ``text`` as the guard compares them, and where its sentences start."""
    split: list[str] = []
    starts: list[int] = []
    for piece in _SENTENCE_END.split(unmarked(text)):
        if piece_words := compared(piece):
            starts.append(len(split))
            split += piece_words
    return _Text(split, starts)


def _could_be_misspelt(word: str) -> bool:
    """Whether a misspelling may stand for ``word`` (``misspelling``): a word of letters, long enough."""
    return len(word) >= MISSPELT_MIN and word.isalpha()


@functools.lru_cache(maxsize=1 << 16)
def _misspelt(found: str, expected: str) -> bool:
    """``misspelling``, remembered: the same pairs of words recur across the questions and texts of one data set."""
    return misspelling(found, expected)


def _text_fields(train: list[Any], text_owner: list[int], wanted: set[int]) -> dict[int, tuple[str, _Text]]:
    """The field name and words of each indexed text in ``wanted`` (by text index), found by its place among its
    training item's fields."""
    result = {}
    for text in sorted(wanted):
        owner = text_owner[text]
        name, value = train[owner].fields()[text - bisect.bisect_left(text_owner, owner)]
        result[text] = (name, sentences(value))
    return result
