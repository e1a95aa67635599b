"""The environment's cache folders and Hub address, checked once at the start of every command (the launch
variables are distributed.check_launch's): a cache variable that names a file, or a path below a file, and an
HF_ENDPOINT that is no URL are refused naming the variable, instead of surfacing deep inside datasets or
huggingface_hub after the model has loaded (or as "check the connection" when an export is pushed)."""

from __future__ import annotations

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
    """Each cache folder variable that is set (and not empty) names a folder, or a path that can become one."""
    for name in CACHE_FOLDER_VARIABLES:
        value = os.environ.get(name)
        if value:
            check_folder_path(name, Path(value).expanduser())


def check_folder_path(name: str, where: Path, role: str = "a cache folder", unset: str = "unset it") -> Path:
    """``where`` (the value of the variable ``name``) refused in one message when it, or a folder above it, is a
    file; returned otherwise."""
    for folder in (where, *where.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                shown = "it" if folder == where else f"{printable(str(folder))} above it"
                raise ConfigError(f"{name}: {printable(str(where))} cannot be {role}: {shown} is not a folder. "
                                  f"Point {name} at a folder (or {unset}).")
            break
    return where
