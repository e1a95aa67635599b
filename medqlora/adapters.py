"""The adapter boundary: a folder named by --adapter is checked here before any weight is loaded.

``find`` returns a ``ValidAdapter`` (the folder, its adapter_config.json, and the kit run folder it
belongs to, or None for a foreign adapter) or stops with one short message:

- weights must be safetensors: a folder holding only a pickle (``adapter_model.bin``, ``.pt``,
  ``.pth``) is refused with the three lines that convert it, because unpickling runs code;
- adapter_config.json must be a JSON LoRA config (peft_type LORA, a positive integer r,
  target_modules, base_model_name_or_path);
- the safetensors header (read without loading a tensor) must hold LoRA weights of rank r;
- every other file must be whole (whole_files.py: a tokenizer.json cut short by an interrupted copy).

adapter_base.py then compares the adapter with the base model; ``check_loaded`` compares the loaded adapter with
its config.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import json_text
from .adapter_origin import kit_run_folder
from .errors import ModelError
from .regular_files import first_special_file, link_note
from .run_files import Files
from .secrets import printable
from .shown_paths import quoted_path
from .whole_files import first_damage, non_finite_weights

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_PATTERNS = ("adapter_model.bin", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
MAX_CONFIG_BYTES = 1 << 20
# lora_A/B of a linear layer (module.lora_A.weight, module.lora_A.<adapter name>.weight) and of an embedding layer
# (module.lora_embedding_A, a parameter of its own): A is [r, in] and B is [out, r] for both.
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:(?P<which>[AB])(?:\.[^.]+)?\.weight"
                       r"|embedding_(?P<embedding>[AB])(?:\.[^.]+)?)$")


@dataclass
class ValidAdapter:
    folder: Path
    config: dict[str, Any]
    run: Path | None  # the kit run folder holding it; None: a foreign adapter
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape, from the safetensors header

    @property
    def name(self) -> str:
        """A readable name: the run folder's for a kit run, else the adapter folder's (or its parent's)."""
        if self.run is not None:
            return self.run.name
        return self.folder.parent.name if self.folder.name == Files.ADAPTER else self.folder.name


def locate(arg: str, flag: str = "--adapter") -> Path:
    """The adapter folder of --adapter ARG (or of the setting ``flag``): ARG itself, or ARG/adapter for a run
    folder."""
    if not arg.strip():
        raise ModelError(f"{flag} is empty (an unset shell variable?): give an adapter or run folder, latest, or "
                         "none for the base model alone.")
    path = Path(arg).expanduser()
    if not path.exists():
        raise ModelError(f"{flag} {quoted_path(arg)}: no such file or folder. Give an adapter or run folder, latest, "
                         "or none for the base model alone.")
    if path.is_dir() and _present(path / Files.ADAPTER / CONFIG_NAME):
        path = path / Files.ADAPTER
    from .adapter_advice import gguf_given, named_flag, no_adapter_there

    named = named_flag(flag)
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise ModelError(gguf_given(arg, path, flag))
    if path.is_file():
        raise ModelError(f"{flag} {printable(arg)} is a file ({printable(path.name, 80)}); {flag} takes the folder "
                         f"that holds {CONFIG_NAME} and the weights: {named}{printable(path.parent)} (or the run "
                         "folder above it).")
    if not _present(path / CONFIG_NAME):
        raise ModelError(no_adapter_there(arg, path, flag))
    refuse_special_files(path)
    return path


def _present(path: Path) -> bool:
    """Something is at ``path``, even a dangling link or a pipe (refused as such, not as missing)."""
    return path.exists() or path.is_symlink()


def refuse_special_files(folder: Path) -> None:
    """An adapter folder's files are read when it loads (config, weights, tokenizer): all regular files."""
    special = first_special_file(folder)
    if special is not None:
        raise ModelError(f"The adapter in {printable(folder)}: {printable(special.name, 80)} is not a regular "
                         f"file{link_note(special)}; an adapter folder holds the files the adapter loads from. "
                         "Replace it with the adapter's own file (copy the whole adapter folder again).")


def check_finite(folder: Path) -> None:
    """Refuse an adapter whose LoRA weights hold NaN or infinity, read from its safetensors file (no model needed:
    an adapter is small), as loading it would refuse it."""
    bad = non_finite_weights(folder / WEIGHTS_NAME)
    if bad:
        raise non_finite(folder, bad)


LARGEST_CHANGE = 65504.0  # float16's largest number: a larger change of a weight overflows in 16-bit compute


def check_change(folder: Path, config: dict[str, Any]) -> None:
    """The largest change the adapter makes to one base weight, bounded from its safetensors and adapter_config.json
    (backends.lora.largest_weight_change's bound, without a model): --dry-run refuses what loading it refuses."""
    from safetensors import safe_open

    pairs: dict[str, dict[str, Any]] = {}
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (a safetensors file, not a dict)
            match = _LORA_KEY.match(key)
            if match and match["which"]:
                pairs.setdefault(match["module"], {})[match["which"]] = weights.get_tensor(key).double()
    largest, where = 0.0, ""
    for module, pair in pairs.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            continue
        rank, _ = _configured_rank(config, module)
        alpha = _configured_value(config, "alpha_pattern", module, config.get("lora_alpha", 8))
        scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        bound = abs(scaling) * float((b.abs().amax(dim=0) * a.abs().amax(dim=1)).sum())
        if bound > largest:
            largest, where = bound, module
    if largest > LARGEST_CHANGE:
        raise too_large_change(folder, largest, where)


def too_large_change(folder: Path, change: float, where: str) -> ModelError:
    return ModelError(
        f"The adapter in {printable(str(folder))} changes the base model's weights by up to {change:.3g} "
        f"(in {printable(where, 120)}: LoRA's B times A times its scaling), beyond {LARGEST_CHANGE:g}, the "
        "largest 16-bit number (model weights are of the order of 1): the model's outputs would overflow to "
        "infinity and its answers and scores would be empty or meaningless. Train it again (a lower "
        "training.learning_rate), or use an earlier adapter.")


def non_finite(folder: Path, bad: list[str]) -> ModelError:
    return ModelError(f"The adapter in {printable(str(folder))} holds NaN or infinite weights ({len(bad)} tensors, "
                      f"e.g. {printable(bad[0], 120)}): its answers and scores would be meaningless. Train it again "
                      "(a lower training.learning_rate), or use an earlier adapter.")


def find(folder: Path) -> ValidAdapter:
    """Check an adapter folder (config, safetensors weights, their shapes) without loading a weight."""
    where = printable(folder)
    weights = folder / WEIGHTS_NAME
    refuse_special_files(folder)
    if not weights.is_file():
        pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
        if pickles:
            first = pickles[0]
            raise ModelError(
                f"The adapter in {where} has only pickle weights ({printable(', '.join(pickles))}); the kit loads "
                "safetensors only, since loading a pickle can run code. If you trust the file, convert it once "
                "with:\n"
                "  import torch; from safetensors.torch import save_file\n"
                f"  state = torch.load('{printable(folder / first)}', weights_only=True)\n"
                f"  save_file({{k: v.contiguous() for k, v in state.items()}}, '{printable(weights)}')"
            )
        raise ModelError(f"The adapter in {where} has no {WEIGHTS_NAME}: not a complete LoRA adapter folder.")
    config = read_config(folder)
    shapes = header_shapes(weights)
    check_ranks(folder, config, shapes)
    check_modules_to_save(folder, config, shapes)
    check_targets(folder, config, shapes)
    refuse_damaged_files(folder)
    return ValidAdapter(folder, config, kit_run_folder(folder), shapes)


def refuse_damaged_files(folder: Path) -> None:
    """Every file the adapter folder holds whole (its tokenizer, a checkpoint's training state: a copy cut short by a
    full disk), read as --resume reads a checkpoint's, without reading a weight: the loaders would stop on a cut
    file with a bare JSONDecodeError. Its config and weights' header were checked, with their own messages, above."""
    damage = first_damage(folder, values=False)
    if damage is not None:
        from .adapter_advice import damaged_adapter

        raise ModelError(damaged_adapter(folder, damage))


def _ends_inside(text: str, err: json.JSONDecodeError) -> bool:
    """Whether a JSON text that does not parse was cut short: the parser ran out of text, or a string it opened is
    never closed (not text that goes wrong in its middle)."""
    body = text.rstrip()
    return err.pos >= len(body) or (err.msg.startswith("Unterminated string") and '"' not in body[err.pos + 1:])


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    where = printable(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ModelError(f"Cannot read {where}: {err.strerror}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelError(f"{where} is larger than 1 MB: not a LoRA adapter config.")
    again = "Copy the adapter folder (or the run folder holding it) again, whole."
    if not raw.strip():
        raise ModelError(f"{where} is empty ({len(raw)} bytes): a copy that never wrote it, or one cut short. {again}")
    try:
        text = raw.decode("utf-8")
        config = json_text.loads(text)
    except UnicodeDecodeError:
        raise ModelError(f"{where} is not UTF-8 text: not a LoRA adapter config.") from None
    except json.JSONDecodeError as err:
        if _ends_inside(text, err):
            raise ModelError(f"{where} ends in the middle of its JSON ({len(raw)} bytes): cut short by a copy or a "
                             f"full disk? {again}") from None
        raise ModelError(f"{where}:{err.lineno}: not valid JSON ({err.msg}): not a LoRA adapter config.") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where} must be a JSON object (a PEFT LoRA config), not {type(config).__name__}.")
    problems = []
    if str(config.get("peft_type", "")).upper() != "LORA":
        problems.append(f"peft_type is {printable(repr(config.get('peft_type')), 40)}, not LORA")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        problems.append(f"r is {printable(repr(r), 40)}, not a positive integer")
    problems += _scale_problems(config)
    targets = config.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        problems.append("target_modules is not a list of module names (or a pattern)")
    if not isinstance(config.get("base_model_name_or_path"), str):
        problems.append("base_model_name_or_path is not a string")
    if layer_numbers(config) is None:
        problems.append("layers_to_transform is not a layer number or a list of layer numbers")
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout is {printable(repr(dropout), 40)}, not a probability from 0 to under 1")
    if problems:
        raise ModelError(f"{where} is not a usable LoRA config: {'; '.join(problems)}.")
    return config


def layer_numbers(config: dict[str, Any]) -> list[int] | None:
    """The layers layers_to_transform names ([] when unset); None when it is not a number or a list of numbers."""
    layers = config.get("layers_to_transform")
    layers = [] if layers is None else [layers] if isinstance(layers, int) else layers
    whole = isinstance(layers, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in layers)
    return layers if whole else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _scale_problems(config: dict[str, Any]) -> list[str]:
    """lora_alpha scales the adapter's effect (alpha / r): zero or a negative value switches it off or inverts
    it, and so does one in alpha_pattern or rank_pattern."""
    problems = []
    alpha = config.get("lora_alpha", 8)  # PEFT's default when the key is absent
    if not _positive(alpha):
        problems.append(f"lora_alpha is {printable(repr(alpha), 40)}, not a positive number")
    for key in ("alpha_pattern", "rank_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            problems.append(f"{key} is not a mapping of module names to numbers")
            continue
        bad = [name for name, value in pattern.items() if not _positive(value)]
        if bad:
            problems.append(f"{key} gives {printable(', '.join(map(str, bad[:3])), 120)} a value that is not a "
                            "positive number")
    return problems


def check_modules_to_save(folder: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Each module the config lists in modules_to_save must have its full weights in the file (PEFT saves them
    beside the LoRA matrices); without them the loader fails on a missing tensor."""
    modules = config.get("modules_to_save") or []
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ModelError(f"{printable(folder / CONFIG_NAME)}: modules_to_save is not a list of module names.")
    saved = [f".{key}" for key in shapes if not _LORA_KEY.match(key)]
    missing = [m for m in modules if not any(f".{m}." in key for key in saved)]
    if missing:
        raise ModelError(
            f"The adapter in {printable(folder)} is incomplete: its {CONFIG_NAME} lists modules_to_save "
            f"{printable(missing, 120)}, but {WEIGHTS_NAME} holds no weights for "
            f"{'it' if len(missing) == 1 else 'them'} (e.g. base_model.model.{printable(missing[0], 60)}.weight). "
            "Copy the adapter again from where it was trained, or remove those names from modules_to_save."
        )


def check_targets(folder: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every module with LoRA weights in the file must be one that target_modules names: PEFT puts LoRA layers on
    the named modules only and drops the other weights without a word (a hand-edited pattern that covers fewer
    modules than were trained)."""
    targets = config["target_modules"]
    shown = f"'{printable(targets, 120)}'" if isinstance(targets, str) else printable(json.dumps(targets), 120)
    try:
        dropped = sorted(m for m in lora_modules(shapes) if not _targeted(config, m))
    except re.error as err:
        raise ModelError(f"{printable(folder / CONFIG_NAME)}: target_modules {shown} is not a valid regular "
                         f"expression ({err}).") from None
    if dropped:
        names = sorted({m.rsplit(".", 1)[-1] for m in dropped})
        trained = sorted({m.rsplit(".", 1)[-1] for m in lora_modules(shapes)})
        raise ModelError(
            f"The adapter in {printable(folder)} does not match its {CONFIG_NAME}: target_modules {shown} "
            f"leaves out {', '.join(names)} ({len(dropped)} modules, e.g. "
            f"{printable(dropped[0], 120)}), whose LoRA weights are in {WEIGHTS_NAME}; loading it would drop them "
            f"without a word. Set target_modules in {CONFIG_NAME} to the modules the weights hold: "
            f"{json.dumps(trained)}.")


def _targeted(config: dict[str, Any], module: str) -> bool:
    """Whether PEFT puts a LoRA layer on ``module`` (a path such as model.layers.0.self_attn.q_proj), by PEFT's
    rule (peft.tuners.tuners_utils.check_target_module_exists, mirrored: importing PEFT takes seconds): a string is
    a regular expression the whole path must match, a list names modules by their path or its last parts;
    exclude_modules is read the same way; "all-linear" is every linear layer but the output one. layers_to_transform
    is not applied, so no module is taken as dropped that PEFT would keep."""
    def named(spec: Any, key: str) -> bool:
        if spec == "all-linear":
            return True
        if isinstance(spec, str):
            return re.fullmatch(spec, key) is not None
        names = [name for name in spec if isinstance(name, str)] if isinstance(spec, list) else []
        return key in names or any(key.endswith(f".{name}") for name in names)

    excluded = config.get("exclude_modules")
    return not (excluded and named(excluded, module)) and named(config["target_modules"], module)


def header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor, from the safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for a bad header or a short file
        reason = printable(str(err).splitlines()[0] if str(err) else type(err).__name__, 160)
        raise ModelError(f"Cannot load the adapter in {printable(weights.parent)}: {WEIGHTS_NAME} is not a "
                         f"readable safetensors file ({reason}). Copy or train the adapter again.") from None


def lora_modules(shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, tuple[int, ...]]]:
    """module path (as in the base model) -> {'A': shape, 'B': shape}."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match:
            modules.setdefault(match["module"], {})[match["which"] or match["embedding"]] = shape
    return modules


def check_ranks(folder: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    modules = lora_modules(shapes)
    where = printable(folder)
    if not modules:
        raise ModelError(f"The adapter in {where}: {WEIGHTS_NAME} holds no LoRA weights (lora_A / lora_B).")
    for module, pair in modules.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            raise ModelError(f"The adapter in {where} is incomplete: {printable(module, 120)} lacks a 2-D lora_A or "
                             "lora_B matrix.")
        rank, pattern = _configured_rank(config, module)
        if a[0] != b[1] or a[0] != rank:
            said = f"rank_pattern {printable(repr(pattern), 60)} gives it {rank}" if pattern else f"r is {rank}"
            raise ModelError(
                f"The adapter in {where} does not match its {CONFIG_NAME}: {said} but "
                f"{printable(module, 120)} has rank {a[0]} (lora_A {list(a)}, lora_B {list(b)}). The config and "
                "the weights come from different adapters."
            )


def _configured_rank(config: dict[str, Any], module: str) -> tuple[int, str | None]:
    """The rank adapter_config.json gives ``module``: the value of the first rank_pattern key that matches its name
    as PEFT matches it (the key, a regular expression, ends the name), else r; and that key."""
    key = _pattern_key(config.get("rank_pattern"), module, int)
    return (config["rank_pattern"][key], key) if key is not None else (config["r"], None)


def _configured_value(config: dict[str, Any], patterns: str, module: str, default: Any) -> Any:
    key = _pattern_key(config.get(patterns), module, (int, float))
    return config[patterns][key] if key is not None else default


def _pattern_key(patterns: Any, module: str, kind: Any) -> str | None:
    """The first key of ``patterns`` (rank_pattern, alpha_pattern) that matches the module's name as PEFT matches
    it (the key, a regular expression, ends the name), its value of ``kind``."""
    name = module.removeprefix("base_model.model.")
    for key, value in (patterns or {}).items() if isinstance(patterns, dict) else []:
        try:
            if isinstance(key, str) and isinstance(value, kind) and not isinstance(value, bool) and \
                    re.match(rf"(.*\.)?({key})$", name):
                return key
        except re.error:
            continue
    return None


# ---------------------------------------------------------------- after loading


def check_loaded(model: Any, folder: Path, where: str | None = None) -> None:
    """Refuse an adapter whose safetensors lack tensors its adapter_config.json implies (a partial copy, layers
    deleted, use_dora without its magnitude vectors): PEFT would fill them in with fresh values, with a warning;
    or hold tensors it does not imply (_no_foreign_tensors). ``model`` is the PeftModel just loaded from
    ``folder``."""
    from peft import get_peft_model_state_dict

    try:
        with _named_base(model):
            expected = set(get_peft_model_state_dict(model))
    except Exception:  # a model PEFT cannot describe: nothing to compare with
        return
    check_tensors(header_shapes(folder / WEIGHTS_NAME), expected, where or folder)


def check_tensors(shapes: dict[str, tuple[int, ...]], expected: set[str], where: str | Path) -> None:
    """The tensors of an adapter's weights file (``shapes``, from its header) against those PEFT implies for its
    config on the base model (``expected``): none missing, none foreign."""
    _no_foreign_tensors(shapes, expected, where)
    missing = sorted(expected - set(shapes))
    if missing:
        what = ("magnitude vectors of DoRA (its config says use_dora: true)"
                if all("lora_magnitude_vector" in k for k in missing) else "tensors")
        raise ModelError(
            f"The adapter in {printable(where)} is incomplete: {WEIGHTS_NAME} lacks {len(missing)} "
            f"{what} that its {CONFIG_NAME} implies (e.g. {printable(missing[0], 160)}). Loading it would put "
            "freshly made values in their place. Copy the whole adapter again, or train it again.")


def _no_foreign_tensors(shapes: dict[str, tuple[int, ...]], expected: set[str], where: str | Path) -> None:
    """Every tensor of the file must be one the adapter's config implies (its LoRA matrices, modules_to_save, DoRA's
    magnitudes: what PEFT itself saves for that config): PEFT loads any other tensor over the base model's weight of
    that name without a word (an embedding of zeros in an adapter from elsewhere made every reply empty)."""
    foreign = sorted(set(shapes) - expected)
    if not foreign:
        return
    shown = ", ".join(f"{printable(key, 120)} {list(shapes[key])}" for key in foreign[:3])
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    names = sorted({key.removeprefix("base_model.model.").rsplit(".", 2)[-2] for key in foreign})
    one = len(foreign) == 1
    raise ModelError(
        f"The adapter in {printable(where)} holds {'a tensor' if one else f'{len(foreign)} tensors'} that its "
        f"{CONFIG_NAME} does not imply (no LoRA weight of its target_modules, no module of its modules_to_save): "
        f"{shown}{more}. Loading the adapter would put {'it' if one else 'them'} over the base model's own "
        f"weight{'' if one else 's'} of that name. Remove {'it' if one else 'them'} from {WEIGHTS_NAME}; or, where "
        f"the adapter was trained to replace {'that module' if one else 'those modules'} in full, list "
        f"{printable(', '.join(names[:3]), 120)} in modules_to_save of {CONFIG_NAME}.")


@contextlib.contextmanager
def _named_base(model: Any) -> Iterator[None]:
    """The adapter's config naming the base model it is loaded onto while PEFT reads it: PEFT compares the vocabulary
    with the base its base_model_name_or_path names, and an exported adapter names a local base by its folder name
    alone, which PEFT would look up on the Hub."""
    config = getattr(model, "peft_config", {}).get("default")
    base = getattr(getattr(model, "get_base_model", lambda: None)(), "name_or_path", None)
    if config is None or not base:
        yield
        return
    named = config.base_model_name_or_path
    config.base_model_name_or_path = base
    try:
        yield
    finally:
        config.base_model_name_or_path = named
