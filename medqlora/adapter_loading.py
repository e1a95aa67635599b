"""A saved adapter put onto a loaded base model through PEFT and compared at once with its config
(adapters.check_loaded): to answer with it, to train on from it (training.init_adapter) and to merge it (export).

PEFT warns of the tensors an adapter lacks with the name of every one of them ("Found missing adapter keys while
loading the checkpoint: [...]", hundreds of names), printed before the kit's own message that refuses the adapter
and says what to do. The warnings PEFT gives while it loads are held back: where the kit refuses the adapter for its
missing tensors, that warning is left out (the kit's message says it); every other warning is shown as PEFT gave it,
and so is that one where the kit lets the adapter load."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .adapters import check_loaded
from .errors import ModelError

MISSING_KEYS = "Found missing adapter keys"


def load_checked(base: Any, folder: Path, failed: Callable[[Exception], ModelError] | None = None,
                 **kwargs: Any) -> Any:
    """PeftModel.from_pretrained(base, folder, **kwargs), then check_loaded. ``failed`` turns an error of PEFT's
    loading into the caller's message (None: raised as it is)."""
    from peft import PeftModel

    held: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as held:
            model = PeftModel.from_pretrained(base, str(folder), **kwargs)
        check_loaded(model, Path(folder))
    except ModelError:  # the kit's own message: PEFT's list of missing keys would only precede it
        _show(w for w in held if MISSING_KEYS not in str(w.message))
        raise
    except Exception as err:
        _show(held)
        if failed is None:
            raise
        raise failed(err) from None
    _show(held)
    return model


def short_error(err: Exception) -> str:
    """An error of PEFT's loading in one line: its type and message, a message of many lines (one that prints a
    whole module tree) cut to its first and last lines."""
    from .secrets import printable

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{lines[0]} ... {lines[-1]}" if len(lines) > 2 else " ".join(lines)
    return f"{type(err).__name__}: {printable(text, 300)}"


def _show(held: Iterable[warnings.WarningMessage]) -> None:
    for w in held:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
