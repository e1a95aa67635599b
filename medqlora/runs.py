"""Run folders: one per run, never overwritten, every file written atomically, a manifest to reproduce it."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import KIT_ROOT, KitConfig
from .distributed import is_main
from .errors import MedQLoRAError
from .secrets import RedactingFilter, redact

PACKAGES = ["torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate",
            "unsloth", "unsloth_zoo"]
log = logging.getLogger("medqlora")


def atomic_write(path: Path, text: str) -> None:
    """Write then rename, so a crash never leaves a half-written file behind. Credentials are masked."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(redact(text), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise MedQLoRAError(f"Cannot write {path}: {err.strerror}. Is the disk full or read-only?") from None


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")


def default_run_name(cfg: KitConfig) -> str:
    model = re.sub(r"[^A-Za-z0-9.]+", "-", cfg.model.name.rsplit("/", 1)[-1].removesuffix(".gguf")).strip("-")
    data = re.sub(r"[^A-Za-z0-9.]+", "-", Path(cfg.data.datasets[0].source).stem.rsplit("/", 1)[-1]).strip("-")
    return f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, cfg: KitConfig, output_dir: str | None = None) -> RunDir:
        root = Path(output_dir or cfg.output.dir).expanduser()
        name = cfg.output.run_name or default_run_name(cfg)
        if "/" in name or "\\" in name or name in {".", ".."}:
            raise MedQLoRAError(f"output.run_name '{name}' must be a plain folder name, not a path.")
        path = root / name
        try:
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            raise MedQLoRAError(
                f"The run folder {path} already exists; the kit never overwrites a run. "
                "Choose another output.run_name (or leave it empty for a timestamped name)."
            ) from None
        except OSError as err:
            raise MedQLoRAError(f"Cannot create the run folder {path}: {err.strerror}.") from None
        run = cls(path)
        run.start_log()
        return run

    def start_log(self) -> None:
        """Log to this run's run.log (and only this run's: a previous run's handler is closed)."""
        if not is_main():
            return
        for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            log.removeHandler(old)
            old.close()
        log.propagate = False  # Unsloth installs a root handler; keep each message once on screen
        handler = logging.FileHandler(self.path / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(RedactingFilter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    def write_json(self, name: str, payload: Any) -> None:
        if is_main():  # data parallel: only the main process writes the run folder
            write_json(self.path / name, payload)

    def write_text(self, name: str, text: str) -> None:
        if is_main():
            atomic_write(self.path / name, text)

    def unique(self, name: str) -> str:
        """``name`` if free in the run folder, else name-<timestamp>: earlier results are never overwritten."""
        if not (self.path / name).exists():
            return name
        stem, dot, suffix = name.partition(".")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate, n = f"{stem}-{stamp}{dot}{suffix}", 1
        while (self.path / candidate).exists():
            n += 1
            candidate = f"{stem}-{stamp}-{n}{dot}{suffix}"
        return candidate


def latest_run_with_adapter(root: Path) -> Path:
    runs = [p for p in root.glob("*/adapter/adapter_config.json")] if root.is_dir() else []
    if not runs:
        raise MedQLoRAError(
            f"No trained adapter found under {root}. Train one first (--mode train or full), or pass --adapter PATH."
        )
    return max(runs, key=lambda p: p.stat().st_mtime).parent


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


def size_mb(path: Path) -> float:
    """Size of a file, or of everything in a folder, in MB."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)
