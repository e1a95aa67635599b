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
