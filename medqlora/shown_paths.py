"""A path the user gave, as a message shows it when it is not there: quoted (a blank at its start or end, a
copy-paste's stowaway, is visible), escaped and masked as ``printable`` does, and where the path without those
blanks exists, that said too.

    model.name: the folder '/models/tiny ' (ends with a blank; '/models/tiny' exists) does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from .secrets import printable

SHOWN = 500  # characters of a path shown in a message (config.PATH_SHOWN)


def quoted_path(path: str | os.PathLike, limit: int = SHOWN) -> str:
    """``path`` in quotes, with a note where blanks at its start or end would hide why it is not found."""
    text = os.fspath(path)
    quote = '"' if "'" in text and '"' not in text else "'"
    shown = f"{quote}{printable(text, limit)}{quote}"
    stripped = text.strip()
    if stripped == text or not stripped:
        return shown
    ends = [where for where, blank in (("starts", text[0].isspace()), ("ends", text[-1].isspace())) if blank]
    note = f"{' and '.join(ends)} with a blank"
    try:
        there = Path(stripped).expanduser().exists()
    except (OSError, ValueError):
        there = False
    if there:
        note += f"; {quote}{printable(stripped, limit)}{quote} exists"
    return f"{shown} ({note})"
