"""What the kit tells its user: one logger for every module.

``say`` prints ``[medqlora] message`` on stdout and writes it to the run's run.log (the handler that
``RunDir.start_log`` installs on ``log``); under a launcher only the main process speaks, for all of them.
Modules that only record (tracebacks, details a user does not need on screen) use ``log`` directly.
"""

from __future__ import annotations

import logging

from .distributed import is_main

log = logging.getLogger("medqlora")


def say(message: str) -> None:
    """One line on screen and in run.log, from the main process."""
    if not is_main():  # data parallel: the main process speaks for all
        return
    print(f"[medqlora] {message}", flush=True)
    log.info(message)
