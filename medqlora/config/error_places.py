"""Where a config error's value was given, for its message: the YAML file's line, or the --set override that gave
the key, a section above it, or (for a rule over several keys) a key the message names."""

from __future__ import annotations

import re


def _closest_line(loc: tuple, lines: dict[tuple, int | str]) -> int | str | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def where_given(loc: tuple, message: str, source: str, lines: dict[tuple, int | str]) -> str:
    """Where the value an error is about was given: the --set that gave the key or a section above it; else, for a
    rule over a section or the whole config, the --set keys under it that the message names (_overrides_named);
    else the file's line of the closest key, or the file."""
    line = _closest_line(loc, lines)
    if isinstance(line, str):
        return line
    named = _overrides_named(loc, message, lines)
    if named:
        return " and ".join(named)
    return f"{source}:{line}" if line else source


def _overrides_named(loc: tuple, message: str, lines: dict[tuple, int | str]) -> list[str]:
    """The --set overrides below ``loc`` that the message names: their key (or a key inside it), or a key above it
    below its section together with its own last part. Keys count in full or relative to ``loc`` (a section's
    rule writes its keys bare). --set grpo.rewards={...} or --set grpo.rewards.format=0 for 'grpo.rewards: ...
    (format, multiple_choice)', --set data.datasets=[...] for a rule on data.datasets.0."""
    named = []
    for key, given in lines.items():
        if not isinstance(given, str) or len(key) <= len(loc) or key[: len(loc)] != loc:
            continue
        above = [key[:end] for end in range(max(2, len(loc) + 1), len(key))]
        if _names_key(message, key, loc) or (any(_names_key(message, part, loc) for part in above)
                                             and _mentions(message, str(key[-1]))):
            named.append(given)
    return named


def _names_key(message: str, key: tuple, loc: tuple) -> bool:
    named = [".".join(map(str, key))] + ([".".join(map(str, key[len(loc):]))] if loc else [])
    return any(_mentions(message, form) for form in named)


def _mentions(message: str, word: str) -> bool:
    """``word`` in the message as a whole name (a key inside it may follow: data.datasets in data.datasets.0)."""
    return re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", message) is not None
