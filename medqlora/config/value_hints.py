"""What YAML made of a value a setting does not take, and how to write it: text read as a number or a mapping
(``Q: {question}``, ``10:30``), and ``~`` / ``null`` / nothing after the colon read as no value at all."""

from __future__ import annotations

from typing import Any

from ..secrets import printable
from .base import names_a_path


# text settings that other tools take as true/false, and what the kit takes instead
NOT_A_SWITCH = {("export", "push_to_hub"): "export.push_to_hub is not a switch: it takes the hub repository to upload "
                                           "to, owner/name (--set export.push_to_hub=owner/name); leave it out to "
                                           "upload nothing."}


def quote_hint(error: dict, typed: dict[tuple, str]) -> str:
    """For text that YAML read as something else (``Q: {question}`` as a mapping, ``10:30`` as the number 630):
    say so, and how to quote it."""
    import datetime

    value = error.get("input")
    if error["type"] != "string_type" or not isinstance(value, (dict, list, int, float, bool, datetime.date)):
        return ""
    kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else \
        "true/false" if isinstance(value, bool) else "a date" if isinstance(value, datetime.date) else "a number"
    loc = tuple(error["loc"])
    if isinstance(value, bool) and loc in NOT_A_SWITCH:  # transformers' push_to_hub=true habit
        return f" {NOT_A_SWITCH[loc]}"
    if loc in typed:
        dotted = printable(".".join(str(p) for p in loc), 120)
        shown = printable(typed[loc], 100)
        return (f" YAML reads {shown} as {kind}; to give it as text, quote it: --set '{dotted}=\"{shown}\"'."
                if '"' not in typed[loc] else f" YAML reads {shown} as {kind}; to give it as text, quote it.")
    return f" YAML read the value as {kind}; if it is meant as text, put it in quotes."


def null_hint(error: dict, typed: dict[tuple, str], field: Any, depth: int) -> str:
    """For a setting YAML read as null (``output.dir: ~`` meant as the home folder, ``null``, or a key with
    nothing after its colon, or --set key=): say so, and what to write instead. ``field`` is the setting's and
    ``depth`` how many parts of the error's place name it; a null below them is an element of its list or mapping
    (``lora.target_modules=[q_proj, ~]``), named as such. The home-folder advice is for settings that name a file or
    folder only."""
    if error.get("input", "") is not None or error["type"] == "missing":
        return ""
    loc = tuple(error["loc"])
    given_by_set = any(loc[:end] in typed for end in range(1, len(loc) + 1))
    if depth < len(loc):
        return _null_element(loc, depth, given_by_set)
    empty = "nothing after =" if given_by_set else "a key with nothing after its colon"
    home = (" (~ alone is not your home folder: for a folder under it, write ~/ and the rest, ~/outputs)"
            if error["type"] == "string_type" and names_a_path(field) else "")
    has_default = field is not None and not field.is_required()
    leave_out = (", or leave out this --set" if given_by_set else ", or leave the key out") + " for its default"
    return f" YAML reads ~, null and {empty} as no value: give the value{home}{leave_out if has_default else ''}."


def _null_element(loc: tuple, depth: int, given_by_set: bool) -> str:
    """The null is an element of a setting's list or mapping: which one, and to give it or remove it."""
    setting = printable(".".join(str(p) for p in loc[:depth]), 120)
    inner = printable(".".join(str(p) for p in loc[depth:-1]), 120)
    holder = f"{setting}.{inner}" if inner else setting
    last = loc[-1]
    if isinstance(last, int):
        which, remove = f"element {last} (counted from 0) of the list {holder}", "remove it from the list"
    else:
        which, remove = f"the value of '{printable(str(last), 80)}' in {holder}", "remove that key"
    nulls = "~ and null" if given_by_set or isinstance(last, int) else "~, null and a key with nothing after its colon"
    return f" YAML reads {nulls} as no value, and {which} is one: give it, or {remove}."
