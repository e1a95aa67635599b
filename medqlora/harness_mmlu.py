"""MMLU's test files for the lm-eval tasks mmlu_<subject>: read from either layout (MMLU's own CSV files or the hub's
parquet files) in eval.lm_eval.mmlu_dir, each row checked, as the kit's items."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .config import KitConfig
from .data import resolve_local
from .errors import DataError
from .evaluate import EvalItem, check_answer_stated_once
from .rows import MAX_FIELD_CHARS
from .regular_files import link_note
from .secrets import printable

MMLU_LAYOUT = ("<dir>/<subject>_test.csv (MMLU's own data/test folder: question, A, B, C, D, answer letter; no "
               "header) or <dir>/<subject>/test-*.parquet (the hub's cais/mmlu layout: question, choices, answer)")


def subject_items(cfg: KitConfig, subject: str) -> list[EvalItem]:
    """The items of one MMLU subject from eval.lm_eval.mmlu_dir (a seeded sample of eval.lm_eval.max_items)."""
    folder = cfg.eval.lm_eval.mmlu_dir
    if folder is None:
        raise DataError(f"lm-eval task mmlu_{subject} needs MMLU's test files, which the kit does not ship: set "
                        f"eval.lm_eval.mmlu_dir to a folder laid out as {MMLU_LAYOUT}, or leave the MMLU tasks out of "
                        "eval.lm_eval.tasks.")
    local = resolve_local(folder)
    if local is None or not local.is_dir():
        raise DataError(f"eval.lm_eval.mmlu_dir {printable(folder)!r} is not a folder here. Give a folder laid out "
                        f"as {MMLU_LAYOUT}.")
    rows = subject_rows(local, subject)
    items = [_mmlu_item(subject, number, row) for number, row in enumerate(rows, start=1)]
    size = cfg.eval.lm_eval.max_items
    if size is not None and size < len(items):
        import random

        items = random.Random(cfg.training.seed).sample(items, size)
    check_answer_stated_once(f"lm-eval task mmlu_{subject}", items)
    return items


def subject_rows(folder: Path, subject: str) -> list[dict[str, Any]]:
    """MMLU rows of one subject as {question, choices, answer (0-3)}, from either layout."""
    csv_file = folder / f"{subject}_test.csv"
    parquet = sorted((folder / subject).glob("test-*.parquet")) if (folder / subject).is_dir() else []
    has_csv = csv_file.is_symlink() or csv_file.exists()
    if has_csv and parquet:
        raise DataError(f"lm-eval task mmlu_{subject}: eval.lm_eval.mmlu_dir holds the subject in both layouts, "
                        f"{printable(csv_file)} and {printable(parquet[0])}; the kit reads one file per subject. "
                        f"Keep one: move {subject}_test.csv or the {subject}/ folder out of {printable(folder)}.")
    if has_csv:
        _refuse_irregular(csv_file, subject)
        rows = _mmlu_csv_rows(csv_file)
    elif parquet:
        rows = _mmlu_parquet_rows(parquet, subject)
    else:
        raise DataError(f"lm-eval task mmlu_{subject}: neither {printable(csv_file)} nor "
                        f"{printable(folder / subject / 'test-*.parquet')} is there. Lay eval.lm_eval.mmlu_dir out "
                        f"as {MMLU_LAYOUT}.")
    if not rows:
        raise DataError(f"lm-eval task mmlu_{subject}: its file in {printable(folder)} holds no questions.")
    return rows


def _mmlu_csv_rows(file: Path) -> list[dict[str, Any]]:
    """The rows of a subject's CSV file, each named by the line it starts on; unreadable text is named too."""
    rows, line = [], 1
    csv.field_size_limit(MAX_FIELD_CHARS)  # as for data files: one cell of at most this many characters
    try:
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            for record in reader:
                rows.append(_mmlu_csv_row(file, line, record))
                line = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise DataError(f"{printable(file)}: not UTF-8 text (byte {err.start}). Save it as UTF-8.") from None
    except csv.Error as err:
        raise DataError(f"{printable(file)}:{line}: not readable as CSV ({printable(err, 120)}).") from None
    return rows


def _mmlu_parquet_rows(files: list[Path], subject: str) -> list[dict[str, Any]]:
    """The rows of a subject's parquet files (the hub layout), each file a regular one that parquet can read."""
    import pyarrow.parquet

    rows = []
    for file in files:
        _refuse_irregular(file, subject, "Put the hub's parquet file there, or remove it.")
        try:
            table = pyarrow.parquet.read_table(file).to_pylist()
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"lm-eval task mmlu_{subject}: {printable(file)} is not readable as parquet "
                            f"({type(err).__name__}: {printable(err, 160)}). Download it again from cais/mmlu.") from None
        rows += [_mmlu_parquet_row(file, number, record) for number, record in enumerate(table, 1)]
    return rows


def _refuse_irregular(file: Path, subject: str, advice: str = "") -> None:
    """A subject's file path names something that is not a file to read (a device, a pipe, a folder, a broken
    link); ``advice`` says what to put there (default: the CSV layout's file)."""
    if not file.is_file():
        advice = advice or (f"Put MMLU's {subject}_test.csv file there, or remove it to use the "
                            f"{subject}/test-*.parquet layout.")
        raise DataError(f"lm-eval task mmlu_{subject}: {printable(file)} is not a regular file{link_note(file)}. {advice}")


def _mmlu_csv_row(file: Path, number: int, record: list[str]) -> dict[str, Any]:
    where = f"{printable(file)}:{number}"
    if len(record) != 6:
        raise DataError(f"{where}: expected six columns (question, A, B, C, D, answer letter), got {len(record)}: "
                        f"{printable(record, 200)}.")
    answer = record[5].strip()
    if answer.upper() in ("A", "B", "C", "D"):  # a lower-case letter names the same option
        return {"question": record[0], "choices": record[1:5], "answer": "ABCD".index(answer.upper())}
    if number == 1:
        raise DataError(f"{where}: the answer column (the sixth) holds {printable(answer, 40)!r}, not a letter A-D: "
                        "is this line a header? MMLU's CSV files have no header row; remove it "
                        f"(got {printable(record, 200)}).")
    raise DataError(f"{where}: the answer column (the sixth) holds {printable(answer, 40)!r}; expected one letter "
                    "A, B, C or D (either case).")


def _mmlu_parquet_row(file: Path, number: int, record: dict[str, Any]) -> dict[str, Any]:
    choices, answer = record.get("choices"), record.get("answer")
    if (not isinstance(record.get("question"), str) or not isinstance(choices, list) or len(choices) != 4
            or not isinstance(answer, int) or not 0 <= answer < 4):
        raise DataError(f"{printable(file)}: row {number} is not an MMLU row (question, four choices, answer 0-3).")
    return {"question": record["question"], "choices": [str(c) for c in choices], "answer": answer}


def _mmlu_item(subject: str, number: int, row: dict[str, Any]) -> EvalItem:
    from .data import Example

    letters = "ABCD"
    return EvalItem(f"{subject}-{number}", Example(prompt=row["question"], response=letters[row["answer"]]),
                    letters[row["answer"]], list(letters), dict(zip(letters, row["choices"], strict=True)),
                    format="multiple_choice")
