"""Failed writes that do not arrive as OSError: safetensors reports a full disk (or a read-only or vanished folder)
as its own SafetensorError, whose text ends in the OS error's number. The kit's handlers of a full disk (the
incomplete checkpoint or adapter removed, one message, exit 2) take OSError: this turns the one into the other."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(err: BaseException) -> OSError | None:
    """The OSError a safetensors error carries in its text ('... No space left on device (os error 28)'), or None."""
    if type(err).__name__ != "SafetensorError":
        return None
    found = _OS_ERROR.search(str(err))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


@contextmanager
def safetensors_os_errors() -> Iterator[None]:
    """Inside the block, a safetensors error that carries an OS error is raised as that OSError."""
    try:
        yield
    except Exception as err:
        converted = as_os_error(err)
        if converted is None:
            raise
        raise converted from err
