"""The metadata of a GGUF file measured against the file's size before llama.cpp's reader parses it: a damaged or
hostile count (an array of 2^40 items in a 72-byte file) would keep the reader looping for hours."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes (GGUF spec)
_STRING, _ARRAY = 8, 9
_HEADER = 24  # magic, version (u32), tensor count (u64), metadata count (u64)


class _Beyond(Exception):
    """A count or length that reaches past the end of the file."""


READ_VERSIONS = (1, 2, 3)  # the GGUF versions gguf's reader reads


def newer_version(path: Path) -> int | None:
    """The file's GGUF version when it is newer than the reader's, else None."""
    with path.open("rb") as handle:
        head = handle.read(8)
    version = struct.unpack_from("<I", head, 4)[0] if len(head) == 8 else None
    return version if version is not None and version > max(READ_VERSIONS) else None


def metadata_problem(path: Path) -> str | None:
    """What in the file's metadata reaches past its end (a count, a length), or None when it all fits."""
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk(data)
    except ValueError:  # an empty file cannot be mapped
        return "the file is empty"


def _walk(data: mmap.mmap) -> str | None:
    size = len(data)
    if size < _HEADER:
        return f"the file ends inside its header ({size} bytes)"
    version, tensors, entries = struct.unpack_from("<IQQ", data, 4)
    if version < 2:
        return None  # GGUF version 1 counts in 32 bits: left to the reader
    # each entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor's description at least 8 + 4 + 8 + 4
    if entries * 13 > size or tensors * 24 > size:
        return f"it declares {entries} metadata entries and {tensors} tensors, more than its {size} bytes can hold"
    at = _HEADER
    try:
        for number in range(entries):
            at = _string(data, at, f"metadata entry {number + 1}'s key")
            kind = _unpack(data, "<I", at, f"metadata entry {number + 1}'s type")
            at = _value(data, at + 4, kind, f"metadata entry {number + 1}")
    except _Beyond as beyond:
        return str(beyond)
    return None


def _unpack(data: mmap.mmap, layout: str, at: int, what: str) -> int:
    if at + struct.calcsize(layout) > len(data):
        raise _Beyond(f"{what} lies past the end of the file ({len(data)} bytes)")
    return struct.unpack_from(layout, data, at)[0]


def _string(data: mmap.mmap, at: int, what: str) -> int:
    length = _unpack(data, "<Q", at, what)
    if at + 8 + length > len(data):
        raise _Beyond(f"{what} is {length} bytes long, past the end of the file ({len(data)} bytes)")
    return at + 8 + length


def _value(data: mmap.mmap, at: int, kind: int, what: str) -> int:
    if kind in _FIXED:
        return at + _FIXED[kind]
    if kind == _STRING:
        return _string(data, at, what)
    if kind != _ARRAY:
        raise _Beyond(f"{what} has the unknown value type {kind}")
    item = _unpack(data, "<I", at, f"{what}'s item type")
    count = _unpack(data, "<Q", at + 4, f"{what}'s item count")
    at += 12
    smallest = _FIXED.get(item, 8)  # a string (or nested array) takes at least its 8-byte length
    if count * smallest > len(data) - at:
        raise _Beyond(f"{what} declares {count} items, more than the file's {len(data)} bytes can hold")
    if item in _FIXED:
        return at + count * _FIXED[item]
    for _ in range(count):
        at = _value(data, at, item, what)
    return at
