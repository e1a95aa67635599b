"""The kit's own converted copies of GGUF models (MEDQLORA_CACHE/gguf/<name>-<digest>): written whole or not at all,
checked before each use, and converted again when one is found damaged (a file cut short by a full disk or a crash
of the machine, an edited or truncated file): the copy is the kit's derived data, never the user's.

A conversion is written into a folder of its own, its files flushed to the disk, then renamed into place in one
step (gguf._save_conversion): a copy under the final name is complete when it was made. What happens to its files
afterwards is checked here from their headers, without reading the weights."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import json_text
from ..errors import ModelError
from ..secrets import printable
from .checkpoints import safetensors_problem


def conversion_damage(target: Path) -> str | None:
    """Why the converted copy at ``target`` cannot be loaded (None: its files are whole): a JSON file that does not
    parse, a safetensors file shorter than its header says, no weights, or a shard its index lists missing."""
    for path in sorted(target.glob("*.json")):
        try:
            json_text.loads(path.read_bytes())
        except (OSError, ValueError):  # ValueError: JSONDecodeError and undecodable bytes
            return f"its {path.name} is not valid JSON"
    weights = sorted(target.glob("*.safetensors"))
    if not weights:
        return "it holds no weights (model.safetensors)"
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            return f"its {file.name} {problem}"
    for index in target.glob("*.index.json"):
        read = json_text.loads(index.read_bytes())
        listed = read.get("weight_map") if isinstance(read, dict) else None
        missing = sorted(set(map(str, listed.values())) - {p.name for p in weights}) if isinstance(listed, dict) else []
        if missing:
            return f"it lacks {printable(missing[0], 120)}, which {index.name} lists"
    return None


def discard_damaged(target: Path, damage: str, gguf_name: str) -> None:
    """Take a damaged copy out of the cache: renamed aside in one step (another process never sees it half removed),
    then deleted. One that cannot be moved is one message: delete it and run again."""
    aside = target.with_name(f"{target.name}.damaged-{os.getpid()}-{time.time_ns()}")
    try:
        target.rename(aside)
    except FileNotFoundError:  # another process took it away first
        return
    except OSError as err:
        raise ModelError(f"The kit's converted copy of {printable(gguf_name)} at {printable(str(target))} is damaged "
                         f"({damage}) and cannot be removed ({err.strerror}): delete that folder, and the kit converts "
                         "the GGUF model again on its next run.") from None
    shutil.rmtree(aside, ignore_errors=True)


def in_conversion_cache(source: str, cache_dir: Path) -> bool:
    """Whether the folder ``source`` is one of the kit's converted copies (under ``cache_dir``/gguf)."""
    try:
        return Path(source).expanduser().resolve().parent == (cache_dir / "gguf").expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def damaged_cache_error(source: str, text: str) -> ModelError:
    """A converted copy that passed the checks before loading but cannot be loaded: the copy is at fault, not
    model.name (which names the GGUF model)."""
    return ModelError(f"Cannot load the kit's converted copy of the GGUF model at {printable(source)} "
                      f"({printable(text, 300)}): that cached conversion is damaged. Delete the folder, and the kit converts model.name again on "
                      "its next run.")


def flush_folder(folder: Path) -> None:
    """Every file of ``folder`` and the folder itself written through to the disk, so that the rename which follows
    can never leave, after a crash of the machine, a copy under the final name whose files are short or empty."""
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            with path.open("rb+") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened and flushed
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def byte_level(tokenizer_json: dict) -> bool:
    """Whether a tokenizer.json is a byte-level BPE (GPT-2's scheme: SmolLM2, Qwen, Llama 3): every byte is a
    symbol of its alphabet, so it never needs a byte fallback."""
    model = tokenizer_json.get("model") if isinstance(tokenizer_json, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return False
    pending = [tokenizer_json.get("pre_tokenizer")]
    while pending:
        part = pending.pop()
        if isinstance(part, dict):
            if part.get("type") == "ByteLevel":
                return True
            pending += part.get("pretokenizers") or []
    return False


def clear_byte_fallback(folder: Path) -> bool:
    """transformers' conversion of a GGUF file's byte-level BPE tokenizer (a "gpt2" one: SmolLM2's) marks it
    ``byte_fallback: true``, which a byte-level BPE never uses, and which makes llama.cpp's converter take it for a
    SentencePiece ("llama") vocabulary: a GGUF export of the trained model then splits text at every blank in
    llama.cpp and Ollama. Cleared in ``folder``'s tokenizer.json (the kit's own copy; tokenization is unchanged).
    Whether it was changed."""
    path = folder / "tokenizer.json"
    try:
        tokenizer_json = json_text.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not byte_level(tokenizer_json) or not tokenizer_json["model"].get("byte_fallback"):
        return False
    tokenizer_json["model"]["byte_fallback"] = False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)
    return True
