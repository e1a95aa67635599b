"""Which run of the kit an adapter comes from: its own run folder (<run>/adapter), or the run above one of its
checkpoints (<run>/checkpoints/checkpoint-N) or exports (<run>/export*/adapter). That run's records (manifest.json,
config.yaml, training_items.jsonl, data_stats.json) say what the adapter learnt and on what; they are read only as
regular files, and a link planted among them stops the command."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelError
from .regular_files import file_kind
from .run_files import Files
from .secrets import printable

MAX_MANIFEST_BYTES = 4 << 20
OWN_ADAPTERS = (Files.ADAPTER, Files.ADAPTER_INTERRUPTED)  # the adapter folders a run of the kit saves in itself


def kit_run_folder(adapter: Path) -> Path | None:
    """The run folder of the kit that holds ``adapter`` as its own (<run>/adapter, or the adapter an interrupted
    training left, <run>/adapter-interrupted), or None: the parent must hold the kit's manifest.json (with
    kit_version) and config.yaml, as regular files. An adapter folder of another name inside a run folder (another
    run's adapter copied there) is none of that run's: its records do not describe it."""
    if adapter.name not in OWN_ADAPTERS:
        return None
    parent = adapter.parent
    manifest, config = parent / Files.MANIFEST, parent / Files.CONFIG
    if manifest.is_symlink() or config.is_symlink():  # a run folder with planted links: refused, not read
        from .runs import RunDir

        RunDir(parent).check_links()
    _refuse_special_records(parent)
    if not (manifest.is_file() and config.is_file()):
        return None
    try:
        with manifest.open("rb") as handle:
            payload = json.loads(handle.read(MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return None
    return parent if isinstance(payload, dict) and "kit_version" in payload else None


# the records of a run folder the kit reads when it meets one of its adapters (what the run was, what it trained on)
RUN_RECORDS = (Files.MANIFEST, Files.CONFIG, Files.TRAINING_ITEMS, Files.DATA_STATS)


def _refuse_special_records(folder: Path) -> None:
    """A run's records are regular files: a named pipe there would block its reader (or, read as absent, turn the
    kit's own run into a foreign adapter and its trained-on record into a missing one)."""
    for name in RUN_RECORDS:
        record = folder / name
        if record.exists() and not record.is_file():
            raise ModelError(f"{printable(record)} is not a regular file ({file_kind(record)}): it is one of the "
                             "records the kit reads in a run folder (what the run trained, and on what). Replace it "
                             "with the run's own file (from a backup of the run folder), then run again.")


def origin_run(adapter: Path) -> Path | None:
    """The run folder of the kit an adapter was trained in: <run>/adapter itself, a checkpoint of the run
    (<run>/checkpoints/checkpoint-N) or an adapter the kit exported from it (<run>/export*/adapter); None for an
    adapter outside the kit's run folders. Its training_items.jsonl and config.yaml say what the adapter learnt."""
    run = kit_run_folder(adapter)
    if run is not None:
        return run
    return kit_run_folder(adapter.parent.parent / Files.ADAPTER) if in_run_subfolder(adapter) else None


def in_run_subfolder(adapter: Path) -> bool:
    """Whether ``adapter`` lies where a run of the kit keeps a checkpoint or an exported adapter."""
    parent = adapter.parent
    return ((parent.name == Files.CHECKPOINTS and adapter.name.startswith("checkpoint-"))
            or (parent.name.startswith(Files.EXPORT) and adapter.name == Files.ADAPTER))
