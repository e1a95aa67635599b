"""Torch files that are pickles (a model folder's pytorch_model*.bin, a checkpoint's optimizer.pt, scheduler.pt,
scaler.pt and rng_state*.pth), read for code before anything loads them. A pickle can name any Python function to
call while it is read (`posix.system`: a shell command); torch's weights-only loader, which transformers uses,
refuses such a file, but in an error that advises loading it with the safe loader switched off. The kit refuses
it first, in its own words: the file holds code, names what it would call, and is not loaded.

The check is torch's own static one (torch.serialization.get_unsafe_globals_in_checkpoint: the pickle's opcodes
disassembled, nothing run), against what the loader in question allows: torch's defaults, and for a checkpoint's
training state the numpy types transformers allows for its random states (rng_state.pth). A file of the old
(non-zip) torch format is not disassembled here; torch's loader still refuses its code, and that error is told
in the kit's words too (code_refused)."""

from __future__ import annotations

import contextlib
import re
import zipfile
from pathlib import Path
from typing import Any

from .errors import ModelError
from .secrets import printable

# How torch's loader begins its refusal, and the name it gives ("Trying to load unsupported GLOBAL posix.system")
_REFUSED = "Weights only load failed"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def code_in_pickle(file: Path, numpy_allowed: bool = False) -> list[str]:
    """The functions and classes the torch file ``file`` names that the weights-only loader refuses (sorted; [] for
    a file of weights alone, a file that is no zip archive, or one torch cannot disassemble). ``numpy_allowed``: the
    numpy types transformers allows where it reads a checkpoint's random states."""
    import torch

    if not zipfile.is_zipfile(file):
        return []
    with _numpy_types() if numpy_allowed else contextlib.nullcontext():
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        except (ValueError, RuntimeError, KeyError, OSError):  # a TorchScript archive, no data.pkl, unreadable
            return []


def _numpy_types() -> Any:
    from transformers.trainer_pt_utils import safe_globals

    return safe_globals()


def holds_code_error(where: str, file: Path, names: list[str], advice: str) -> ModelError:
    """The kit's message for a torch file that holds code: what it would call, that it is not loaded, and
    ``advice``."""
    shown = ", ".join(printable(n, 80) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return ModelError(f"{where}: {printable(str(file))} holds code, not only weights: reading it would call {shown}, "
                      "which no file of weights or training state needs (a pickle can run any command as it is read). "
                      f"It is unsafe and the kit does not load it. {advice}")


def code_refused(err: BaseException) -> list[str] | None:
    """The names torch's weights-only loader gave when it refused a pickle (``err``: the error a load raised); None
    where ``err`` is no such refusal."""
    text = str(err)
    if _REFUSED not in text:
        return None
    return sorted(set(_GLOBAL.findall(text))) or ["a function it does not name"]


MODEL_ADVICE = ("Use the model's safetensors release (model.safetensors), or, for a checkpoint you trust, convert it "
                "where it was made: model.save_pretrained(folder) writes safetensors.")
