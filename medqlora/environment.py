"""The environment's cache folders and Hub address, checked once at the start of every command (the launch
variables are distributed.check_launch's): a cache variable that names a file, a path below a file, a folder that
cannot be made, or nothing at all (empty or blank), and an HF_ENDPOINT that is no URL are refused naming the variable, instead of surfacing deep inside datasets or
huggingface_hub after the model has loaded (or as "check the connection" when an export is pushed)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import ConfigError
from .secrets import printable

# MEDQLORA_CACHE is checked where the kit's cache is used (backends.check_cache_dir)
CACHE_FOLDER_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE")


def check_environment() -> None:
    check_cache_folders()
    check_hub_endpoint()


def check_hub_endpoint() -> None:
    """HF_ENDPOINT (a mirror of the Hub) is an http(s) URL; its value is not shown (it may carry a password)."""
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint and not endpoint.strip().lower().startswith(("http://", "https://")):
        raise ConfigError("HF_ENDPOINT is set but is not a URL (it must start with https:// or http://): it names the "
                          "Hub, or a mirror of it, that models and datasets come from and exports go to. Fix it, or "
                          "unset it for https://huggingface.co.")


def check_cache_folders() -> None:
    """Each cache folder variable that is set names a folder, or a path that can become one; XDG_CACHE_HOME too
    while HF_HOME is unset (the Hugging Face cache is then $XDG_CACHE_HOME/huggingface)."""
    names = CACHE_FOLDER_VARIABLES if "HF_HOME" in os.environ else (*CACHE_FOLDER_VARIABLES, "XDG_CACHE_HOME")
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            _refuse_blank(name, value)
            _refuse_uncreatable(name, check_folder_path(name, Path(value).expanduser()))


def _refuse_blank(name: str, value: str) -> None:
    """An empty or blank value is no folder: the Hugging Face libraries would keep their cache in the current folder
    (HF_DATASETS_CACHE='' is the current folder itself), or in a folder named by the blanks."""
    if not value.strip():
        shown = "empty" if not value else f"blanks only ({printable(repr(value))})"
        raise ConfigError(f"{name} is set but {shown}: the Hugging Face libraries would then keep their cache in the "
                          f"current folder. Unset it (unset {name}), or point it at a folder.")


def _refuse_uncreatable(name: str, where: Path) -> None:
    """A folder that does not exist yet is made once, as the libraries would make it, and removed again: a path
    no one can create (below /proc, on a read-only disk) is named now, not after the model has loaded."""
    missing = []
    folder = where
    while not (folder.exists() or folder.is_symlink()):
        missing.append(folder)
        folder = folder.parent
    if not missing:
        return
    try:
        where.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"{name}: {printable(str(where))} cannot be a cache folder: it cannot be created "
                          f"({printable(err.strerror or type(err).__name__)}). Point {name} at a folder that exists "
                          "or can be made (or unset it).") from None
    for created in missing:  # deepest first
        with contextlib.suppress(OSError):
            created.rmdir()


def datasets_cache() -> tuple[Path, str]:
    """The folder the datasets library keeps its cache (and its lock files) in, as it chooses it, with the variable
    that named it (or the default's path)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser(), "HF_DATASETS_CACHE"
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets", "HF_HOME"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "datasets", "XDG_CACHE_HOME"
    return Path("~/.cache/huggingface/datasets").expanduser(), ""


def check_datasets_cache(user: str) -> None:
    """The datasets cache can take a file (the folder, or the nearest one above it that it would be made in): in a
    folder that exists but cannot be written (a shared read-only cache, /proc), the datasets library waits for a
    lock file it can never create, forever. ``user``: what reads through datasets (a hub dataset, lm-eval)."""
    import tempfile

    cache, variable = datasets_cache()
    folder = cache
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".medqlora-write-check-"):
            return
    except OSError as err:
        why = printable(err.strerror or type(err).__name__)
    named = f"{variable}={printable(os.environ[variable], 200)}" if variable else "the default"
    where = "" if folder == cache else f" (to be made in {printable(str(folder))})"
    fix = (f"Point {variable} at a folder you can write" if variable == "HF_DATASETS_CACHE" else
           f"Set HF_DATASETS_CACHE to a folder you can write{f' (or change {variable})' if variable else ''}")
    raise ConfigError(f"{user} reads through the datasets library, whose cache folder {printable(str(cache))}{where} "
                      f"(from {named}) cannot be written ({why}): the library would wait forever for a lock file it "
                      f"cannot create there. {fix}.")


def check_folder_path(name: str, where: Path, role: str = "a cache folder", unset: str = "unset it",
                      point: bool = True) -> Path:
    """``where`` (the value of the variable ``name``, or a path below it) refused in one message when it, or a
    folder above it, is a file; returned otherwise. ``point``: the fix is to point ``name`` at a folder (else
    ``unset`` is the fix, with setting ``name`` to your home folder)."""
    for folder in (where, *where.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                shown = "it" if folder == where else f"{printable(str(folder))} above it"
                fix = (f"Point {name} at a folder (or {unset})." if point else
                       f"Set {name} to your home folder, or {unset}.")
                raise ConfigError(f"{name}: {printable(str(where))} cannot be {role}: {shown} is not a folder. {fix}")
            break
    return where
