"""A path the user gave, as a message shows it when it is not there: quoted (a blank at its start or end, a
copy-paste's stowaway, is visible), escaped and masked as ``printable`` does, with a note where it is spelled in a
way the kit takes literally: blanks at its ends, quote marks around it (Windows' "Copy as path", a YAML value
quoted twice), an environment variable ($HOME, ${DATA}), which the kit does not expand, or the home folder of
a user who does not exist (~nobody/runs); where the path meant exists, that said too.

    model.name: the folder '/models/tiny ' (ends with a blank; '/models/tiny' exists) does not exist.

``spelling_problem`` is the refusal made of that note, for a path value that is not there as written (the config
schema's path settings and the path flags check it where they enter).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from .secrets import printable

SHOWN = 500  # characters of a path shown in a message (config.PATH_SHOWN)

# Quote marks a copy-paste leaves around a path: ASCII, typographic (a word processor, a chat app) and guillemets.
QUOTE_MARKS = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
# $NAME and ${NAME}, as a shell (and many tools' configs) would expand them.
ENV_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _shown(text: str, limit: int) -> str:
    quote = '"' if "'" in text and '"' not in text else "'"
    return f"{quote}{printable(text, limit)}{quote}"


def _exists(text: str) -> bool:
    try:
        return bool(text) and Path(text).expanduser().exists()
    except (OSError, ValueError, RuntimeError):  # a name the file system cannot hold; ~user of no user
        return False


def broken_link(text: str, what: str = "path") -> list[str]:
    """Where ``text`` is a symbolic link that leads nowhere, why it is "not there" though ls shows it: it loops
    back to itself, or points at what does not exist (``what``: a real path, file...). Else nothing."""
    loop = f"a symbolic link that loops back to itself: point it, or a link it leads through, at a real {what}"
    try:
        path = Path(text).expanduser()
        if not path.is_symlink() or path.exists():
            return []
        os.stat(path)
    except RuntimeError:  # Python 3.11's loop in resolve
        return [loop]
    except OSError as err:
        if err.errno == errno.ELOOP:
            return [loop]
        try:
            return [f"a symbolic link to {printable(os.readlink(path), SHOWN)}, which does not exist: point it at a real "
                    f"{what}"]
        except OSError:
            return []
    except ValueError:
        return []
    return []


def env_variables(text: str) -> list[str]:
    """The environment variables ``text`` names ($NAME or ${NAME}), each once, in order."""
    return list(dict.fromkeys(a or b for a, b in ENV_VARIABLE.findall(text)))


def _expanded(text: str) -> str | None:
    """``text`` with its environment variables replaced by their values; None where one of them is not set."""
    if any(name not in os.environ for name in env_variables(text)):
        return None
    return ENV_VARIABLE.sub(lambda m: os.environ[m.group(1) or m.group(2)], text)


def _unknown_user(text: str) -> str | None:
    """``~name`` at the start of ``text`` where this machine has no user of that name (expanduser cannot expand)."""
    if not text.startswith("~") or text == "~" or text.startswith(("~/", "~\\")):
        return None
    try:
        Path(text).expanduser()
    except RuntimeError:
        return text.split("/", 1)[0]
    return None


def _spelling(text: str) -> tuple[list[str], list[str], str | None]:
    """What in ``text`` the kit takes literally though the user likely did not mean it: blanks at its ends, then
    quote marks and environment variables; and the path meant (None where that cannot be told: a variable that
    is not set)."""
    meant = text.strip()
    ends = [where for where, blank in (("starts", text[:1].isspace()), ("ends", text[-1:].isspace())) if blank]
    blanks = [f"{' and '.join(ends)} with a blank"] if ends and meant else []
    notes: list[str] = []
    unquoted = meant.strip(QUOTE_MARKS).strip()
    if unquoted != meant and unquoted:
        at = [where for where, mark in (("start", meant[0]), ("end", meant[-1])) if mark in QUOTE_MARKS]
        notes.append(("is wrapped in quote marks" if len(at) == 2 else f"has a quote mark at its {at[0]}")
                     + ", which the kit takes as part of the path")
        meant = unquoted
    user = _unknown_user(meant)
    if user:
        notes.append(f"starts with {user}, the home folder of a user this machine does not have")
        return blanks, notes, None
    names = env_variables(meant)
    if names:
        unset = [f"${name}" for name in names if name not in os.environ]
        notes.append(f"names the environment variable{'s' if len(names) > 1 else ''} "
                     f"{', '.join('$' + n for n in names)}, which the kit does not expand"
                     + (f" ({', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set)" if unset else ""))
        meant = _expanded(meant)
    return blanks, notes, meant


def quoted_path(path: str | os.PathLike, limit: int = SHOWN, links: bool = True) -> str:
    """``path`` in quotes, with a note where its spelling (blanks or quote marks at its ends, an environment
    variable) would hide why it is not found (quote marks and variables only where it is not there as written), or
    a symbolic link there leads nowhere (``links``: False where the message says that itself)."""
    text = os.fspath(path)
    blanks, notes, meant = _spelling(text)
    if notes and _exists(text):
        notes = []
    notes = blanks + notes + (broken_link(text) if links else [])
    if not notes:
        return _shown(text, limit)
    if meant is not None and meant != text and _exists(meant):
        notes.append(f"{_shown(meant, limit)} exists")
    return f"{_shown(text, limit)} ({'; '.join(notes)})"


def spelling_problem(text: str, limit: int = SHOWN) -> str | None:
    """After the value's name (``--adapter '"runs/a"': ...``), why a path value that is not there as written is
    refused: quote marks around it or an environment variable in it (the kit takes both literally, and would look
    for, or make, a path of those characters), or ~user of no user; and what to write instead where that can be
    told. None for any other path, and for one that exists as written.
    Blanks at its ends are left to the not-found messages (quoted_path), as before."""
    _, notes, meant = _spelling(text)
    if not notes or _exists(text):
        return None
    fix = (f"Write {_shown(meant, limit)}{' (it exists)' if _exists(meant) else ''}" if meant
           else "Write the path out in full")
    if _unknown_user(text.strip().strip(QUOTE_MARKS).strip()):
        return f"{' and '.join(notes)}. {fix}"
    return f"{' and '.join(notes)}: it would look for (or make) a path of those very characters. {fix}"
