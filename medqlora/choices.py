"""The options and the right answer of a multiple-choice row, in every layout the kit reads: an options column
(an object {letter: text} or a list, lettered A, B, ...), or one column per option, which a CSV file can hold:
MedMCQA's hub layout (opa..opd, the right one as cop 0-3) or one column per letter (A, B, C, D) with answer_idx."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DataError
from .rows import MissingColumnError, _column, _kind, _text, invisible
from .secrets import printable

if TYPE_CHECKING:
    from .config import DatasetSpec

# Layouts that give each option a column of its own, which a CSV file can hold (a CSV cell holds text, never an
# object or a list): MedMCQA's hub layout (openlifescienceai/medmcqa: opa..opd, the right one as cop 0-3), and one
# column per letter (A, B, C, D ...).
MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")
OPTION_LAYOUTS = ("one column per option: opa, opb, opc, opd with cop (MedMCQA's hub layout, cop 0-3), or A, B, C, D "
                  "with answer_idx (the letter)")


def _option_columns(row: dict[str, Any], spec: DatasetSpec) -> dict[str, str] | None:
    """{letter: column} when a row holds its options in columns of their own and no 'options' column (nor a
    ``columns:`` mapping of it); None otherwise."""
    if "options" in spec.columns or "options" in row:
        return None
    if all(column in row for column in MEDMCQA_OPTIONS):
        return dict(zip("ABCD", MEDMCQA_OPTIONS, strict=True))
    letters = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if letter not in row:
            break
        letters.append(letter)
    return {letter: letter for letter in letters} if len(letters) >= 2 else None


def _options_field(row: dict[str, Any], spec: DatasetSpec) -> tuple[str, dict[str, tuple[str, Any]]]:
    """(where, {letter: (column or field name, value)}) of a row's options, from an options column (an object or
    a list) or from columns of their own (_option_columns)."""
    columns = _option_columns(row, spec)
    if columns is not None:
        return ", ".join(columns.values()), {letter: (column, row[column]) for letter, column in columns.items()}
    try:
        name, options = _column(row, spec, "options")
    except MissingColumnError as err:
        raise MissingColumnError(err.missing, "Give the options as one column holding {\"A\": text, ...} or a list "
                                 "(map yours with columns: {options: your_column}), or as " + OPTION_LAYOUTS + "."
                                 ) from None
    if isinstance(options, list):
        if len(options) > 26:
            raise DataError(f"field '{printable(name, 60)}' has {len(options)} options; at most 26 (A-Z) are "
                            "supported.")
        options = {chr(ord("A") + i): value for i, value in enumerate(options)}
    elif isinstance(options, str):
        raise DataError(f"field '{printable(name, 60)}' is text ({printable(repr(options), 40)}), expected the options "
                        "as {\"A\": text, ...} or a list of texts, which a CSV cell cannot hold. In a CSV file give "
                        f"{OPTION_LAYOUTS}; or save the file as JSONL or Parquet (docs/formats.md).")
    elif not isinstance(options, dict):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(options)}, expected the options as "
                        "{\"A\": text, ...} or a list of texts.")
    return name, {str(letter).strip(): (f"{name}.{letter}", value) for letter, value in options.items()}


def mc_options(row: dict[str, Any], spec: DatasetSpec) -> dict[str, str]:
    """The options of a multiple-choice record as {letter: text} (a plain list is lettered A, B, ...; columns of
    their own, as _option_columns reads them)."""
    where, named = _options_field(row, spec)
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
    return texts


def _medmcqa_letter(value: Any, options: dict[str, str]) -> str:
    """The letter of MedMCQA's cop (the right option, numbered from 0 as the hub's openlifescienceai/medmcqa does)."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    letters = list(options)
    if text == "-1":
        raise DataError("field 'cop' is -1: the row's answer is not given (MedMCQA's test split hides its answers "
                        "this way). Read a split that has them (split: validation, or train), or leave the row out.")
    if not text.isdigit() or int(text) >= len(letters):
        raise DataError(f"field 'cop' is {printable(repr(value), 40)}, expected the right option's number 0-"
                        f"{len(letters) - 1}, as MedMCQA's hub layout (openlifescienceai/medmcqa) numbers them: 0 for "
                        "opa, 1 for opb ... A file that numbers them from 1 (MedMCQA's first release) needs 1 taken "
                        "off every cop.")
    return letters[int(text)]


def mc_answer(row: dict[str, Any], spec: DatasetSpec, options: dict[str, str]) -> tuple[str, str]:
    """(column, letter) of a row's right option: answer_idx (its letter), or MedMCQA's cop (its number)."""
    if "answer_idx" not in row and "answer_idx" not in spec.columns and "cop" in row:
        name, answer = "cop", row["cop"]
    else:
        name, answer = _column(row, spec, "answer_idx")
    if name == "cop":
        return name, _medmcqa_letter(answer, options)
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise DataError(f"field '{printable(name, 60)}' is {_kind(answer)}, expected an option's letter.")
    return name, str(answer).strip()
