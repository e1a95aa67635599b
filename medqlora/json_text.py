"""JSON read from files the kit does not own (a model's config.json, an adapter's adapter_config.json, a run folder's
manifest.json, data files): a document nested thousands of levels deep makes Python's parser raise RecursionError,
which no reader expects; here it is a JSONDecodeError, so that each reader's own message names the file."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes | bytearray, **options: Any) -> Any:
    """json.loads, a document nested too deeply raised as the JSONDecodeError of a damaged file."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (thousands of levels of lists or objects)",
                                   text if isinstance(text, str) else "", 0) from None
