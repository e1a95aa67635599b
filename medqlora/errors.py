"""The one error type users see: a message that says what to change, never a bare traceback."""


class MedQLoRAError(Exception):
    """A problem the user can fix. ``str(err)`` is the whole message."""


class ConfigError(MedQLoRAError):
    """The configuration (YAML, --set override or preset) is invalid."""


class DataError(MedQLoRAError):
    """A dataset cannot be loaded or does not have the columns its format needs."""


class ModelError(MedQLoRAError):
    """A base model or adapter cannot be found or loaded."""


class TrainingInterrupted(MedQLoRAError):
    """Ctrl-C during training: the adapter trained so far was saved first."""


class OutputLost(MedQLoRAError):
    """Standard output could not be written (run_mode from Python; the command line exits 2). ``result``: what the
    command returned where it went on to its end (the Run of its run folder), else None."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
