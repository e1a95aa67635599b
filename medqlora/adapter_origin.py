"""Which run of the kit an adapter comes from: its own run folder (<run>/adapter), or the run above one of its
checkpoints (<run>/checkpoints/checkpoint-N) or exports (<run>/export*/adapter). That run's records (manifest.json,
config.yaml, training_items.jsonl, data_stats.json) say what the adapter learnt and on what; they are read only as
regular files, and a link planted among them stops the command."""

from __future__ import annotations

from pathlib import Path

from . import json_text
from .adapter_weights import weights_sha256, written_by_run
from .errors import ModelError
from .regular_files import file_kind
from .run_files import Files
from .secrets import printable
from .shown_paths import quoted_path

MAX_MANIFEST_BYTES = 4 << 20
OWN_ADAPTERS = (Files.ADAPTER, Files.ADAPTER_INTERRUPTED)  # the adapter folders a run of the kit saves in itself


def kit_run_folder(adapter: Path) -> Path | None:
    """The run folder of the kit that holds ``adapter`` as its own (<run>/adapter, or the adapter an interrupted
    training left, <run>/adapter-interrupted), or None: the parent must hold the kit's manifest.json (with
    kit_version) and config.yaml, as regular files, and the adapter the weights the run saved (its manifest's
    adapter_sha256). An adapter folder of another name inside a run folder (another run's adapter copied there), or
    other weights copied into the run's own, is none of that run's: its records do not describe it."""
    found = _run_and_manifest(adapter)
    return found[0] if found is not None and written_by_run(adapter, found[1]) else None


def unrecorded_weights(adapter: Path) -> Path | None:
    """The run folder whose own adapter folder ``adapter`` is, when it holds weights the run did not save (another
    adapter copied over it); None otherwise."""
    found = _run_and_manifest(adapter)
    return found[0] if found is not None and not written_by_run(adapter, found[1]) else None


def _run_and_manifest(adapter: Path) -> tuple[Path, dict] | None:
    """The run folder of the kit ``adapter`` is the own adapter folder of, and its manifest, or None."""
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
    payload = _json_record(manifest)
    if payload is None:  # the kit's records around it, and a manifest it cannot read: damaged, not foreign
        _refuse_damaged_manifest(manifest, adapter)
    return (parent, payload) if payload is not None and "kit_version" in payload else None


def _refuse_damaged_manifest(manifest: Path, adapter: Path) -> None:
    """A run folder (config.yaml beside it) whose manifest.json is no JSON object: cut off mid-write (a full disk, a
    kill), or emptied. Read as absent, it made the kit call its own run folder foreign without a word, and set
    the run's records (system prompt, templates, what it trained on) aside."""
    try:
        size = manifest.stat().st_size
        with manifest.open("rb") as handle:
            head = handle.read(60)
    except OSError as err:
        why = f"cannot be read ({err.strerror})"
    else:
        why = (f"is over {MAX_MANIFEST_BYTES >> 20} MiB" if size > MAX_MANIFEST_BYTES else "is empty" if not size
               else f"is not a complete JSON object ({size} bytes, starting {printable(repr(head), 80)}: cut off "
               "while it was written?)")
    raise ModelError(f"{quoted_path(manifest)} {why}: it is the record of the run that saved {quoted_path(adapter)} "
                     "(what it trained, and on what), so the kit cannot tell whether that adapter is the run's own. "
                     "Restore manifest.json from a backup of the run folder; or, to use the adapter as one trained "
                     "outside the kit's runs, copy its folder elsewhere (cp -r) and give the copy.")


def _json_record(path: Path) -> dict | None:
    """A JSON object the kit wrote in a run folder (manifest.json, origin.json), read as a regular file; None where
    it is absent, not a regular file, too long or not a JSON object."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            payload = json_text.loads(handle.read(MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


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
    (<run>/checkpoints/checkpoint-N) or an adapter the kit exported from it (<run>/export*/adapter), also through
    the run folders made for exports of those (their origin.json names the training run); None for an adapter
    outside the kit's run folders. Its training_items.jsonl and config.yaml say what the adapter learnt."""
    run = kit_run_folder(adapter)
    if run is not None or not in_run_subfolder(adapter):
        return run
    holder = adapter.parent.parent
    return kit_run_folder(holder / Files.ADAPTER) or recorded_origin(holder, adapter)[0]


def recorded_origin(holder: Path, adapter: Path) -> tuple[Path | None, str]:
    """The training run a run folder made for a checkpoint or an export names in its origin.json, followed through
    the folders made for exports of exports, and the adapter of that run the weights come from (as a path in it:
    adapter, checkpoints/checkpoint-N, export/adapter). (None, "") where there is none, or where ``adapter`` holds
    other weights than the ones recorded there."""
    seen: set[Path] = set()
    record = _json_record(holder / Files.ORIGIN)
    digest = record.get("weights_sha256") if record else None
    if digest and weights_sha256(adapter) not in (None, digest):
        return None, ""
    while record is not None and isinstance(record.get("origin_run"), str) and holder not in seen:
        seen.add(holder)
        holder, inside = Path(record["origin_run"]), str(record.get("adapter") or Files.ADAPTER)
        if kit_run_folder(holder / Files.ADAPTER) is not None:
            return holder, inside
        record = _json_record(holder / Files.ORIGIN)
    return None, ""


def origin_record(adapter: Path, run: Path) -> dict[str, str | None]:
    """What a run folder made for ``adapter`` (a checkpoint or an export of the run ``run``) records in its
    origin.json: the training run, the adapter of it the weights come from, and their sha256."""
    holder = adapter.parent.parent
    inside = (recorded_origin(holder, adapter)[1] if kit_run_folder(holder / Files.ADAPTER) is None
              else adapter.relative_to(holder).as_posix())
    return {"origin_run": str(run.resolve()), "adapter": inside or Files.ADAPTER,
            "weights_sha256": weights_sha256(adapter)}


def origin_name(adapter: Path) -> str | None:
    """The adapter as its training run names it: that run folder's name and the adapter's path in it (e.g.
    run-20260101-120000/export/adapter), also for an export of an export; None outside the kit's runs."""
    run = origin_run(adapter)
    if run is None:
        return None
    if kit_run_folder(adapter) is not None:
        return f"{run.name}/{adapter.name}"
    return f"{run.name}/{origin_record(adapter, run)['adapter']}"


def in_run_subfolder(adapter: Path) -> bool:
    """Whether ``adapter`` lies where a run of the kit keeps a checkpoint or an exported adapter."""
    parent = adapter.parent
    return ((parent.name == Files.CHECKPOINTS and adapter.name.startswith("checkpoint-"))
            or (parent.name.startswith(Files.EXPORT) and adapter.name == Files.ADAPTER))
