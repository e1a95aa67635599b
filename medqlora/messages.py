"""What the kit tells its user: one logger for every module.

``say`` prints ``[medqlora] message`` on stdout and writes it to the run's run.log; under a launcher only the
main process speaks, for all of them. ``RunDir.start_log`` opens run.log through ``log_to``: what was said
before the run folder existed (the backend, a resumed run, the adapter in use) is written first, so run.log
holds every line of its command. Modules that only record (tracebacks, details a user does not need on
screen) use ``log`` directly.
"""

from __future__ import annotations

import collections
import logging

from .distributed import is_main
from .secrets import redact

log = logging.getLogger("medqlora")
_said_before_run_log: collections.deque[logging.LogRecord] = collections.deque(maxlen=500)


def say(message: str) -> None:
    """One line on screen and in run.log, from the main process."""
    if not is_main():  # data parallel: the main process speaks for all
        return
    message = redact(message)  # a credential inside a path or a value read from a file is masked on screen too
    print(f"[medqlora] {message}", flush=True)
    if _run_logs():
        log.info(message)
    else:  # kept for the run.log this command opens
        _said_before_run_log.append(log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None))


def _run_logs() -> list[logging.FileHandler]:
    return [h for h in log.handlers if isinstance(h, logging.FileHandler)]


def begin_command() -> None:
    """A new command (a CLI call, or a mode run from Python): an earlier command's run.log is closed, so that
    nothing of this one is written into it, and nothing said before this command is kept for its run.log."""
    for old in _run_logs():
        log.removeHandler(old)
        old.close()
    _said_before_run_log.clear()


def log_to(handler: logging.Handler) -> None:
    """``handler`` (a run's run.log) takes every line from now on, after those said before it opened."""
    begin_command_lines = list(_said_before_run_log)
    for old in _run_logs():  # only this run's run.log
        log.removeHandler(old)
        old.close()
    log.propagate = False  # Unsloth installs a root handler; keep each message once on screen
    log.setLevel(logging.INFO)
    for record in begin_command_lines:
        handler.handle(record)
    _said_before_run_log.clear()
    log.addHandler(handler)
