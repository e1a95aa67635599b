"""Checks of the files a model loads from, before anything loads: a local checkpoint folder (config.json,
whole safetensors weights, a tokenizer) and a GGUF file."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import json_text
from ..errors import ModelError
from ..regular_files import first_special_file, link_note
from ..secrets import printable
from ..torch_pickles import MODEL_ADVICE, code_in_pickle, holds_code_error


def _adapter_given_as_model(folder: Path) -> str:
    """Where model.name is a LoRA adapter folder (or a kit run folder holding one): what it is, and its base."""
    adapter = folder if (folder / "adapter_config.json").is_file() else folder / "adapter"
    try:
        config = json_text.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    what = "a LoRA adapter folder" if adapter == folder else "a run folder of this kit (its adapter in adapter/)"
    named = f" Its adapter_config.json names its base model: --set model.name={printable(base, 200)}." \
        if isinstance(base, str) and base.strip() else ""
    return (f" It is {what}, not a base model: give it as --adapter {printable(str(folder))} (to test, evaluate or "
            f"export it) or as training.init_adapter (to train on from it), with its base model as model.name.{named}")


def _gguf_files_in(folder: Path) -> str:
    """Where model.name is a folder of GGUF files (a GGUF repository downloaded from the Hub): which to give."""
    try:
        found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    except OSError:
        return ""
    if not found:
        return ""
    listed = printable(", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else ""), 300)
    return (f" It holds GGUF files ({listed}): the kit takes a GGUF model as the file itself, "
            f"--set model.name={printable(str(folder / found[0]))}.")


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def check_checkpoint_folder(folder: Path) -> None:
    """A local checkpoint folder: a config.json that names a model type, and weights that are whole (each
    safetensors file as long as its header says), checked before anything loads."""
    shown = printable(str(folder))
    if not folder.is_dir():
        if _starts_with(folder, b"GGUF"):
            raise ModelError(f"model.name: {shown} is a GGUF file, but its name does not end in .gguf (lower case), "
                             "which is how the kit tells a GGUF model from a checkpoint folder: rename it (or link it) "
                             "to a name ending in .gguf and give that.")
        raise ModelError(f"model.name: {shown} is a file, not a checkpoint folder (nor a .gguf file).")
    _refuse_special_files(folder)
    try:
        config = json_text.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model.name: {shown} exists but holds no config.json: not a transformers checkpoint."
                         f"{_adapter_given_as_model(folder) or _gguf_files_in(folder)}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"model.name: {shown}/config.json is not readable JSON ({printable(str(err))}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"model.name: {shown}/config.json names no model_type: not a transformers checkpoint.")
    _check_config_fields(folder, config)
    _check_remote_code_files(folder, config)
    check_generation_config(folder)
    check_tokenizer_config(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(any(folder.glob(p)) for p in ("*.bin", "*.pt", "*.pth")):
        raise ModelError(f"model.name: {shown} holds a config.json but no weights (model.safetensors or "
                         "model-0000X-of-0000Y.safetensors): copy the whole checkpoint folder.")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((folder / f).is_file() for f in tokenizer_files):
        raise ModelError(f"model.name: {shown} holds no tokenizer (tokenizer.json or tokenizer.model): copy the whole "
                         "checkpoint folder, tokenizer files included.")
    for index in folder.glob("*.index.json"):
        missing = sorted(set(_index_files(index)) - {p.name for p in folder.iterdir()})
        if missing:
            raise ModelError(f"model.name: {shown} lacks {printable(', '.join(missing[:3]))}, which "
                             f"{printable(index.name)} lists: copy the whole checkpoint folder.")
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            raise ModelError(f"model.name: {printable(str(file))} {problem}. Download or copy it again.")
    if not weights:
        _refuse_code_in_weights(folder)
    if weights and "auto_map" not in config:  # remote code builds its own modules: not checked here
        _check_config_matches_weights(folder, weights)


# The pickled weights transformers reads from a folder without safetensors files (one file, or the shards an index
# names), and the bare torch files of a checkpoint saved with torch.save
PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth")


def _refuse_code_in_weights(folder: Path) -> None:
    """Pickled weights that would call a function while read (a shell command) are refused in the kit's words,
    before transformers' loader refuses them with advice to switch itself off (torch_pickles.py)."""
    for file in sorted({f for pattern in PICKLED_WEIGHTS for f in folder.glob(pattern) if f.is_file()}):
        names = code_in_pickle(file)
        if names:
            raise holds_code_error("model.name", file, names, MODEL_ADVICE)


def _check_remote_code_files(folder: Path, config: dict[str, Any]) -> None:
    """config.json's auto_map names the folder's own Python files (module.Class; repo--module.Class lives in another
    repository): a checkpoint copied without them cannot be built, and loading it asked the Hub for them."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return
    references = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    modules = sorted({r.rsplit(".", 1)[0] + ".py" for r in references if "--" not in r and "." in r})
    missing = [m for m in modules if not (folder / Path(*m[:-3].split(".")).with_suffix(".py")).is_file()]
    if missing:
        raise ModelError(f"model.name: {printable(str(folder))}/config.json's auto_map names "
                         f"{printable(', '.join(missing[:3]))}, which the folder lacks: the model's own code. Copy the "
                         "checkpoint's .py files into the folder with it (they run with model.trust_remote_code: true).")


def _refuse_special_files(folder: Path) -> None:
    special = first_special_file(folder)
    if special is not None:
        raise ModelError(f"model.name: {printable(str(special))} is not a regular file{link_note(special)}: the model "
                         "and its tokenizer are read from the files of a checkpoint folder. Replace it with the "
                         "checkpoint's own file (copy the whole checkpoint folder again).")


# config.json fields that must be positive whole numbers where present (a model of 0 or -1 layers is no model)
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "max_position_embeddings", "head_dim")


DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64", "auto")


def _check_config_fields(folder: Path, config: dict[str, Any]) -> None:
    """The fields of config.json the kit and transformers build the model from: sizes and the weights' dtype."""
    where = f"model.name: {printable(str(folder / 'config.json'))}"
    for section in [config] + [v for k, v in config.items() if k.endswith("_config") and isinstance(v, dict)]:
        for name in SIZE_FIELDS:
            value = section.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ModelError(f"{where}: field '{name}' is {printable(json.dumps(value), 60)}; it must be a whole "
                                 "number above 0. Restore the checkpoint's own config.json.")
        for name in ("torch_dtype", "dtype"):
            value = section.get(name)
            if value is not None and str(value).removeprefix("torch.") not in DTYPE_NAMES:
                raise ModelError(f"{where}: field '{name}' is {printable(json.dumps(value), 60)}; expected one of "
                                 f"{', '.join(DTYPE_NAMES)}. Restore the checkpoint's own config.json.")


# generation_config.json fields generate() takes from the model where the kit sets none (top_k, min_p...) or the
# loader refuses (max_new_tokens 0): each with the rule a valid value meets
GENERATION_RULES: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("a whole number above 0", lambda v: _whole(v) and v > 0),
    "max_length": ("a whole number above 0", lambda v: _whole(v) and v > 0),
    "min_new_tokens": ("a whole number of 0 or more", lambda v: _whole(v) and v >= 0),
    "num_beams": ("a whole number above 0", lambda v: _whole(v) and v > 0),
    "top_k": ("a whole number of 0 or more", lambda v: _whole(v) and v >= 0),
    "temperature": ("a number above 0", lambda v: _number(v) and v > 0),
    "top_p": ("a number above 0 and at most 1", lambda v: _number(v) and 0 < v <= 1),
    "min_p": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "typical_p": ("a number above 0 and at most 1", lambda v: _number(v) and 0 < v <= 1),
    "repetition_penalty": ("a number above 0", lambda v: _number(v) and v > 0),
}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_generation_config(folder: Path) -> None:
    """A checkpoint's generation_config.json (its generation defaults, read when the model loads): readable JSON
    whose values generate() accepts, then transformers' own validation of it."""
    file = folder / "generation_config.json"
    if not file.is_file():
        return
    where = f"model.name: {printable(str(file))}"
    fix = "Fix or remove that key, or restore the checkpoint's own file."
    _check_settings(_settings_of(file, where, "generation"), GENERATION_RULES, where)
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:  # transformers' validation of the values together
        raise ModelError(f"{where}: transformers refuses it ({printable(str(err).splitlines()[0], 200)}). {fix}") from None


def _a_length(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# the typed fields of tokenizer_config.json that transformers uses without a check (a hand-edited "abc" ends in a
# TypeError deep in tokenization), and what each must be
TOKENIZER_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model_max_length": ("a positive number of tokens", _a_length),
    "padding_side": ("'left' or 'right'", lambda value: value in ("left", "right")),
    "truncation_side": ("'left' or 'right'", lambda value: value in ("left", "right")),
    "chat_template": ("a template (text), or a list of named ones",
                      lambda value: isinstance(value, (str, list))),
}


def check_tokenizer_config(folder: Path, given_as: str = "model.name") -> None:
    """A checkpoint's (or an adapter's) tokenizer_config.json: readable JSON whose typed fields hold what
    transformers expects. ``given_as``: how the folder was given, for the message."""
    file = folder / "tokenizer_config.json"
    if not file.is_file():
        return
    where = f"{given_as}: {printable(str(file))}"
    _check_settings(_settings_of(file, where, "tokenizer"), TOKENIZER_RULES, where)


def _settings_of(file: Path, where: str, kind: str) -> dict[str, Any]:
    """A settings file of a checkpoint (generation_config.json, tokenizer_config.json) read as a JSON object."""
    try:
        values = json_text.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{where} is not readable JSON ({printable(str(err), 120)}). Restore the checkpoint's own "
                         "file, or remove it.") from None
    if not isinstance(values, dict):
        raise ModelError(f"{where} is not a JSON object of {kind} settings. Restore the checkpoint's own file, "
                         "or remove it.")
    return values


def _check_settings(values: dict[str, Any], rules: dict[str, tuple[str, Callable[[Any], bool]]], where: str) -> None:
    for key, (rule, valid) in rules.items():
        if values.get(key) is not None and not valid(values[key]):
            raise ModelError(f"{where}: '{key}' is {printable(json.dumps(values[key]), 60)}; it must be {rule}. Fix "
                             "or remove that key, or restore the checkpoint's own file.")


@contextlib.contextmanager
def _rope_warnings() -> Iterator[list[str]]:
    """transformers' check of a config's RoPE scaling only warns (a factor below 1, a required key missing) and
    builds the model anyway: its warnings of an invalid value, collected."""
    import logging

    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "must be" in message or "Missing required keys" in message:
                found.append(message)

    rope_logger = logging.getLogger("transformers.modeling_rope_utils")
    handler = Collect(logging.WARNING)
    level, propagate = rope_logger.level, rope_logger.propagate
    rope_logger.addHandler(handler)
    rope_logger.setLevel(logging.WARNING)  # whatever transformers' verbosity; said by the kit, not printed twice
    rope_logger.propagate = False
    try:
        yield found
    finally:
        rope_logger.removeHandler(handler)
        rope_logger.setLevel(level)
        rope_logger.propagate = propagate


def meta_model(folder: Path) -> tuple[Any, Any]:
    """(config, model) of a checkpoint folder's config.json, the model built on the meta device (no memory, no
    weights read); a ModelError when transformers cannot build it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with _rope_warnings() as refused:
            config = AutoConfig.from_pretrained(str(folder))
        if refused:
            raise ModelError(f"model.name: {printable(str(folder / 'config.json'))}: its RoPE scaling is invalid "
                             f"(transformers: {printable(refused[0], 160)}), and the model would run with it. Restore "
                             "the checkpoint's own config.json (rope_parameters / rope_scaling).")
        with torch.device("meta"):
            return config, AutoModelForCausalLM.from_config(config)
    except ModelError:
        raise
    except Exception as err:  # transformers raises ValueError, KeyError, TypeError... for a config it cannot build
        raise ModelError(f"model.name: {printable(str(folder / 'config.json'))} does not describe a model "
                         f"transformers can build ({type(err).__name__}: {printable(str(err), 160)}). Restore the "
                         "checkpoint's own config.json.") from None


# the architectures of models that generate text (a causal language model's head); others are classifiers, encoders...
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _refuse_other_heads(folder: Path) -> None:
    """A checkpoint saved with another head (a classifier: LlamaForSequenceClassification, its score.weight in place
    of lm_head.weight) holds no language-model head to generate with or fine-tune: said as such, before its weights
    are found not to match."""
    try:
        names = json_text.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return
    if not any(name.endswith(_GENERATIVE) for name in names):
        raise ModelError(f"model.name: {printable(str(folder))} is a {printable(names[0], 80)} checkpoint (its "
                         "config.json's architectures): a model with another head (a classifier, an encoder), not a "
                         "language model that generates text. Choose a causal language model (architectures ending in "
                         "ForCausalLM), such as the base model it was fine-tuned from.")


def _check_config_matches_weights(folder: Path, weights: list[Path]) -> None:
    """config.json describes the model the weights were saved from: the model it builds (on the meta device: no
    memory) has as many layers as the weights hold, and its parameters are among the safetensors files' tensors,
    or config.json is wrong (extra layers would start from random weights; weights of layers it lacks be ignored)."""
    where = f"model.name: {printable(str(folder / 'config.json'))}"
    _refuse_other_heads(folder)
    _refuse_layers_beyond_weights(where, folder, weights)
    config, model = meta_model(folder)
    prefix = f"{model.base_model_prefix}."
    expected = {k.removeprefix(prefix) for k in model.state_dict()}
    if getattr(config, "tie_word_embeddings", False):
        expected = {k for k in expected if not k.endswith("lm_head.weight")}
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    shapes = {k.removeprefix(prefix): shape for file in weights for k, shape in _tensor_shapes(file).items()
              if not any(p.search(k) for p in ignored)}
    saved = set(shapes)
    _check_layer_counts(where, config, expected, saved)
    missing = sorted(expected - saved)
    if missing:
        model_type = printable(str(getattr(config, "model_type", "?")))
        raise ModelError(f"{where} (model_type '{model_type}', {getattr(config, 'num_hidden_layers', '?')} layers) "
                         f"does not match the weights: {len(missing)} of the {len(expected)} tensors it describes are "
                         f"not in the safetensors files (such as {printable(missing[0], 80)}). Restore the "
                         "checkpoint's own config.json.")
    described = {k.removeprefix(prefix): list(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(where, config, described, shapes)


def _check_shapes(where: str, config: Any, described: dict[str, list[int]], saved: dict[str, list]) -> None:
    """Each tensor config.json describes has the shape the weights hold, or loading stops at transformers' size
    mismatch (whose advice, ignore_mismatched_sizes, would start those tensors from random weights): the size
    field of config.json behind the first mismatch is named."""
    for name in sorted(described):
        held = [int(n) for n in saved.get(name) or []]
        shape = described[name]
        if not held or held == shape or len(held) != len(shape):
            continue
        axis = next(i for i, (a, b) in enumerate(zip(shape, held)) if a != b)
        if _agreeing(described, saved, shape[axis]):
            raise ModelError(f"{where}: the safetensors files hold {printable(name, 80)} as {held}, where config.json "
                             f"gives {shape} and the checkpoint's other tensors of that size agree with config.json: the "
                             "weights file is damaged. Copy or download the checkpoint's weights again (or, if config.json "
                             "is what was edited, restore the checkpoint's own).")
        fields = [key for key, value in sorted(config.to_dict().items())
                  if key in SIZE_FIELDS and isinstance(value, int) and value == shape[axis]]
        field = (f"config.json's {fields[0]} ({shape[axis]}) does not match the weights ({held[axis]})" if fields else
                 "config.json does not describe the weights")
        raise ModelError(f"{where}: {field}: it describes {printable(name, 80)} as {shape}, but the safetensors files "
                         f"hold it as {held}. Restore the checkpoint's own config.json"
                         f"{f' ({fields[0]} {held[axis]})' if fields else ''}.")


def _agreeing(described: dict[str, list[int]], saved: dict[str, list], size: int) -> int:
    """How many tensors that config.json gives a dimension of ``size`` the weights hold as it describes them: config.json
    is right about that size, and a tensor that differs is damaged."""
    return sum(1 for name, shape in described.items() if size in shape and [int(n) for n in saved.get(name) or []] == shape)


NUMBERED = re.compile(r"^(.*?)\.(\d+)\.")  # a tensor of a numbered block: layers.3.mlp... -> (layers, 3)


def _blocks(names: set[str]) -> dict[str, set[int]]:
    """The numbered blocks (the decoder layers) the tensor names hold: {'layers': {0, 1, ...}}."""
    found: dict[str, set[int]] = {}
    for name in names:
        match = NUMBERED.match(name)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
    return found


MAX_LAYERS = 1024  # decoder layers of any model (the largest have about 130): more is a damaged config.json


def _refuse_layers_beyond_weights(where: str, folder: Path, weights: list[Path]) -> None:
    """config.json's num_hidden_layers beyond the layers its weights hold, said before the model is built from it
    (a damaged or hostile count, a billion layers, would take hours to build, even on the meta device)."""
    try:
        described = json_text.loads((folder / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(described, int) or isinstance(described, bool) or described <= MAX_LAYERS:
        return  # a count a model can have: checked against the weights by _check_layer_counts
    held = _blocks({name for file in weights for name in _tensor_shapes(file)})
    stored = max(map(len, held.values()), default=0)
    if described > stored:
        weights_hold = f"the safetensors files hold {_layers(stored)}" if stored else "no model has as many"
        raise ModelError(f"{where} describes {_layers(described)} (num_hidden_layers), but {weights_hold}: the "
                         f"config is damaged. Restore the checkpoint's own config.json"
                         f"{f' (num_hidden_layers {stored})' if stored else ''}.")


def _layers(count: int) -> str:
    return f"{count} layer{'s' if count != 1 else ''}"


def _check_layer_counts(where: str, config: Any, expected: set[str], saved: set[str]) -> None:
    """The layers config.json describes (num_hidden_layers) are the layers the weights hold, for each list of
    numbered blocks its model has: more would start from random weights, fewer leave saved layers unread."""
    held = _blocks(saved)
    for container, indices in sorted(_blocks(expected).items()):
        described, stored = len(indices), len(held.get(container, set()))
        if stored and described != stored:
            extra = abs(described - stored)
            outcome = (f"the other {_layers(extra)} would start from random weights" if described > stored else
                       f"the weights of the other {_layers(extra)} would be left out without a word")
            raise ModelError(f"{where} describes {_layers(described)} ({container}.0 to {container}.{described - 1}; "
                             f"num_hidden_layers {getattr(config, 'num_hidden_layers', '?')}), but the safetensors "
                             f"files hold {_layers(stored)} ({container}.0 to {container}.{max(held[container])}): {outcome}. "
                             f"Restore the checkpoint's own config.json (num_hidden_layers {stored}).")


def _tensor_shapes(file: Path) -> dict[str, list]:
    """The tensors of a safetensors file and their shapes, from its header ([] for a quantised tensor, whose stored
    shape is its packing's)."""
    with file.open("rb") as handle:  # the header alone, checked whole by safetensors_problem
        length = int.from_bytes(handle.read(8), "little")
        header = json_text.loads(handle.read(length))
        return {k: list(v.get("shape") or []) if isinstance(v, dict) and v.get("dtype") in FLOAT_DTYPES else []
                for k, v in header.items() if k != "__metadata__"}


# tensors stored in these have the shapes of the model's parameters (packed quantised ones, U8/I8, have not)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _index_files(index: Path) -> list[str]:
    try:
        weight_map = json_text.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [str(v) for v in weight_map.values()] if isinstance(weight_map, dict) else []
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        raise ModelError(f"model.name: {printable(str(index))} is not readable JSON.") from None


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be whole (None: its header is valid and its tensors fit in the file),
    read from the header alone: a truncated download is caught before loading."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length <= 0 or length > min(size - 8, 100 << 20):
                return "is not a safetensors file (or is truncated)"
            header = json_text.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        return "has an unreadable safetensors header (truncated or not a safetensors file)"
    if not isinstance(header, dict):
        return "has an unreadable safetensors header"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if any(not isinstance(e, int) for e in ends):
        return "has an unreadable safetensors header"
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"is truncated: {size:,} bytes of the {needed:,} its header describes"
    return None


def _refuse_gguf_without_a_model(reader: Any, shown: str) -> None:
    """A GGUF file the kit converts into a checkpoint holds weights and the tokenizer transformers rebuilds from
    its metadata (tokenizer.ggml.tokens): a header alone fails the conversion, read here from the header."""
    missing = [what for what, absent in (("no tensors (no weights)", not len(reader.tensors)),
                                         ("no tokenizer (tokenizer.ggml.tokens)",
                                          "tokenizer.ggml.tokens" not in reader.fields)) if absent]
    if missing:
        field = reader.fields.get("general.architecture")
        architecture = f" of architecture {printable(str(field.contents()), 40)}" if field is not None else ""
        raise ModelError(f"model.name: {shown} is a GGUF file{architecture} with {' and '.join(missing)}: not a model "
                         "the kit can convert and train. Point model.name at a whole .gguf model file (as llama.cpp "
                         "writes it, weights and tokenizer), a checkpoint folder or a hub id.")


def check_gguf_file(gguf: Path) -> None:
    """A GGUF file that llama.cpp's reader can read, header and tensors, before it is converted."""
    shown = printable(str(gguf))
    with gguf.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelError(f"model.name: {shown} is not a GGUF file (it does not start with 'GGUF'). Point model.name "
                         "at a .gguf model file, a checkpoint folder or a hub id.")
    from .gguf_header import metadata_problem, newer_version

    if version := newer_version(gguf):
        raise ModelError(f"model.name: {shown} is a GGUF file of version {version}, newer than the versions the "
                         "installed gguf reader handles (1 to 3): the file may be whole. Install a newer gguf "
                         "(pip install -U gguf), or give the model as a checkpoint folder or hub id.")
    if problem := metadata_problem(gguf):  # before the reader, which would loop over a damaged count for hours
        raise ModelError(f"model.name: {shown} is truncated or damaged ({problem}). Download it again.")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf))
        field = reader.fields.get("general.type")
        kind = None if field is None else str(field.contents())
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors... on damaged files
        raise ModelError(f"model.name: {shown} is truncated or damaged ({type(err).__name__}: "
                         f"{printable(str(err), 160)}). Download it again.") from None
    if kind != "adapter":
        _refuse_gguf_without_a_model(reader, shown)
    if kind == "adapter":
        raise ModelError(f"model.name: {shown} is a LoRA adapter in llama.cpp's GGUF form (general.type adapter, as "
                         "export.formats gguf_lora writes it), not a model: llama.cpp applies it to its base with "
                         "--lora. For the kit, set model.name to the base model, and give the adapter/ folder of the "
                         "run it was exported from as --adapter (or training.init_adapter).")
