"""JSON files that hold a table in one of pandas' layouts other than records: ``DataFrame.to_json()``'s default
(column-oriented: {column: {row index: value}}) and orient="split" ({"columns": [...], "index": [...], "data":
[[...]]}). Read as records, the first would turn each column into a row keyed by the row numbers; both are
refused saying how to write records. (orient="index", {row index: {column: value}}, is a dict keyed by id: it
reads as records.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..secrets import printable

_ROW_INDEX = re.compile(r"-?\d+")  # pandas writes a row index (a RangeIndex, a filtered one, dates) as integers
_SPLIT_KEYS = {"columns", "index", "data", "name"}


def _column_oriented(payload: dict[str, Any]) -> bool:
    """Every value an object, all with the same keys, and those keys row numbers: columns keyed by row index (a
    dict keyed by id holds records keyed by field names)."""
    inner = list(payload.values())
    if not inner or not all(isinstance(value, dict) and value for value in inner):
        return False
    keys = set(inner[0])
    return all(set(value) == keys for value in inner) and all(_ROW_INDEX.fullmatch(key) for key in keys)


def _split_layout(payload: dict[str, Any]) -> bool:
    return {"columns", "data"} <= set(payload) <= _SPLIT_KEYS and isinstance(payload["columns"], list) \
        and isinstance(payload["data"], list) and all(isinstance(row, list) for row in payload["data"])


def refuse_pandas_layouts(path: Path, payload: Any) -> None:
    """A column-oriented or split table (the module's docstring): refused, naming the layout and how to write one
    record per row."""
    if not isinstance(payload, dict):
        return
    if _column_oriented(payload):
        columns, rows = list(payload), len(next(iter(payload.values())))
        layout = (f"is column-oriented: each top-level key is a column ({printable(', '.join(columns[:6]), 120)}"
                  f"{' ...' if len(columns) > 6 else ''}) holding its {rows} value{'s' if rows > 1 else ''} by row "
                  "number, as pandas' DataFrame.to_json() writes by default")
    elif _split_layout(payload):
        layout = "is in pandas' orient=\"split\" layout: the column names under 'columns', the rows as lists under 'data'"
    else:
        return
    raise DataError(f"{path}: the table {layout}; the kit reads one record (an object of column: value) per row. "
                    f"Write the records instead, e.g. df.to_json(\"{printable(path.stem, 80)}.jsonl\", "
                    "orient=\"records\", lines=True), and point the source at that file.")
