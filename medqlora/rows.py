"""One row of a dataset: the ``Example`` a format makes of it, and the checks every value of a row passes
(text where text is expected, of a bounded size, a response that is not blank, ids, columns mapped by the
dataset's ``columns:``). A value that fails is refused with the field's name; ``data.format_rows`` adds the
file and the row. Values from the data are shown through ``secrets.printable`` (control characters escaped)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DataError
from .secrets import printable, redact

if TYPE_CHECKING:
    from .config import DatasetSpec

# One text field may hold at most this many characters (about 250k tokens: far beyond any
# max_seq_length). Longer ones are refused rather than tokenized for minutes.
MAX_FIELD_CHARS = 1_000_000

# Every column name some format reads, as written (formats.dataset_format adds its fields): a column of another case
# that is one of them is that format's column, not a second copy of a field (medical_o1's 'Question' beside MedQA's
# 'question' in one real dataset).
KNOWN_COLUMNS: set[str] = set()

# Where a message's advice says to map columns; a benchmark's items say their eval.benchmarks entry instead.
DATASET_ENTRY = "in the dataset entry"


@dataclass
class Example:
    prompt: str  # the user turn
    response: str  # the assistant turn the model learns to produce
    context: str | None = None  # a part of the prompt that may be shortened to fit max_seq_length
    prompt_template: str = "{context}"  # how prompt and context combine when context is set
    uid: str | None = None
    question: str = ""  # the question recorded in training_items.jsonl (default: prompt)
    role: str = "train"  # "validation" for items that a split (e.g. a PubMedQA CV fold) reserves
    # (field, text) of everything that reaches the prompt, in order, for the leakage guard (default: the prompt)
    texts: tuple[tuple[str, str], ...] = ()
    row: int | None = None  # the row of its file (1-based), set by format_rows
    # (field, text) of what the response is made of, for the leakage guard (default: the response)
    answer_texts: tuple[tuple[str, str], ...] = ()
    # (name, text) of further views of the prompt the guard compares (a chat's user turns joined)
    joins: tuple[tuple[str, str], ...] = ()
    # the values a prompt_template fills ({question}, {context}, {options}), set by the format
    fields: dict[str, str] = field(default_factory=dict)
    # a chat row's whole conversation, (role, content) per turn: trained on every assistant turn
    turns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.question:
            self.question = self.prompt

    def guard_texts(self) -> tuple[tuple[str, str], ...]:
        """Every text the guard compares: each prompt field, all of them joined (a question split over two
        fields or turns is whole there), and the response's fields."""
        if self.texts:
            prompt = self.texts
        else:
            user = self.prompt_template.format(context=self.context) if self.context is not None else self.prompt
            prompt = (("prompt", user),)
        joined: tuple[tuple[str, str], ...] = ()
        if len(prompt) > 1:
            names = [name for name, _ in prompt]
            named = " + ".join(names) if len(names) <= 3 else f"{names[0]} + ... + {names[-1]}"
            joined = ((f"{named} (joined)", "\n\n".join(text for _, text in prompt)),)
        answers = self.answer_texts or (("response", self.response),)
        return prompt + joined + self.joins + answers + _seam(prompt, answers)


SEAM_WORDS = 200  # words of the prompt's end and of the reply's start joined (longer than a benchmark question)


def _seam(prompt: tuple[tuple[str, str], ...], answers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The end of the prompt and the start of the reply as one text: a question split between them ('Is severe
    macrosomia manifested at 11-14 weeks' / 'of gestation? Yes.') teaches the model to complete it, and neither
    side holds it whole."""
    if not prompt or not answers or not answers[0][1].strip():
        return ()
    tail = " ".join(prompt[-1][1].split()[-SEAM_WORDS:])
    head = " ".join(answers[0][1].split()[:SEAM_WORDS])
    return ((f"{prompt[-1][0]} + {answers[0][0]} (joined)", f"{tail} {head}"),)


# ---------------------------------------------------------------- checking values


def _kind(value: Any) -> str:
    """What a value is, in words, with a short printable preview: 'a number (42)', 'a list ([1, 2])'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({printable(repr(value), 40)})"
    if isinstance(value, str):
        return f"text ({printable(repr(value), 40)})"
    if isinstance(value, (list, tuple)):
        return f"a list ({printable(_json_preview(value), 40)})"
    if isinstance(value, dict):
        return f"an object ({printable(_json_preview(value), 40)})"
    return f"a {type(value).__name__} value"


def _json_preview(value: Any) -> str:
    try:
        # masked before it is cut: a credential cut in two would no longer be found, and its start shown
        return redact(json.dumps(value, default=str, ensure_ascii=False)[:4096])[:60]
    except (ValueError, RecursionError):
        return type(value).__name__


def _text(value: Any, name: str) -> str:
    """``value`` when it is text of an acceptable size; else the refusal naming the field."""
    if not isinstance(value, str):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(value)}, expected text.")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"field '{printable(name, 60)}' is {len(value):,} characters long; one field may hold at most "
                        f"{MAX_FIELD_CHARS:,} (far more than any max_seq_length). Shorten it or leave the row out.")
    return value


# Characters that render as nothing though Unicode does not class them as spaces (fillers, a blank braille cell).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def invisible(text: str) -> bool:
    """True when nothing of ``text`` would show: only whitespace, format characters (zero-width spaces and
    joiners, the byte-order mark, soft hyphens), control characters and blank fillers."""
    return all(c.isspace() or c in _BLANK_LETTERS or unicodedata.category(c) in {"Cf", "Cc", "Cs", "Co", "Cn"}
               for c in text)


def _response(value: str, name: str, expected: str = "the response to learn") -> str:
    """A response text (what the model learns to produce, or a reply it learns to prefer less): blank or invisible
    is refused, not trained on."""
    if invisible(value):
        raise DataError(f"field '{printable(name, 60)}' is {blank_said(value)}, expected {expected}. Fill it in or "
                        "leave the row out.")
    return value


def blank_said(value: str) -> str:
    """How a blank text is blank, in words: 'empty', 'only whitespace (...)', 'only invisible characters (...)'."""
    if not value:
        return "empty"
    if not value.strip():
        return f"only whitespace ({printable(repr(value), 40)})"
    return f"only invisible characters ({value.encode('unicode_escape').decode()[:60]})"


def _question(value: str, name: str) -> str:
    """A question text (what a response answers: an instruction, a user turn, a benchmark's question): blank or
    invisible is refused as a blank response is, since the row would teach an answer to nothing."""
    if invisible(value):
        raise DataError(f"field '{printable(name, 60)}' is {blank_said(value)}, expected the question the "
                        "response answers (the row would teach that answer to no question). Fill it in or leave the "
                        "row out.")
    return value


def as_written(value: str | float) -> str:
    """A text or number as the data wrote it (a JSON number keeps its text: 1.50, not 1.5)."""
    return getattr(value, "written", None) or str(value)


def pmid_of(uid: str | None) -> str | None:
    """The PMID in an id as written ('PMID:19100463', ' 19100463 ', '019100463' -> '19100463'): its longest
    run of digits, without leading zeros; an id without digits as it is."""
    runs = re.findall(r"\d+", uid or "")
    if not runs:
        return uid
    return str(int(max(runs, key=len)))


def _uid(value: Any, name: str) -> str | None:
    """An id: text or a whole number (12345678.0 from a typed column is 12345678)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(value)}, expected an id (text or a whole number).")
    return str(value).strip()


def _column(row: dict[str, Any], spec: DatasetSpec, *names: str, expected: str = "a value",
            content: Callable[[Any], Any] = lambda value: value) -> tuple[str, Any]:
    """(column, value) of the first of ``names`` present in ``row`` with a value (after the spec's mapping; a name
    mapped in ``columns:`` is tried first). A column is found as written or with blanks around its name (a
    spreadsheet's 'instruction '). Two columns that can fill the field (another name of it, the same name with
    blanks, or in another case: 'Instruction' beside 'instruction'), holding different texts, neither chosen by
    ``columns:``, are refused: which one the field was meant to read is not the kit's to guess. ``content`` gives
    what of a value the format reads (PubMedQA's ``{contexts: [...]}`` object: its list), for that comparison."""
    chosen = [name for name in names if name in spec.columns]
    present, cased = _candidates(row, spec, names)
    filled = [(column, value) for column, value in present if value is not None]
    if filled:
        if not chosen:
            _refuse_two_columns(spec, names[0], filled + [(c, row[c]) for c in cased if row[c] is not None], content)
        return filled[0]
    if present:
        raise DataError(f"field '{printable(present[0][0], 60)}' is null, expected {expected}.")
    wanted = " or ".join(f"'{printable(spec.columns.get(n, n), 60)}'" for n in names)
    columns = printable(sorted(str(k) for k in row), 300)
    in_case = f" (names are matched in their case: '{printable(cased[0], 60)}' is not {wanted})" if cased else ""
    raise MissingColumnError(f"has no column {wanted}; its columns are {columns}{in_case}.",
                             f"Map yours with 'columns:' {DATASET_ENTRY}, e.g. columns: "
                             f"{{{names[0]}: {printable(cased[0], 60) if cased else 'your_column'}}}.",
                             tuple(str(spec.columns.get(n, n)) for n in names))


def _optional_column(row: dict[str, Any], spec: DatasetSpec, name: str) -> tuple[str, Any]:
    """(column, value) of an optional field (None when the row has no such column), found as ``_column`` finds
    one. A column that differs from it in case only ('Input' for 'input') is refused rather than dropped without
    a word, unless ``columns:`` names the field's column."""
    present, cased = _candidates(row, spec, (name,))
    mapped = spec.columns.get(name, name)
    if name in spec.columns:
        return present[0] if present else (mapped, None)
    others = [(column, row[column]) for column in cased if row[column] is not None]
    filled = [(column, value) for column, value in present if value is not None]
    if filled:
        _refuse_two_columns(spec, name, filled + others, lambda value: value)
        return filled[0]
    if others:
        column = printable(others[0][0], 60)
        raise DataError(f"column '{column}' differs from the {spec.format} format's '{printable(mapped, 60)}' in "
                        "case only: names are matched in their case, so it would be dropped without a word. Read it "
                        f"with columns: {{{name}: {column}}} {DATASET_ENTRY}, or rename or remove it.")
    return present[0] if present else (mapped, None)


def _candidates(row: dict[str, Any], spec: DatasetSpec, names: tuple[str, ...]) -> tuple[list, list[str]]:
    """The (column, value) pairs that can fill a field of ``names`` (mapped names first; each name as written,
    else with blanks around it), and the row's columns that differ from one of them in case only (never read for
    it). With a name mapped in ``columns:``, each name reads one column: the user chose it."""
    chosen = [name for name in names if name in spec.columns]
    order = dict.fromkeys(spec.columns.get(name, name) for name in chosen + [n for n in names if n not in chosen])
    present: dict[str, Any] = {}
    cased: dict[str, None] = {}
    for column in order:
        readable, other_case = _spellings(row, column)
        for found in readable[:1] if chosen else readable:
            present.setdefault(found, row[found])
        cased.update(dict.fromkeys(other_case))
    return list(present.items()), [column for column in cased if column not in present]


def _spellings(row: dict[str, Any], column: str) -> tuple[list[str], list[str]]:
    """The row's columns that are ``column`` as written or with blanks around the name (spreadsheets leave a blank
    after a header: read as the column), the one as written first; and those that differ from it in case only, but for
    a name another format reads as written."""
    bare = column.strip()
    keys = [key for key in row if isinstance(key, str)]
    readable = sorted((key for key in keys if key.strip() == bare), key=lambda key: key != column)
    cased = [key for key in keys if key.strip() != bare and key.strip().casefold() == bare.casefold()
             and key.strip() not in KNOWN_COLUMNS]
    return readable, cased


def _refuse_two_columns(spec: DatasetSpec, field_name: str, filled: list[tuple[str, Any]],
                        content: Callable[[Any], Any]) -> None:
    """Two columns that can each fill ``field_name`` (instruction and question, output and answer, a chat's
    messages and conversations), both set and their texts different: reading the first would drop the other
    without a word."""
    (first, value), others = filled[0], filled[1:]
    for other, second in others:
        mine, theirs = _texts_of(content(value)), _texts_of(content(second))
        if mine is not None and theirs is not None and mine != theirs:
            raise DataError(
                f"columns '{printable(first, 60)}' and '{printable(other, 60)}' can each be the {spec.format} "
                f"format's '{field_name}', and they differ ({printable(_json_preview(value), 60)} / "
                f"{printable(_json_preview(second), 60)}): one would be dropped without a word. Choose the one to "
                f"read with columns: {{{field_name}: {printable(other, 60)}}} (or {{{field_name}: "
                f"{printable(first, 60)}}}) {DATASET_ENTRY}, or remove the other column.")


# Keys naming who speaks in a chat turn ('user' / 'human'): layouts name the same speaker differently.
_SPEAKER_KEYS = frozenset({"role", "from"})


def _texts_of(value: Any) -> tuple[str, ...] | None:
    """The texts a value holds, in order, stripped (a list or object: every text inside it, speaker names left
    out, so one conversation in the messages and the ShareGPT layout compares equal); None for a value without
    text to compare (a boolean)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return (str(value).strip(),)
    texts: list[str] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if key in _SPEAKER_KEYS or item is None:
            continue
        texts.extend(_texts_of(item) or ())
    return tuple(texts)


class MissingColumnError(DataError):
    """A row lacks a column its format reads. The message ends in how to map one with ``columns:``; ``missing`` is
    the message without that advice, for callers whose setting has no ``columns:``."""

    def __init__(self, missing: str, advice: str, columns: tuple[str, ...] = ()) -> None:
        super().__init__(f"{missing} {advice}")
        self.missing = missing
        self.advice = advice
        self.columns = columns  # the columns looked for (any of them would do)


def _field(row: dict[str, Any], spec: DatasetSpec, *names: str) -> tuple[str, str]:
    """(column, text) of a text field."""
    name, value = _column(row, spec, *names, expected="text")
    return name, _text(value, name)
