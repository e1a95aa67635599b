"""What every part of the schema stands on: where the kit's own files are (``KIT_ROOT``: the checkout or
the wheel's ``_kit``), the caps on sizes and counts, the aliases of old key names, text without control
characters (``PathText``; ``PathValue`` for paths: no quote marks around one, no environment variable in one),
hub ids, and ``Section``, the strict base of every config section (unknown keys, nan/inf and booleans for numbers
are refused)."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

from ..secrets import printable
from ..shown_paths import spelling_problem


def _kit_root() -> Path:
    """Where the default config, presets and shipped data live: beside the package in a source checkout (or an
    editable install), inside it (``medqlora/_kit``) in an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    return checkout if (checkout / "config" / "training_config.yaml").is_file() else package / "_kit"


KIT_ROOT = _kit_root()
DEFAULT_CONFIG = KIT_ROOT / "config" / "training_config.yaml"
PRESETS_DIR = KIT_ROOT / "config" / "presets"

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Names users type from other kits' configs, mapped to ours (used for did-you-mean).
KEY_ALIASES = {
    "lr": "learning_rate",
    "epochs": "num_epochs",
    "num_train_epochs": "num_epochs",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "seq_len": "max_seq_length",
    "max_length": "max_seq_length",
    "model_name": "name",
    "optim": "optimizer",
    "warmup": "warmup_ratio",
}


# Limits of the YAML boundary (config files, --set values, the sample-queries file).
YAML_MAX_BYTES = 1 << 20  # 1 MiB: a config is a few KiB
YAML_MAX_VALUES = 20_000  # values of a document, aliases expanded (a config has hundreds; an alias bomb billions)
CONFIG_TOO_MANY = "more than {limit:,} values; a config file holds a few hundred (is it the right file)"
YAML_MAX_DEPTH = 64  # nesting levels, aliases expanded

# Caps of the numeric settings: generous for any real run, far below what would overflow or hang.
MAX_STEPS = 10_000_000
MAX_BATCH = 65_536
MAX_NEW_TOKENS = 131_072
MAX_CONTEXT = 1_048_576  # tokens; the longest context windows of current models


PATH_SHOWN = 500  # characters of a path shown in a message


def has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _no_control_characters(text: str | None) -> str | None:
    """File names, folder names and paths: no NUL, newline or other control character."""
    if text is not None and has_control_characters(text):
        raise ValueError("must not contain control characters (NUL, newline, tab, escape...)")
    return text


PathText = Annotated[str, AfterValidator(_no_control_characters)]


def _taken_as_written(text: str | None) -> str | None:
    """A path setting wrapped in quote marks or naming an environment variable ($HOME/runs), and not there as
    written, is refused: the kit would look for, or make, a path of those very characters."""
    problem = spelling_problem(text) if text is not None else None
    if problem:
        raise ValueError(problem)
    return text


def _no_credential_in_path(text: str | None) -> str | None:
    """A path holding a credential's value (a folder named after a token): the run's records mask the value, so
    they would not name what was read, and a model's path is also written, unmasked, into the adapter's
    adapter_config.json by PEFT (published with the adapter)."""
    from ..secrets import contains_secret

    if text is not None and (secret := contains_secret(text)):
        raise ValueError(f"holds the value of {secret}: a path is written into the run's records, which mask the "
                         "value (so they would not name what was used), and a model's into the adapter's "
                         "adapter_config.json. Rename the file or folder (or name it through a link whose path holds "
                         "no credential)")
    return text


class _NamesAPath:
    """Schema mark of a setting whose value is a path (where ~/ means the home folder), as against a name (a
    split, a run name) or a module: what the advice on a YAML null may say of ~."""


NAMES_A_PATH = _NamesAPath()

# A path setting (a file, folder or model to read, a folder to write): PathText, spelled as the path itself.
PathValue = Annotated[str, AfterValidator(_no_control_characters), AfterValidator(_taken_as_written),
                      AfterValidator(_no_credential_in_path), NAMES_A_PATH]


def names_a_path(field: Any) -> bool:
    """True for a pydantic field declared as ``PathValue`` (or an optional one)."""
    if field is None:
        return False
    if NAMES_A_PATH in field.metadata:
        return True
    members = typing.get_args(field.annotation) if typing.get_origin(field.annotation) in (typing.Union,
                                                                                           types.UnionType) else ()
    return any(typing.get_origin(m) is typing.Annotated and NAMES_A_PATH in m.__metadata__ for m in members)


class Section(BaseModel):
    # allow_inf_nan=False: nan, inf, .nan and .inf are refused wherever a float is accepted
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/yes/on are booleans, which pydantic would take as 1 for a number (max_steps: true)."""
        if isinstance(value, bool) and info.field_name and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, got a boolean (true/false, yes/no, on/off)")
        return value


def _numeric_only(annotation: Any) -> bool:
    """int, float or an optional one, or one of them or a word ("auto"), without bool among the choices."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    choices = {typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in members
               if not (typing.get_origin(m) is typing.Literal and all(isinstance(v, str) for v in typing.get_args(m)))}
    choices.discard(type(None))
    return bool(choices) and choices <= {int, float}


# The characters of a hub repo id ([owner/]name: letters, digits, '-', '_', '.') and of a relative folder path.
_HUB_ID_CHARACTERS = re.compile(r"^[\w\-./]+$")


def hub_id_problem(name: str) -> str | None:
    """Why ``name`` can be neither a local file or folder nor a hub id (a character neither may hold: '@', ':',
    a space...), else None. Names that look like paths (./, /, ~, a backslash), .gguf files, pypi: models and
    existing local paths are checked when the model loads (and at --dry-run)."""
    if name.startswith(("pypi:", ".", "/", "~")) or "\\" in name or name.endswith(".gguf") \
            or _HUB_ID_CHARACTERS.match(name) or Path(name).expanduser().exists():
        return None
    if "@" in name:
        return (f"{printable(name, 200)!r} is not a hub id: a revision (@main, @<commit>) cannot be pinned in "
                "model.name; give the repo id alone (owner/name), or download that revision to a folder and name "
                "the folder")
    return (f"{printable(name, 200)!r} is neither an existing local file or folder nor a hub id (owner/name of "
            "letters, digits, '-', '_' and '.')")


TRACKERS = ("tensorboard", "wandb", "mlflow")
_TRACKING_OFF = {"none", "off", "false", "no", "null", ""}  # how transformers and other kits say it


def tracker_list_problem(value: Any) -> str | None:
    """What is wrong with training.report_to written as other kits write it: ``none`` (transformers' way to switch
    tracking off), ``all``, one tracker as text, or such a word inside the list; None for anything else (the schema
    checks that)."""
    items = value if isinstance(value, list) else [value]
    words = {str(item).strip().lower() for item in items if item is None or isinstance(item, (str, bool))}
    if words & _TRACKING_OFF or any(item is None or isinstance(item, bool) for item in items):
        return f"is a list of trackers ({', '.join(TRACKERS)}); [] switches tracking off"
    if "all" in words:
        return f"is a list of trackers: name those to use, e.g. [{', '.join(TRACKERS)}] ([] switches tracking off)"
    if isinstance(value, str) and value.strip() in TRACKERS:
        return f"is a list of trackers: write [{value.strip()}] ([] switches tracking off)"
    return None

