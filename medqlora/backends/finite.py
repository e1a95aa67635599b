"""The base model's weights checked finite right after it loads, before any evaluation or training: a NaN or an
infinity in one weight (a damaged download, a broken conversion or merge) makes every answer and the first loss
NaN, which the kit would otherwise report as a 0% baseline and a learning rate to lower.

One pass over the parameters on their device, no copy to the CPU and one synchronisation per device: each
floating-point tensor is summed into float32 (on a GPU in one kernel, without a float32 copy of a 16-bit weight), and
the sums are looked at together. A sum is NaN or infinite wherever a value is; a tensor whose sum is not finite is
then looked at value by value, so that finite weights whose sum overflows float32 are not taken for broken ones.
4-bit weights (bitsandbytes) are packed integers: their quantization scales (absmax, and the scales of the scales)
are checked instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import ModelError
from ..secrets import printable


def check_finite_weights(model: Any, name: str, source: str) -> None:
    """Refuse a base model with a NaN or an infinity in a floating-point weight, naming the first such tensor."""
    bad = non_finite_tensors(model)
    if not bad:
        return
    loaded = "" if source == name else f" (loaded from {printable(source)})"
    more = f", and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
    raise ModelError(
        f"The base model {printable(name)}{loaded} holds NaN or infinite values in its weights: first in "
        f"{printable(bad[0], 120)}{more}. Every answer and every loss computed with it would be NaN (a 0% score, a "
        "training stopped at its first step). The model's files are damaged or were written broken (a cut-off "
        "download, a failed conversion or merge): download or convert it again, or choose another model.name.")


def non_finite_tensors(model: Any) -> list[str]:
    """The names of the checked tensors that hold a NaN or an infinity, in the model's order."""
    import torch

    named = [(n, t) for n, t in checked_tensors(model) if t.numel() and t.device.type != "meta"]
    sums: dict[Any, list[tuple[str, Any]]] = {}
    for tensor_name, tensor in named:
        sums.setdefault(tensor.device, []).append((tensor_name, tensor.sum(dtype=torch.float32)))
    suspects: set[str] = set()
    for pairs in sums.values():
        finite = torch.isfinite(torch.stack([s for _, s in pairs])).tolist()  # the one synchronisation per device
        suspects.update(n for (n, _), ok in zip(pairs, finite) if not ok)
    return [n for n, t in named if n in suspects and not bool(torch.isfinite(t).all())]


def checked_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """The model's floating-point parameters by name; for a 4-bit parameter, its floating-point quantization
    state (absmax, offset, and the nested state's absmax) in its place."""
    for param_name, param in model.named_parameters():
        state = getattr(param, "quant_state", None)
        if state is not None:
            yield from ((f"{param_name} ({part})", t) for part, t in _quant_state_tensors(state))
        elif param.is_floating_point() and type(param).__name__ != "Params4bit":
            yield param_name, param


def _quant_state_tensors(state: Any) -> Iterator[tuple[str, Any]]:
    for part in ("absmax", "offset"):
        value = getattr(state, part, None)
        if value is not None and hasattr(value, "is_floating_point") and value.is_floating_point():
            yield f"quantization {part}", value
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from ((f"nested {part}", t) for part, t in _quant_state_tensors(nested))
