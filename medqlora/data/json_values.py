"""Values of JSON and JSONL data rows that parse but no tokenizer or row check can take: integers too long to
read, keys that appear twice in one object (JSON keeps only the last), and half of a UTF-16 surrogate pair.
The readers parse with ``parse_int``, ``parse_float`` and ``pairs_once`` and then call ``refuse_unreadable_values`` on each row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import DataError
from ..secrets import printable, unpaired_surrogate


class _LongInt(str):
    """An integer of more digits than Python reads (4300): kept as its text to be named, then refused."""


def parse_int(text: str) -> int | str:
    return _LongInt(text) if len(text) > 4000 else int(text)


class WrittenFloat(float):
    """A JSON number with a fraction or an exponent (1.50, 2.0, 1e3), keeping the text it was written as: an answer
    read as a number is compared as written ('1.50'), not as Python prints the float ('1.5')."""

    written: str


def parse_float(text: str) -> WrittenFloat:
    value = WrittenFloat(text)
    value.written = text
    return value


def _first_field(value: Any, here: Callable[[Any, str], str | None], name: str = "") -> str | None:
    """The field (a.b[2]) of a parsed JSON value where ``here(value, name)`` first names something, if any."""
    found = here(value, name)
    if found:
        return found
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _first_field(item, here, f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}" if name else key)
        if found:
            return found
    return None


def _long_int_field(value: Any, name: str = "") -> str | None:
    """The field (a.b[2]) of the first over-long integer in a parsed JSON value, if any."""
    return _first_field(value, lambda v, n: (n or "the value") if isinstance(v, _LongInt) else None, name)


class _Twice(dict):
    """A JSON object that named a key more than once (json keeps the last value): `twice` is that key."""
    twice = ""


def pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a dict as json builds it, marked when a key comes twice (refused once the row is known)."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    marked = _Twice(value)
    marked.twice = next(key for key, _ in pairs if key in seen or seen.add(key))
    return marked


def _twice_field(value: Any, name: str = "") -> str | None:
    """The key (a.b[2].key) a JSON object of this parsed value names twice, if any."""
    return _first_field(value, lambda v, n: (f"{n}.{v.twice}" if n else v.twice) if isinstance(v, _Twice) else None,
                        name)


def _surrogate_field(value: Any, name: str = "") -> str | None:
    def here(v: Any, n: str) -> str | None:
        if isinstance(v, str) and unpaired_surrogate(v):
            return n or "the value"
        if isinstance(v, dict):
            key = next((k for k in v if isinstance(k, str) and unpaired_surrogate(k)), None)
            return None if key is None else f"{n}.{key}" if n else key
        return None
    return _first_field(value, here, name)


def refuse_unreadable_values(value: Any, where: str) -> None:
    found = _long_int_field(value)
    if found:
        raise DataError(f"{where}: field '{printable(found, 120)}' holds an integer too long to read (over 4000 "
                        "digits). Write it as a quoted string, or remove it.")
    broken = _surrogate_field(value)
    if broken:
        raise DataError(f"{where}: field '{printable(broken, 120)}' holds half of a UTF-16 surrogate pair (a "
                        "\\ud800-\\udfff escape alone), text that no tokenizer can read: the exporter that wrote "
                        "the file split a character such as an emoji. Write the character itself (or its full "
                        "pair), or remove it.")
    twice = _twice_field(value)
    if twice:
        raise DataError(f"{where}: key '{printable(twice, 120)}' appears twice in one object (JSON would keep only "
                        "the last value). Keep one of them.")
