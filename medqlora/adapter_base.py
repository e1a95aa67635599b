"""The adapter against its base model: ``check_base`` compares an adapter (checked by adapters.py) with the base
model's config.json, before PEFT loads anything: the model type where the adapter names a base that can be read
locally, the layers and target modules, and the in/out features of every LoRA matrix (lora_A is [r, in], lora_B is
[out, r]).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import json_text
from .adapters import CONFIG_NAME, ValidAdapter, check_tensors, layer_numbers, lora_modules
from .errors import ModelError
from .secrets import printable

DIFFERENT_BASE = "Was it trained on a different base model?"
_MODULE_QUOTED = re.compile(r"(Target module \w+)\(.*\)(?= is not supported)", re.DOTALL)


def base_config(source: str | None, trust_remote_code: bool = False) -> dict[str, Any] | None:
    """The base model's config.json as a dict, read locally only (None when it cannot be read)."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # not a repo id, or no cache
            return None
        if not isinstance(cached, str):
            return None
        file = Path(cached)
    try:
        config = json_text.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") if isinstance(config.get("text_config"), dict) else config


def empty_model(config: dict[str, Any], trust_remote_code: bool = False) -> Any | None:
    """The base model built from config.json without weights (on the meta device: nothing allocated or read); None
    when it cannot be built."""
    if trust_remote_code:  # building it would run the model's own code: not for a check
        return None
    try:
        from accelerate import init_empty_weights
        from transformers import CONFIG_MAPPING, AutoModelForCausalLM

        kwargs = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config", "auto_map")}
        built = CONFIG_MAPPING[config["model_type"]].from_dict(kwargs)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(built)
    except Exception:  # an architecture transformers does not know: fall back to config.json's figures
        return None


def linear_features(config: dict[str, Any], trust_remote_code: bool = False,
                    model: Any | None = None) -> dict[str, tuple[int, int]] | None:
    """module path -> (in_features, out_features) of every linear layer of the base model, and (vocabulary, width)
    of every embedding layer (LoRA can target embed_tokens too), from an empty (meta) model built from config.json
    (``model``, where built already); None when it cannot be built."""
    model = model if model is not None else empty_model(config, trust_remote_code)
    if model is None:
        return None
    from torch import nn

    return {name: (m.num_embeddings, m.embedding_dim) if isinstance(m, nn.Embedding) else (m.in_features, m.out_features)
            for name, m in model.named_modules() if isinstance(m, nn.Embedding) or (
                isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int))}


def estimated_features(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of the usual projection names, from hidden_size / intermediate_size / heads x head_dim."""
    c = text_config(config)
    hidden, inter = c.get("hidden_size"), c.get("intermediate_size")
    heads = c.get("num_attention_heads")
    kv = c.get("num_key_value_heads") or heads
    if not isinstance(hidden, int) or not isinstance(heads, int) or not heads:
        return {}
    head_dim = c.get("head_dim") or hidden // heads
    found = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
             "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden)}
    if isinstance(inter, int):
        found |= {"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    if isinstance(c.get("vocab_size"), int):
        found["embed_tokens"] = (c["vocab_size"], hidden)
    return found


def check_base(adapter: ValidAdapter, model_name: str, source: str | None, trust_remote_code: bool = False) -> None:
    """Refuse, in one paragraph, an adapter that cannot fit the base model ``model_name`` (config.json at
    ``source``). Does nothing when the base model's config cannot be read locally."""
    base = base_config(source, trust_remote_code)
    if base is None:
        return
    from .backends.sources import published_base_name

    named = adapter.config.get("base_model_name_or_path") or ""
    if named == published_base_name(model_name):  # an exported adapter names a local base by its folder name
        named = model_name
    hint = (f" Its {CONFIG_NAME} names {printable(named, 120)} as its base: --set model.name={printable(named, 120)}"
            if named and named != model_name else "")

    def refuse(detail: str) -> ModelError:
        return ModelError(f"Cannot load the adapter in {printable(adapter.folder)} onto {printable(model_name, 120)}: "
                          f"{detail}. {DIFFERENT_BASE}{hint} (or pass the run folder it was trained in).")

    trained_on = base_config(named, trust_remote_code) if named and named != source else None
    types = [text_config(c).get("model_type") for c in (trained_on, base) if c]
    if trained_on and all(types) and types[0] != types[1]:
        raise refuse(f"it was trained on a {printable(types[0], 40)} model and the base is a {printable(types[1], 40)}")

    check_layers(adapter, base)
    model = empty_model(base, trust_remote_code)
    features = linear_features(base, trust_remote_code, model)
    leaves = {name.rsplit(".", 1)[-1] for name in features} if features else set(estimated_features(base))
    targets = adapter.config["target_modules"]
    if isinstance(targets, list) and leaves:
        missing = [t for t in targets if t not in leaves and not any(n == t or n.endswith(f".{t}")
                                                                    for n in (features or {}))]
        if missing:
            raise refuse(f"it targets modules the base model lacks ({printable(', '.join(missing), 120)}; the base "
                         f"has {printable(', '.join(sorted(leaves)[:12]), 200)})")
    estimate = estimated_features(base)
    for module, pair in sorted(lora_modules(adapter.shapes).items()):
        expected = _lookup(module, features) if features else estimate.get(module.rsplit(".", 1)[-1])
        if expected is None:
            if features:
                raise refuse(f"the base model has no module {printable(module, 120)}")
            continue
        got = (pair["A"][1], pair["B"][0])
        if got != expected:
            raise refuse(f"{printable(module, 120)} is {got[0]} -> {got[1]} features in the adapter and "
                         f"{expected[0]} -> {expected[1]} in the base model")
    if features:
        check_complete(adapter, features)
    if model is not None and features:
        check_layout(adapter, model)


def check_layout(adapter: ValidAdapter, model: Any) -> None:
    """PEFT itself puts the adapter's config on the empty base model (no weight read or allocated): what it cannot
    place (a target_modules pattern that selects the whole model) and the tensors it would expect against those the
    weights file holds (DoRA's magnitudes missing, a base weight smuggled in), so --dry-run refuses what loading
    would."""
    import warnings

    from accelerate import init_empty_weights
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict

    try:
        config = PeftConfig.from_peft_type(**adapter.config)
        with warnings.catch_warnings(), init_empty_weights():
            warnings.simplefilter("ignore")  # PEFT's notes on the config (fan_in_fan_out...) are its loading's
            expected = set(get_peft_model_state_dict(get_peft_model(model, config)))
    except (ValueError, TypeError, KeyError) as err:
        held = sorted({module.rsplit(".", 1)[-1] for module in lora_modules(adapter.shapes)})
        # PEFT quotes the whole module it cannot adapt (hundreds of lines): its class name is enough
        reason = printable(_MODULE_QUOTED.sub(r"\1 (...)", str(err)).split("\n", 1)[0].split(". ", 1)[0], 200)
        raise ModelError(
            f"Cannot load the adapter in {printable(adapter.folder)}: PEFT cannot put its {CONFIG_NAME} on the base "
            f"model (target_modules {printable(adapter.config.get('target_modules'), 120)}): {reason}. Set "
            f"target_modules in {CONFIG_NAME} to the modules its weights hold"
            + (f" ({printable(', '.join(held), 160)})" if held else "") + ".") from None
    check_tensors(adapter.shapes, expected, adapter.folder)


def check_complete(adapter: ValidAdapter, features: dict[str, tuple[int, int]]) -> None:
    """Every module of the base model that the adapter's target_modules names holds its LoRA pair in the weights
    file (a partial copy, layers deleted): PEFT would put freshly made values in the missing ones' place. Checked
    where the targets are plain names over every layer (no layers_to_transform, exclude_modules or regex)."""
    config = adapter.config
    targets = config.get("target_modules")
    if not isinstance(targets, list) or any(config.get(k) for k in ("layers_to_transform", "exclude_modules",
                                                                    "target_parameters")):
        return
    held = set(lora_modules(adapter.shapes))
    # the stacks of layers the adapter holds modules of (a multimodal model's vision tower may be left out by design)
    stacks = {m.split(".layers.", 1)[0] for m in held if ".layers." in m}
    missing = [name for name in features if name.rsplit(".", 1)[-1] in targets and ".layers." in name
               and _same_name(name.split(".layers.", 1)[0], stacks)
               and not _same_name(name, held)]
    if missing:
        raise ModelError(
            f"The adapter in {printable(adapter.folder)} is incomplete: its weights file lacks the LoRA matrices of "
            f"{len(missing)} of the {len(missing) + len(held)} modules its {CONFIG_NAME} targets in the base model "
            f"(e.g. {printable(missing[0], 120)}). Loading it would put freshly made values in their place. Copy the "
            "whole adapter again, or train it again.")


def check_layers(adapter: ValidAdapter, base: dict[str, Any]) -> None:
    """layers_to_transform may name only layers the base model has: PEFT finds no module to put LoRA on in the
    others and fails (or, where some layers exist, leaves those out)."""
    count = text_config(base).get("num_hidden_layers")
    if not isinstance(count, int) or count <= 0:
        return
    missing = [n for n in layer_numbers(adapter.config) or [] if n >= count]
    if missing:
        raise ModelError(f"The adapter in {printable(adapter.folder)}: its {CONFIG_NAME} sets layers_to_transform to "
                         f"layer{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing[:8]))}, which the base model lacks (it has {count} "
                         f"layers, 0-{count - 1}). Set layers_to_transform to the layers the adapter was trained on, "
                         "or remove it (every layer).")


def _same_name(name: str, names: set[str]) -> bool:
    """Whether ``name`` is one of ``names``, a name being the same with or without a leading wrapper's path."""
    return any(n == name or n.endswith(f".{name}") or name.endswith(f".{n}") for n in names)


def _lookup(module: str, features: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    if module in features:
        return features[module]
    tails = [name for name in features if name.endswith(f".{module}") or module.endswith(f".{name}")]
    return features[tails[0]] if len(tails) == 1 else None
