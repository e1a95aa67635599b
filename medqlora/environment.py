"""The environment's cache folders, checked once at the start of every command (the launch variables are
distributed.check_launch's): a variable that names a file, or a path below a file, is refused naming the variable,
instead of surfacing as a NotADirectoryError deep inside datasets or huggingface_hub, after the model has loaded."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError
from .secrets import printable

# MEDQLORA_CACHE is checked where the kit's cache is used (backends.check_cache_dir)
CACHE_FOLDER_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE")


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
