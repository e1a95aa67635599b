"""manifest.json: what reproduces a run: the kit's version and git commit, the command, Python, the platform, the
versions of the training packages, the seed and the runtime."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

from .config import KIT_ROOT, KitConfig

PACKAGES = ["torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate", "liger-kernel",
            "unsloth", "unsloth_zoo"]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(KIT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(KIT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def manifest(cfg: KitConfig, runtime: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    return {
        "kit_version": __version__,
        "git_commit": git_commit(),
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "seed": cfg.training.seed,
        "runtime": runtime,
        **extra,
    }
