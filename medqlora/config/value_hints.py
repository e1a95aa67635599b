"""What YAML made of a value a setting does not take, and how to write it: text read as a number or a mapping
(``Q: {question}``, ``10:30``), and ``~`` / ``null`` / nothing after the colon read as no value at all."""

from __future__ import annotations

from ..secrets import printable


def quote_hint(error: dict, typed: dict[tuple, str]) -> str:
    """For text that YAML read as something else (``Q: {question}`` as a mapping, ``10:30`` as the number 630):
    say so, and how to quote it."""
    value = error.get("input")
    if error["type"] != "string_type" or not isinstance(value, (dict, list, int, float, bool)):
        return ""
    kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else \
        "true/false" if isinstance(value, bool) else "a number"
    loc = tuple(error["loc"])
    if loc in typed:
        dotted = printable(".".join(str(p) for p in loc), 120)
        shown = printable(typed[loc], 100)
        return (f" YAML reads {shown} as {kind}; to give it as text, quote it: --set '{dotted}=\"{shown}\"'."
                if '"' not in typed[loc] else f" YAML reads {shown} as {kind}; to give it as text, quote it.")
    return f" YAML read the value as {kind}; if it is meant as text, put it in quotes."


def null_hint(error: dict, typed: dict[tuple, str], has_default: bool) -> str:
    """For a setting YAML read as null (``output.dir: ~`` meant as the home folder, ``null``, or a key with
    nothing after its colon, or --set key=): say so, and what to write instead."""
    if error.get("input", "") is not None or error["type"] == "missing":
        return ""
    given_by_set = tuple(error["loc"]) in typed
    empty = "nothing after =" if given_by_set else "a key with nothing after its colon"
    home = (" (~ alone is not your home folder: for a folder under it, write ~/ and the rest, ~/outputs)"
            if error["type"] == "string_type" else "")
    leave_out = (", or leave out this --set" if given_by_set else ", or leave the key out") + " for its default"
    return f" YAML reads ~, null and {empty} as no value: give the value{home}{leave_out if has_default else ''}."
