"""The options and the right answer of a multiple-choice row, in every layout the kit reads: an options column
(an object {key: text} or a list, lettered A, B, ...), or one column per option, which a CSV file can hold:
MedMCQA's hub layout (opa..opd, the right one as cop 0-3) or one column per letter (A, B, C, D) with answer_idx.

Whatever the layout, the options leave here keyed by capital letters A, B, C ...: the prompt shows those letters,
the training target starts with one, and the evaluation's answer parser reads them back. Option keys in another
case ('a'..'d') are read as their capitals, keys numbered 1..N as A..; other keys are refused (the answer could not
be scored)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DataError
from .rows import MissingColumnError, _column, _kind, _text, invisible
from .secrets import printable

if TYPE_CHECKING:
    from .config import DatasetSpec

# Layouts that give each option a column of its own, which a CSV file can hold (a CSV cell holds text, never an
# object or a list): MedMCQA's hub layout (openlifescienceai/medmcqa: opa..opd, the right one as cop 0-3), and one
# column per letter (A, B, C, D ...). Column names are matched whatever their case.
MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")
OPTION_LAYOUTS = ("one column per option: opa, opb, opc, opd with cop (MedMCQA's hub layout, cop 0-3), or A, B, C, D "
                  "with answer_idx (the letter)")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
KEY_LAYOUTS = ("letters A, B, C ... (either case; read as capitals) or numbers 1, 2, 3 ... (read as A, B, C ...), "
               "which the prompt shows and the evaluation reads back")


@dataclass(frozen=True)
class Choices:
    """A row's options as {letter: text}, and each spelling of a key its data may use for the answer (the key as
    written, its letter, the letter in lower case) with the letter it stands for."""

    texts: dict[str, str]
    letter_of: dict[str, str]


def _option_column_names(row: dict[str, Any]) -> dict[str, list[str]]:
    """The row's columns that can hold an option, by what they name (a capital letter, or opa..opd), whatever their
    case: {"A": ["a"], "opa": ["OPA"], ...}."""
    found: dict[str, list[str]] = {}
    for column in row:
        name = str(column).strip()
        if len(name) == 1 and name in LETTERS + LETTERS.lower():
            found.setdefault(name.upper(), []).append(str(column))
        elif name.casefold() in MEDMCQA_OPTIONS:
            found.setdefault(name.casefold(), []).append(str(column))
    return found


def _option_columns(row: dict[str, Any], spec: DatasetSpec) -> dict[str, str] | None:
    """{letter: column} when a row holds its options in columns of their own and no 'options' column (nor a
    ``columns:`` mapping of it); None otherwise. Names are matched whatever their case; a letter named twice
    ('c' and 'C') or a gap in the letters (A, B, D) is refused, naming the columns."""
    if "options" in spec.columns or "options" in row:
        return None
    found = _option_column_names(row)
    twice = next((names for names in found.values() if len(names) > 1), None)
    if twice:
        raise DataError(f"the columns {printable(twice, 80)} name the same option in two spellings: which one holds "
                        "it is not the kit's to guess. Rename or remove one of them.")
    if all(column in found for column in MEDMCQA_OPTIONS):
        return {letter: found[column][0] for letter, column in zip("ABCD", MEDMCQA_OPTIONS, strict=True)}
    letters = sorted(name for name in found if len(name) == 1)
    if len(letters) < 2 or "A" not in letters:
        return None
    expected = LETTERS[: len(letters)]
    if "".join(letters) != expected:
        gap = next(letter for letter in expected if letter not in letters)
        shown = ", ".join(found[letter][0] for letter in letters)
        raise DataError(f"the option columns are {printable(shown, 120)}, without {gap}: the options run A, B, C ... "
                        f"without a gap, and a column past the gap would be left out of the prompt. Name the option "
                        f"columns A, B, C ... in order (or give the options as one column).")
    return {letter: found[letter][0] for letter in letters}


def _lettered(name: str, keys: list[str]) -> dict[str, str]:
    """{key as written: letter} for an options object's keys: letters (either case) as their capitals, numbers
    1..N as A..; any other key layout refused, in one message."""
    stripped = [key.strip() for key in keys]
    if all(len(key) == 1 and key.upper() in LETTERS for key in stripped):
        letters = [key.upper() for key in stripped]
        twice = next((key for key in letters if letters.count(key) > 1), None)
        if twice is None:
            return dict(zip(keys, letters, strict=True))
        raise DataError(f"field '{printable(name, 60)}' has the option {twice} twice (as {twice} and "
                        f"{twice.lower()}): option keys are read whatever their case. Give each option its own "
                        "letter.")
    if all(re.fullmatch(r"[0-9]+", key) for key in stripped) and sorted(map(int, stripped)) == list(
            range(1, len(keys) + 1)) and len(keys) <= len(LETTERS):
        return {key: LETTERS[int(key.strip()) - 1] for key in keys}
    raise DataError(f"field '{printable(name, 60)}' has the option keys {printable([str(k) for k in keys], 120)}: "
                    f"the kit reads {KEY_LAYOUTS}. Key the options that way, or give them as a list (lettered A, B, "
                    "C ...).")


def _options_field(row: dict[str, Any], spec: DatasetSpec) -> tuple[str, dict[str, tuple[str, Any]], dict[str, str]]:
    """(where, {letter: (column or field name, value)}, {key as written: letter}) of a row's options, from an options
    column (an object or a list) or from columns of their own (_option_columns)."""
    columns = _option_columns(row, spec)
    if columns is not None:
        named = {letter: (column, row[column]) for letter, column in columns.items()}
        return ", ".join(columns.values()), named, {letter: letter for letter in columns}
    try:
        name, options = _column(row, spec, "options")
    except MissingColumnError as err:
        raise MissingColumnError(err.missing, "Give the options as one column holding {\"A\": text, ...} or a list "
                                 "(map yours with columns: {options: your_column}), or as " + OPTION_LAYOUTS + "."
                                 ) from None
    if isinstance(options, list):
        if len(options) > len(LETTERS):
            raise DataError(f"field '{printable(name, 60)}' has {len(options)} options; at most 26 (A-Z) are "
                            "supported.")
        named = {LETTERS[i]: (f"{name}.{LETTERS[i]}", value) for i, value in enumerate(options)}
        return name, named, {letter: letter for letter in named}
    if isinstance(options, str):
        raise DataError(f"field '{printable(name, 60)}' is text ({printable(repr(options), 40)}), expected the options "
                        "as {\"A\": text, ...} or a list of texts, which a CSV cell cannot hold. In a CSV file give "
                        f"{OPTION_LAYOUTS}; or save the file as JSONL or Parquet (docs/formats.md).")
    if not isinstance(options, dict):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(options)}, expected the options as "
                        "{\"A\": text, ...} or a list of texts.")
    letter_of = _lettered(name, [str(key) for key in options])
    named = {letter_of[str(key)]: (f"{name}.{str(key).strip()}", value) for key, value in options.items()}
    return name, named, {key.strip(): letter for key, letter in letter_of.items()}


def read_choices(row: dict[str, Any], spec: DatasetSpec) -> Choices:
    """The options of a multiple-choice record, keyed A, B, C ... (_options_field), each checked as text."""
    where, named, letter_of = _options_field(row, spec)
    if not named:
        raise DataError(f"field '{printable(where, 60)}' is empty: a multiple-choice question needs options.")
    if len(named) < 2:
        raise DataError(f"field '{printable(where, 60)}' has one option: a multiple-choice question needs at least "
                        "two (with one, every answer is right).")
    texts = {letter: _text(value, name) for letter, (name, value) in named.items()}
    blank = [named[letter][0] for letter, text in texts.items() if invisible(text)]
    if blank:
        raise DataError(f"field '{printable(blank[0], 70)}' is empty: every option of a "
                        "multiple-choice question needs its text (an empty answer would teach a bare letter, and an "
                        "empty wrong option is no choice). Fill it in, or leave the row out.")
    spellings = {letter.lower(): letter for letter in texts} | {letter: letter for letter in texts} | letter_of
    return Choices(texts, spellings)


def mc_options(row: dict[str, Any], spec: DatasetSpec) -> dict[str, str]:
    """The options of a multiple-choice record as {letter: text} (read_choices)."""
    return read_choices(row, spec).texts


def _medmcqa_number(value: Any) -> int | None:
    """MedMCQA's cop as a whole number: an int, an integral float (what pandas makes of a column with a gap), or
    ASCII digits as text ('2', '2.0'); None for anything else (1.5, '²', True)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+(\.0*)?", value.strip()):
        return int(value.strip().split(".")[0])
    return None


def _medmcqa_letter(value: Any, options: dict[str, str]) -> str:
    """The letter of MedMCQA's cop (the right option, numbered from 0 as the hub's openlifescienceai/medmcqa does)."""
    number, letters = _medmcqa_number(value), list(options)
    if number == -1:
        raise DataError("field 'cop' is -1: the row's answer is not given (MedMCQA's test split hides its answers "
                        "this way). Read a split that has them (split: validation, or train), or leave the row out.")
    if number is None or not 0 <= number < len(letters):
        raise DataError(f"field 'cop' is {printable(repr(value), 40)}, expected the right option's number 0-"
                        f"{len(letters) - 1} (a whole number, in ASCII digits), as MedMCQA's hub layout "
                        "(openlifescienceai/medmcqa) numbers them: 0 for opa, 1 for opb ... A file that numbers them "
                        "from 1 (MedMCQA's first release) needs 1 taken off every cop.")
    return letters[number]


def mc_answer(row: dict[str, Any], spec: DatasetSpec, choices: Choices) -> tuple[str, str]:
    """(column, letter) of a row's right option: answer_idx (its key, in any spelling read_choices knows), or
    MedMCQA's cop (its number). An answer that names no option is returned as written, for the caller to refuse."""
    if "answer_idx" not in row and "answer_idx" not in spec.columns and "cop" in row:
        return "cop", _medmcqa_letter(row["cop"], choices.texts)
    name, answer = _column(row, spec, "answer_idx")
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(answer)}, expected an option's letter.")
    written = str(answer).strip()
    return name, choices.letter_of.get(written, written)
