"""The search of the leakage guard (leakage.py): which training items contain an evaluation question.

Two kinds of overlap are refused (unless ``data.allow_eval_overlap: true``):

- exact: the normalised evaluation question appears, whole, in one normalised training text (a
  question pasted into a longer ``input`` or an earlier chat turn is caught);
- near duplicate: the 13-gram decontamination of GPT-3 and the evaluation harnesses, per question.
  A question of L words has the word n-grams n = min(data.near_duplicate_ngram, L); when at least
  ``data.near_duplicate_threshold`` of them occur among one training example's texts, the example is a
  near duplicate. (A question of at most n words has one n-gram, the whole question: it can only be
  matched exactly. ``near_duplicate_ngram: 0`` checks exact matches only.)

Questions of fewer than ``MIN_WORDS`` words ("Is it safe?") are common phrases inside longer
texts: they are matched only when a whole training text (one field, one turn) equals them.

A question of 8 words or more is also looked for with one or two words changed (a misspelling, in a long question
any word), which breaks the n-grams that hold the word: overlap_near.py; and with its words in another order (clauses
swapped, words shuffled), with the same changes: overlap_reordered.py. A long question is also looked for with its
blanks moved (removed, zero-width spaces for blanks, words broken across lines, letters spaced out), letter for
letter: overlap_glued.py.

Speed: evaluation n-grams are hashed into an index; the training texts become one array of word
ids (words no evaluation question has break every n-gram), whose n-gram hashes are computed with
numpy and looked up in the index. 1,000 questions x 100,000 training rows take seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Any

from .leakage_text import compared, compared_as_known, form, question_hash, words
from .overlap_glued import GluedQuestions
from .overlap_near import Changes, landmarks, near_copy, pieces
from .overlap_reordered import ReorderedQuestions

MIN_WORDS = 5  # shorter evaluation questions are matched only by a whole training text equal to them
BITMAP = 1 << 22
CHUNK_WORDS = 2_000_000  # training words hashed at a time (memory: about 50 bytes a word)

CONFIG = "config"  # the dataset name of a guard item that is a config setting (data.system_prompt)
PART_MIN_WORDS = 8  # parts of an evaluation item (abstract paragraphs, long answers) shorter than this are
# not looked for on their own (they are common phrases; the whole abstract is looked for)


@dataclass(frozen=True)
class Item:
    dataset: str  # which dataset (training or evaluation) it comes from
    uid: str | None
    question: str  # evaluation items: what is looked for
    texts: tuple[tuple[str, str], ...] = ()  # training items: (field, text) of everything in its prompt
    row: int | None = None  # training items: the row of its file
    # evaluation items: which part of the item ``question`` is ("abstract", "long answer"; None: the question
    # itself), and then the item's question (what evaluation refuses when this part was trained on)
    part: str | None = None
    of: str | None = None

    def fields(self) -> tuple[tuple[str, str], ...]:
        return self.texts or (("question", self.question),)

    def where(self) -> str:
        if self.dataset == CONFIG:
            return "the config's"
        parts = [f"training '{_shown(self.dataset, 200)}'"]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.uid is not None:
            parts.append(f"(id {_shown(self.uid, 40)})")
        return " ".join(parts)


@dataclass(frozen=True)
class Overlap:
    train: Item
    evaluation: Item
    kind: str  # "exact" or "near duplicate"
    share: float  # share of the evaluation question's n-grams found in the training example
    matched: int
    ngrams: int
    n: int
    field: str  # the training field where most of it was found
    changes: Changes | None = None  # the words changed in a near copy found by alignment (overlap_near.py)
    glued: bool = False  # found letter for letter, blanks and punctuation aside (overlap_glued.py)
    reordered: bool = False  # found with its words in another order (overlap_reordered.py)

    @property
    def possible(self) -> bool:
        """A possible near copy (overlap_near.py): reported, refused only where data.possible_near_copies says so."""
        return self.changes is not None and self.changes.possible

    def describe(self) -> str:
        if self.glued:
            how = f"field '{_shown(self.field, 80)}' contains, letter for letter (its blanks and punctuation aside),"
        elif self.kind == "exact" and not self._as_written():
            how = (f"field '{_shown(self.field, 80)}' contains, in other forms of its words (a plural, 'are' for 'is', "
                   "an article changed or left out, a possessive, digits for letters),")
        elif self.kind == "exact":
            how = f"field '{_shown(self.field, 80)}' contains"
        elif self.reordered:
            changed = f" and {_changed(self.changes)}" if self.changes and self.changes.count else ""
            how = f"field '{_shown(self.field, 80)}' contains, with its words in another order{changed},"
        elif self.changes:
            how = f"field '{_shown(self.field, 80)}' contains, with {_changed(self.changes)},"
        else:
            how = (f"field '{_shown(self.field, 80)}' shares {self.matched} of the {self.ngrams} {self.n}-word sequences "
                   f"({round(100 * self.share)}%) of")
        evaluation = self.evaluation
        part = f" ({_shown(evaluation.part, 40)})" if evaluation.part else ""
        return (f"{self.train.where()} {how} evaluation '{_shown(evaluation.dataset, 200)}' item "
                f"{_shown(evaluation.uid or '?', 40)}{part}: '{_shown(evaluation.question, 90)}'")

    def _as_written(self) -> bool:
        """Whether the field holds the question in its words as written, not only in the forms the guard compares."""
        asked = " " + " ".join(words(self.evaluation.question)) + " "
        return any(asked in " " + " ".join(words(text)) + " " for name, text in self.train.fields() if name == self.field)

    def to_dict(self) -> dict[str, Any]:
        return {"training": self.train.dataset, "row": self.train.row, "uid": self.train.uid, "field": self.field,
                "evaluation": self.evaluation.dataset, "evaluation_uid": self.evaluation.uid, "kind": self.kind,
                "share": round(self.share, 3), "evaluation_part": self.evaluation.part or "question",
                "evaluation_question_sha1_16": question_hash(self.evaluation.of or self.evaluation.question)}


def _changed(changes: Changes) -> str:
    """"one word misspelt ('hypertenison' for 'hypertension')", "2 words changed ('weaknes' for 'weakness', ...)"."""
    count = {1: "one word", 2: "two words"}.get(changes.count, f"{changes.count} words")
    shown = ", ".join(_shown(change, 90) for change in changes.shown[:3])
    return f"{count} {'misspelt' if changes.misspelt else 'changed'} ({shown})"


def _shown(text: Any, limit: int) -> str:
    from .secrets import printable

    return printable(text, limit)


@dataclass
class _Question:
    item: Item
    words: list[str]
    n: int
    grams: set[int]
    whole: int | None = None  # a piece of a question (the index of the whole one), looked for to find near copies
    pieces: bool = False  # a question cut into pieces (overlap_near.pieces)


def _distinct_pieces(questions: list[_Question], ngram: int) -> list[_Question]:
    """The pieces of the questions looked for to find their near copies (overlap_near.pieces): a piece that several
    evaluation questions share ("what is the most common treatment") would make every training text that asks alike
    a candidate for all of them, so only pieces of one question are indexed (a change in another piece of such a
    question is still caught)."""
    cut: list[_Question] = []
    for index, q in enumerate(questions):
        q.pieces = bool(found := pieces(q.words, ngram))
        cut += [_Question(q.item, part, len(part), set(), whole=index) for _, part in found]
    count: dict[tuple[str, ...], int] = {}
    for piece in cut:
        count[tuple(piece.words)] = count.get(tuple(piece.words), 0) + 1
    return [piece for piece in cut if count[tuple(piece.words)] == 1]


def _ngram_length(words: int, ngram: int) -> int:
    return words if ngram <= 0 else min(ngram, words)


def find_overlap(train: list[Item], evaluation: list[Item], ngram: int = 13,
                 threshold: float = 0.5) -> list[Overlap]:
    """Every training item that contains an evaluation question (exactly or as a near duplicate), with
    the evaluation item it matches best (one entry per training item)."""
    questions, short, vocab = _evaluation_questions(evaluation, ngram)
    if not questions and not short:
        return []
    values, by_n = _gram_index(questions, vocab)
    known = frozenset(vocab).union(*(text.split() for text in short))  # the forms of the questions' words
    whole = [(q.words, q.item) for q in questions if q.whole is None]
    glued = GluedQuestions([(words(item.question), item) for _, item in whole], vocab)  # letters as written
    reordered = ReorderedQuestions([(split, item) for split, item in whole if item.part is None] if ngram > 0 else [],
                                   vocab)
    found, exact_short, text_owner, text_field = _scan_training(train, questions, short, (vocab, known), values, by_n,
                                                                (glued, reordered))
    best, candidates = _best_overlaps(train, questions, found, exact_short, (text_field, known), ngram, threshold)
    for t_index, (item, field) in glued.found.items():
        if t_index not in best:
            size = len(compared(item.question))
            best[t_index] = Overlap(train[t_index], item, "exact", 1.0, size, size, 1, field, glued=True)
    _add_near_copies(train, questions, candidates, best, ngram, known)
    for t_index, (item, field, changes) in reordered.find(train, text_owner, set(best)).items():
        changes = _as_written(changes, item.question, train[t_index], field)
        size = len(compared(item.question))
        best[t_index] = Overlap(train[t_index], item, "near duplicate", 1 - changes.count / size,
                                size - changes.count, size, 1, field, changes, reordered=True)
    return [best[i] for i in sorted(best)]


def _evaluation_questions(evaluation: list[Item], ngram: int) -> tuple[list[_Question], dict[str, Item],
                                                                       dict[str, int]]:
    """The evaluation questions to look for (each once; with their pieces, for near copies), the short ones matched
    whole, and the word ids of their vocabulary."""
    questions: list[_Question] = []
    short: dict[str, Item] = {}
    seen: set[str] = set()
    vocab: dict[str, int] = {}
    for item in evaluation:
        split = compared(item.question)
        text = " ".join(split)
        if not text or text in seen:  # the same question in two evaluation sets: the first one names it
            continue
        seen.add(text)
        if item.part is not None and len(split) < PART_MIN_WORDS:
            continue
        if len(split) < MIN_WORDS:
            short[text] = item
            continue
        for word in split:
            vocab.setdefault(word, len(vocab) + 1)
        questions.append(_Question(item, split, _ngram_length(len(split), ngram), set()))
    if ngram > 0:
        questions += _distinct_pieces(questions, ngram)
    return questions, short, vocab


def _gram_index(questions: list[_Question], vocab: dict[str, int]) -> tuple[Any, dict[int, dict[int, list[int]]]]:
    """Each question's n-gram hashes (set on it), and the index n -> gram hash -> question indices."""
    import numpy as np

    # random 64-bit values per word id; the n-gram hash is a polynomial over them (mod 2^64)
    rng = np.random.default_rng(20240614)
    values = rng.integers(1, 2**63 - 1, size=len(vocab) + 1, dtype=np.uint64)
    values[0] = 0
    by_n: dict[int, dict[int, list[int]]] = {}  # n -> gram hash -> question indices
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for index, q in enumerate(questions):
            vals = values[np.fromiter(map(vocab.__getitem__, q.words), dtype=np.int64, count=len(q.words))]
            hashes = vals.copy()
            for k in range(1, q.n):  # the same polynomial hash as _match_chunk
                hashes = hashes[:-1] * base + vals[k:]
            q.grams = set(hashes.tolist())
            index_n = by_n.setdefault(q.n, {})
            for h in q.grams:
                index_n.setdefault(h, []).append(index)
    return values, by_n


def _scan_training(train: list[Item], questions: list[_Question], short: dict[str, Item],
                   words_of_questions: tuple[dict[str, int], frozenset[str]], values: Any,
                   by_n: dict[int, dict[int, list[int]]],
                   other: tuple[GluedQuestions, ReorderedQuestions]) -> tuple[dict, dict, list[int], list[str]]:
    """The training texts looked up in the index: (train index, question index) -> gram -> text index; the
    training items equal to a short question; and each text's training item and field. Texts of words glued
    together go to ``glued``, the word ids of every text to ``reordered``'s index."""
    glued, reordered = other
    vocab, known = words_of_questions
    # the training texts as arrays of word ids, 0 between texts and for words no question has, in chunks
    found: dict[tuple[int, int], dict[int, int]] = {}  # (train index, question index) -> gram -> text index
    exact_short: dict[int, tuple[Item, str]] = {}
    text_owner: list[int] = []
    text_field: list[str] = []
    chunk: list[int] = []
    chunk_starts: list[int] = []
    lookup = vocab.get
    zeros = itertools.repeat(0)
    for t_index, item in enumerate(train):
        for field, text in item.fields():
            written = words(text)
            split = compared_as_known(written, known)
            if short and len(split) < MIN_WORDS and t_index not in exact_short:
                norm = " ".join(split)
                if norm in short:
                    exact_short[t_index] = (short[norm], field)
            if not questions:
                continue
            glued.look(t_index, field, written)
            chunk_starts.append(len(chunk))
            text_owner.append(t_index)
            text_field.append(field)
            chunk.extend(map(lookup, split, zeros))
            chunk.append(0)
        if len(chunk) >= CHUNK_WORDS:
            _match_chunk(chunk, chunk_starts, len(text_owner) - len(chunk_starts), values, by_n, text_owner, found)
            reordered.take(chunk, chunk_starts, len(text_owner) - len(chunk_starts))
            chunk, chunk_starts = [], []
    if chunk:
        _match_chunk(chunk, chunk_starts, len(text_owner) - len(chunk_starts), values, by_n, text_owner, found)
        reordered.take(chunk, chunk_starts, len(text_owner) - len(chunk_starts))
    return found, exact_short, text_owner, text_field


def _best_overlaps(train: list[Item], questions: list[_Question], found: dict, exact_short: dict,
                   fields_known: tuple[list[str], frozenset[str]], ngram: int,
                   threshold: float) -> tuple[dict[int, Overlap], set]:
    """The best overlap of each training item, and the candidates for a near copy of a question (overlap_near).
    ``fields_known``: each text's field, and the forms of the questions' words (leakage_text.compared_as_known)."""
    text_field, known = fields_known
    best: dict[int, Overlap] = {}
    for t_index, (item, field) in exact_short.items():
        best[t_index] = Overlap(train[t_index], item, "exact", 1.0, 1, 1, len(compared(item.question)),
                                field)
    candidates: set[tuple[int, int]] = set()
    for (t_index, q_index), grams in found.items():
        q = questions[q_index]
        if q.whole is not None:  # a piece of a question: a candidate for a near copy of it
            candidates.add((t_index, q.whole))
            continue
        share = len(grams) / len(q.grams)
        if share < threshold:
            if not q.pieces:  # some of its n-grams: one with a word changed in its middle? (or a piece of it)
                candidates.add((t_index, q_index))
            continue
        counts: dict[int, int] = {}
        for text_index in grams.values():
            counts[text_index] = counts.get(text_index, 0) + 1
        field = text_field[max(sorted(counts), key=counts.get)]  # the first of the texts holding the most
        phrase = " " + " ".join(q.words) + " "
        holding = [name for name, text in train[t_index].fields()
                   if phrase in " " + " ".join(compared_as_known(words(text), known)) + " "]
        exact = bool(holding)
        if exact:
            field = holding[0]
        if ngram <= 0 and not exact:
            continue
        overlap = Overlap(train[t_index], q.item, "exact" if exact else "near duplicate", share, len(grams),
                          len(q.grams), q.n, field)
        current = best.get(t_index)
        if current is None or (overlap.kind == "exact", overlap.share, overlap.matched) > \
                (current.kind == "exact", current.share, current.matched):  # the whole abstract over a paragraph
            best[t_index] = overlap
    return best, candidates


def _add_near_copies(train: list[Item], questions: list[_Question], candidates: set, best: dict[int, Overlap],
                     ngram: int, known: frozenset[str]) -> None:
    """The candidates confirmed as near copies (a question with a few words changed, overlap_near) added to
    ``best``."""
    if ngram <= 0:
        return
    fields: tuple[int, list] = (-1, [])
    marks: dict[int, list] = {}
    for t_index, q_index in sorted(candidates):
        if t_index in best:
            continue
        if fields[0] != t_index:  # each candidate's texts split into words once
            fields = (t_index, [(name, split, set(split)) for name, split in
                                ((name, compared_as_known(words(text), known))
                                 for name, text in train[t_index].fields())])
        q = questions[q_index]
        if q_index not in marks:
            marks[q_index] = landmarks(q.words, ngram)
        found = near_copy(q.words, marks[q_index], fields[1])
        if found:
            field, changes = found
            changes = _as_written(changes, q.item.question, train[t_index], field)
            size = len(q.words)
            kind = "exact" if changes.count == 0 else "near duplicate"  # the question, an article aside
            best[t_index] = Overlap(train[t_index], q.item, kind, 1 - changes.count / size,
                                    size - changes.count, size, 1, field, changes)


def _as_written(changes: Changes, question: str, train: Item, field: str) -> Changes:
    """``changes`` shown in the words as the texts write them: the guard compares their forms (leakage_text.form:
    'leg' for 'legs', 'the' for 'a'), the training text's words for what it holds, the question's for what it asks."""
    asked = _spelling(question)
    held = _spelling(*(text for name, text in train.fields() if name == field))

    def written(quoted: str, spelt: dict[str, str]) -> str:
        return "'" + " ".join(spelt.get(word, word) for word in quoted.split()) + "'"

    def shown(change: str) -> str:
        if match := _FOR.fullmatch(change):
            return f"{written(match[1], held)} for {written(match[2], asked)}"
        if match := _ADDED.fullmatch(change):
            return f"{written(match[1], held)} added"
        if match := _LEFT_OUT.fullmatch(change):
            return f"{written(match[1], asked)} left out"
        return change

    return dataclasses.replace(changes, shown=tuple(map(shown, changes.shown)))


def _spelling(*texts: str) -> dict[str, str]:
    """form -> the first word of ``texts`` of that form."""
    spelt: dict[str, str] = {}
    for text in texts:
        for word in words(text):
            spelt.setdefault(form(word), word)
    return spelt


_FOR = re.compile(r"'([^']*)' for '([^']*)'")
_ADDED = re.compile(r"'([^']*)' added")
_LEFT_OUT = re.compile(r"'([^']*)' left out")


def _match_chunk(ids_list: list[int], starts_list: list[int], first_text: int, values: Any,
                 by_n: dict[int, dict[int, list[int]]], text_owner: list[int],
                 found: dict[tuple[int, int], dict[int, int]]) -> None:
    """Look every n-gram of one chunk of training words up in the evaluation index."""
    import numpy as np

    mask = np.uint64(BITMAP - 1)
    ids = np.asarray(ids_list, dtype=np.int64)
    vals = values[ids]
    zeros = np.concatenate(([0], np.cumsum(ids == 0)))
    starts = np.asarray(starts_list, dtype=np.int64)
    base = np.uint64(1_000_003)
    hashes = vals.copy()
    with np.errstate(over="ignore"):
        for n in range(1, max(by_n) + 1):
            if n > 1:
                hashes = hashes[:-1] * base + vals[n - 1 :]
            if len(hashes) == 0:
                return
            if n not in by_n:
                continue
            index = by_n[n]
            wanted = np.fromiter(index, dtype=np.uint64, count=len(index))
            wanted.sort()
            seen = np.zeros(BITMAP, dtype=bool)  # a first, cheap filter on the low bits of the hash
            seen[(wanted & mask).astype(np.int64)] = True
            maybe = np.nonzero(seen[(hashes & mask).astype(np.int64)])[0]
            maybe = maybe[(zeros[maybe + n] - zeros[maybe]) == 0]
            spot = np.searchsorted(wanted, hashes[maybe]).clip(max=len(wanted) - 1)
            hits = maybe[wanted[spot] == hashes[maybe]]
            texts = np.searchsorted(starts, hits, side="right") - 1
            for position, text_index in zip(hits.tolist(), texts.tolist()):
                gram = int(hashes[position])
                owner = text_owner[first_text + text_index]
                for q_index in index[gram]:
                    found.setdefault((owner, q_index), {}).setdefault(gram, first_text + text_index)
