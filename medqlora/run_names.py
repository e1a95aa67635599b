"""Where run folders go and what they are called: the output folder checked before a run (it can hold a new
folder; no credential in its path), the default <model>-<data>-<timestamp> name, and the folder made without
taking another run's."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from .config import KitConfig
from .errors import MedQLoRAError
from .run_files import Files
from .secrets import contains_secret, printable, redact, slug

NAME_PART_CHARS = 40  # each of <model> and <data> in a made name, at most: the name stays far below NAME_MAX


def _bounded(part: str) -> str:
    """A name part cut to NAME_PART_CHARS: its start, then a short hash of the whole, so two long names that share
    their start still make two names (a data file named by a 240-character title made a folder name the file
    system refused)."""
    if len(part) <= NAME_PART_CHARS:
        return part
    digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{part[:NAME_PART_CHARS - len(digest) - 1].rstrip('-.')}-{digest}"


def run_name_stem(cfg: KitConfig) -> str:
    """The <model>-<data> start of the name the kit makes for a run, each part bounded (_bounded); 'run' when it
    would hold a credential. Credentials are masked before the names are mapped to folder-name characters, so
    neither a token nor its mapped form can reach a folder name."""
    model = slug(redact(cfg.model.name).rsplit("/", 1)[-1].removesuffix(".gguf"))
    data = slug(Path(_without_query(redact(cfg.data.datasets[0].source))).stem.rsplit("/", 1)[-1])
    if contains_secret(f"{model}-{data}") is not None:
        return "run"
    return f"{_bounded(model)}-{_bounded(data)}"


def _without_query(source: str) -> str:
    """A URL's address without its query and fragment (where credentials ride), to name a run by its file."""
    return source.split("?", 1)[0].split("#", 1)[0] if "://" in source else source


def default_run_name(cfg: KitConfig) -> str:
    """<model>-<data>-<timestamp> (run_name_stem): at most about 100 characters, whatever the names it is made of."""
    name = f"{run_name_stem(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
    return name if contains_secret(name) is None else f"run-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_name(name: str) -> None:
    """output.run_name (or the name the kit made): a plain folder name that holds no credential's value (--dry-run
    checks the same)."""
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise MedQLoRAError(f"output.run_name '{printable(name)}' must be a plain folder name, not a path.")
    secret = contains_secret(name)
    if secret:
        raise MedQLoRAError(f"output.run_name contains the value of {secret}: a folder name is shown and shared. "
                            "Choose another output.run_name (or leave it empty for a timestamped name).")


def check_name_fits(root: Path, name: str) -> None:
    """A run name within the longest folder name the output folder's file system takes (its NAME_MAX: 255 bytes
    on most, 143 on eCryptfs), checked on the nearest existing folder: refused at --dry-run with the limit, not
    when the run starts."""
    folder = next((f for f in (root, *root.parents) if f.is_dir()), None)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX") if folder is not None and hasattr(os, "pathconf") else None
    except (OSError, ValueError):
        limit = None
    size = len(name.encode("utf-8", "surrogatepass"))
    if limit and size > limit:
        raise MedQLoRAError(f"output.run_name is {size} bytes in UTF-8, and the file system of {printable(folder)} "
                            f"takes folder names of at most {limit} bytes. Choose a shorter output.run_name (or "
                            "leave it empty for a timestamped name).")


def check_run_folder_free(root: Path, name: str) -> None:
    """A run name the user chose names no existing folder (nor link) under the output folder: the kit never
    overwrites a run (--dry-run checks the same)."""
    path = root / name
    if path.exists() or path.is_symlink():
        raise run_folder_taken(path)


def run_folder_taken(path: Path) -> MedQLoRAError:
    from .run_files import stopped_before_training

    if not path.is_symlink() and (stage := stopped_before_training(path)):
        return MedQLoRAError(f"The run folder {printable(path)} already exists: it holds the records of an earlier "
                             f"start of this run, {printable(stage, 80)}, with nothing trained. Remove it (rm -r "
                             f"{printable(path)}) to train under this name, or choose another output.run_name.")
    return MedQLoRAError(f"The run folder {printable(path)} already exists"
                         + (" (as a symbolic link)" if path.is_symlink() else "") + "; the kit never overwrites a "
                         "run. Choose another output.run_name (or leave it empty for a timestamped name).")


def refuse_secret_in_path(path: Path | str, what: str) -> None:
    """A folder path that holds a credential's value: refused, naming the variable, never the value. The path of a
    run folder is printed, logged and written into tracking files (tensorboard's events) that are shared."""
    secret = contains_secret(str(path))
    if secret:
        raise MedQLoRAError(f"{what} contains the value of {secret}: a run folder's path is printed, logged and "
                            "written into its tracking files. Choose a folder whose path holds no credential.")


def check_output_dir(root: Path) -> None:
    """The folder that holds run folders: it, or its nearest existing parent, must be a folder in which a folder
    can be made (tried, and removed at once: /proc/self, a read-only mount or a folder without write permission
    are found here, at --dry-run, not when the run starts)."""
    if not str(root).strip():
        raise MedQLoRAError("The output folder is empty: --output-dir (or output.dir) must name a folder.")
    refuse_secret_in_path(root, "The output folder (--output-dir or output.dir)")
    try:
        root.expanduser().resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11 reports a loop of links as RuntimeError
        raise MedQLoRAError(f"The output folder {printable(root)} (--output-dir or output.dir) cannot be reached: a "
                            f"symbolic link on its path loops back to itself ({printable(str(err), 200)}). Point the "
                            "link at a real folder, or choose another output folder.") from None
    _refuse_inside_run_folder(root)
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                raise MedQLoRAError(f"The output folder {printable(root)} cannot be made: {printable(folder)} is a "
                                    "file. Choose another --output-dir (or output.dir).")
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".medqlora-check-", dir=folder))
            except OSError as err:
                raise MedQLoRAError(f"The output folder {printable(root)} cannot be made: no folder can be created in "
                                    f"{printable(folder)} ({err.strerror}). Choose another --output-dir (or "
                                    "output.dir).") from None
            return


def _refuse_inside_run_folder(root: Path) -> None:
    """An output folder inside a run folder of the kit (or that folder itself, or its adapter/): the new run folders
    made there would change a finished run after the fact, inside the adapter folder users copy or upload."""
    resolved = root.expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / Files.MANIFEST).is_file() and (folder / Files.CONFIG).is_file():
            raise MedQLoRAError(
                f"The output folder {printable(root)} (--output-dir or output.dir) lies inside the run folder "
                f"{printable(folder)} (its manifest.json and config.yaml): the run folders made there would change "
                "that run after the fact, and its adapter folder, which is copied or uploaded as the adapter. Choose "
                f"an output folder outside it, e.g. {printable(folder.parent)}.")


def make_run_folder(root: Path, name: str, generated: bool) -> Path:
    """Create root/name (never following a link there). A generated name taken by a run started in the same
    second (a sweep launched in parallel) gets a -2, -3... suffix; a name the user chose is never changed."""
    for n in range(1, 100 if generated else 2):
        path = root / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if not generated or path.is_symlink():
                raise
    raise FileExistsError(name)
