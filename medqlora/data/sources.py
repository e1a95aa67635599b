"""Where rows come from: a hub dataset, or a local .json, .jsonl, .csv or .parquet file or folder of them
(``load_rows``), read with every file-level check (links, sizes, encodings, duplicate keys, integers beyond
what JSON carries, a corrupt file) and fingerprinted for the manifest (``fingerprint``)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import json_text
from ..config import KIT_ROOT, DatasetSpec
from ..environment import check_datasets_cache
from ..errors import DataError
from ..rows import MAX_FIELD_CHARS, _kind
from ..secrets import printable
from ..shown_paths import broken_link, quoted_path
from .json_layouts import refuse_pandas_layouts
from .json_values import pairs_once, parse_float, parse_int, refuse_unreadable_values

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class Rows(list):
    """Records of a local file, with the line each starts on where the file has lines (JSONL, CSV)."""

    lines: list[int] | None = None
    names: list[str] | None = None  # per row, "file row N (line L)": rows of a folder of files
    files: list[str] | None = None  # the files of a folder that were read



def looks_local(source: str) -> bool:
    """A source written as a path (./x, /x, ~/x) or a data file name (x.jsonl): never a hub id."""
    return source.startswith((".", "/", "~")) or source.lower().endswith(tuple(LOCAL_SUFFIXES))


def resolve_local(source: str) -> Path | None:
    """A local file or folder named by ``source`` (relative to the working dir or the kit), if any."""
    try:
        named = Path(source).expanduser()
        for path in ([named] if named.is_absolute() else [Path.cwd() / named, KIT_ROOT / named]):
            if path.exists():
                if path != named:
                    _note_two_files(source, path, KIT_ROOT / named)
                return path
    except (OSError, ValueError):  # a name the file system cannot hold (too long, a NUL byte)
        return None
    return None


_NOTED: set[str] = set()


def _is_kits_own(found: Path, kits: Path) -> bool:
    """Whether the working folder's file is the kit's own file of that name (the kit run from its own folder)."""
    return kits.exists() and os.path.samefile(found, kits)


def _note_two_files(source: str, found: Path, kits: Path) -> None:
    """A relative source found in the working folder that also names another file shipped with the kit (a run's
    config.yaml names the kit's files relative, for any machine): which one is read is said, once."""
    if source in _NOTED or found == kits or source.startswith("./") or not kits.exists() or _is_kits_own(found, kits):
        return
    _NOTED.add(source)
    from ..messages import say

    say(f"warning: data source {quoted_path(source)} names a file in the working folder ({printable(found)}) and "
        f"another one shipped with the kit ({printable(kits)}): the working folder's is read. To read the kit's, "
        f"give its full path; to say the working folder's is meant, write ./{printable(source)}")


def anchored(source: str) -> str:
    """A local source named relative to the working folder, as its absolute path: a run's config.yaml then names the
    data the run trained on from any folder (relative, it would name another folder's file, or the kit's shipped one
    of the same name). Hub ids, absolute paths and the kit's own files stay as written."""
    try:
        named = Path(source).expanduser()
        here = Path.cwd() / named
        if named.is_absolute() or not here.exists():
            return source
        if _is_kits_own(here, KIT_ROOT / named):  # run from the kit's folder: its own file, portable
            return source
    except (OSError, ValueError):
        return source
    return os.path.abspath(named)


def with_anchored_sources(cfg: Any) -> Any:
    """The config with its local data sources (data.datasets, data.eval_sets) ``anchored``."""
    data = cfg.data
    datasets = [spec.model_copy(update={"source": anchored(spec.source)}) for spec in data.datasets]
    eval_sets = [spec.model_copy(update={"source": anchored(spec.source)}) for spec in data.eval_sets]
    return cfg.model_copy(update={"data": data.model_copy(update={"datasets": datasets, "eval_sets": eval_sets})})


def load_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    local = resolve_local(spec.source)
    if local is not None:
        _no_hub_options(spec, local)
        return _load_folder(local) if local.is_dir() else _load_local(local)
    if looks_local(spec.source):
        raise DataError(_not_found(spec.source))
    check_hub_dataset_id(spec.source)
    return _load_hub(spec)


# A hub dataset id: a name, or owner/name, of letters, digits, '-', '_' and '.'.
HUB_DATASET_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def check_hub_dataset_id(source: str) -> None:
    """A source that names no local file or folder is read as a hub dataset id: one that cannot be one (a third
    part, a revision, a URL) is a mistyped path or id, refused before anything is downloaded (and at --dry-run);
    so is a datasets cache it cannot be kept in."""
    if HUB_DATASET_ID.match(source):
        check_datasets_cache(f"The hub dataset '{printable(source, 200)}'")
        return
    folders = " and ".join(dict.fromkeys([str(Path.cwd()), str(KIT_ROOT)]))
    revision = " (a revision such as @main cannot be pinned: give the id alone)" if "@" in source else ""
    raise DataError(f"Dataset {quoted_path(source, 200)} is neither a local file or folder (looked in {folders}) "
                    f"nor a hub dataset id (name or owner/name){revision}. A local path: check it, or write it "
                    "from ./ or / ; a hub dataset: its id, with subset: and split: choosing a part of it.")


_REMOTE_ADDRESS = re.compile(r"^(https?|s3|gs|gcs|az|abfss?|hf|ftp|sftp)://", re.IGNORECASE)


def _not_found(source: str) -> str:
    """Why a local source is not there: a link that loops or points nowhere, or the folders it was looked for in
    (an absolute path in none; each folder named once)."""
    name = f"Dataset file {quoted_path(source, 200, links=False)}"
    if source.lower().startswith("file://"):  # a browser's or a notebook's address of a local file
        plain = unquote(source[len("file://"):])
        return (f"{name}: a file:// address is not read; give the file's path itself: "
                f"source: {printable(plain, 200)}.")
    if match := _REMOTE_ADDRESS.match(source):  # a web or cloud address: the kit reads local files and hub ids
        return (f"{name}: {printable(match[1].lower(), 20)}:// addresses are not read; download the file first (for "
                "example with curl, wget or your cloud's command line) and give its path as source, or give a hub "
                "dataset id (owner/name).")
    if any(char in Path(source).name for char in "*?["):
        return (f"{name} not found: wildcards are not expanded. Name each file as a dataset of its own, or the folder "
                "that holds them (a folder's data files are read whole).")
    try:
        named = Path(source).expanduser()
        places = [named] if named.is_absolute() else list(dict.fromkeys([Path.cwd() / named, KIT_ROOT / named]))
        for path in places:
            broken = broken_link(str(path), "file")
            if broken:
                where = "" if named.is_absolute() else f" ({printable(str(path), 200)})"
                return f"{name}{where} is {broken[0]}."
    except (OSError, ValueError):
        return f"{name} not found."
    if named.is_absolute():
        return f"{name} not found."
    folders = list(dict.fromkeys([str(Path.cwd()), str(KIT_ROOT)]))
    return f"{name} not found (looked in {' and '.join(folders)})."


def _no_hub_options(spec: DatasetSpec, local: Path) -> None:
    """subset and split choose a part of a hub dataset; a local file or folder is read whole, so they would be
    ignored: refuse them rather than read something else than asked (split: train, all a training file holds,
    is no contradiction)."""
    given = [f"{key}: {printable(value, 80)}" for key, value in (("subset", spec.subset), ("split", spec.split))
             if value is not None and (key == "subset" or value != "train")]
    if given:
        raise DataError(f"Dataset '{printable(spec.source, 200)}' is a local {'folder' if local.is_dir() else 'file'}, "
                        f"read whole: {' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to hub datasets "
                        "only. Remove "
                        f"{'them' if len(given) > 1 else 'it'}, or point 'source' at the file that holds the part "
                        "you want.")


# compressed files and the command that unpacks each
_UNPACK = {".gz": "gunzip", ".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd", ".zip": "unzip"}


def _load_local(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        held = "the file it holds" if suffix == ".zip" else printable(path.with_suffix("").name)
        hint = (f" It is compressed: decompress it first ({_UNPACK[suffix]} {printable(path.name)}) and point 'source' "
                f"at {held}." if suffix in _UNPACK else "")
        raise DataError(f"{path}: unsupported file type '{printable(path.suffix)}'; use .json, .jsonl, .csv or "
                        f".parquet.{hint}")
    if not path.is_file():  # a device (/dev/zero, /dev/urandom), a pipe or a socket, perhaps behind a link
        raise DataError(f"Dataset file {path} is not a regular file"
                        + (f" (it links to {path.resolve()})" if path.is_symlink() else "") + ".")
    if path.stat().st_size == 0:
        raise DataError(f"Dataset file {path} is empty.")
    if suffix != ".parquet" and path.stat().st_size > SNIFF_BYTES:  # a small file's own reading names the line
        _refuse_binary(path, suffix)
    try:
        if suffix == ".jsonl":
            rows = _read_jsonl(path)
        elif suffix == ".json":
            rows = _read_json(path)
        elif suffix == ".csv":
            rows = _read_csv(path)
        else:
            rows = _read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}). Is it really a {suffix} file? Save it as "
                        "UTF-8.") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read (thousands of levels of lists or objects).") from None
    except MemoryError:
        raise DataError(f"{path}: too large to read into memory.") from None
    if not rows:
        raise DataError(f"Dataset file {path} has no records.")
    return rows


def _load_folder(folder: Path) -> list[dict[str, Any]]:
    """Every data file of a folder (sub-folders included, hidden ones skipped), each read as a file is: nothing
    is chosen or dropped by its name. Each row is named by its file."""
    files = data_files(folder)
    if not files:
        raise DataError(f"The data folder {folder} holds no .json, .jsonl, .csv or .parquet file.")
    rows, names = Rows(), []
    for path in files:
        part = _load_local(path)
        lines = getattr(part, "lines", None)
        rows.extend(part)
        names += [f"{printable(path, 200)} row {n}" + (f" (line {lines[n - 1]})" if lines and lines[n - 1] != n else "")
                  for n in range(1, len(part) + 1)]
    rows.names = names
    rows.files = [str(p.relative_to(folder)) for p in files]
    return rows


# A held-out split's name, as a word of a file or folder name (test.jsonl, medqa_test.jsonl, validation-00000-of-00001,
# dev/, holdout, hold_out, held-out, valSet, eval2): the family of words, each bounded by anything but a letter
_HELD_OUT_WORD = re.compile(r"(?<![a-z])(?:test(?:ing)?|val(?:id|idation)?|dev|eval(?:uation)?|h[eo]ld[^a-z0-9]*out)"
                            r"(?:s|sets?|splits?)?(?![a-z])")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def held_out_name(name: str) -> bool:
    """Whether a file or folder name (without its suffix) names a held-out split by one of its words."""
    return bool(_HELD_OUT_WORD.search(_CAMEL.sub(" ", name).lower()))


def refuse_held_out_files(folder: Path, dataset: str) -> None:
    """A training folder is read whole, so files named as a held-out split beside the training files (a folder in
    the Hub's layout: train.jsonl and test.jsonl) would be trained on: refused, naming them."""
    held_out = [path.relative_to(folder) for path in data_files(folder)
                if any(map(held_out_name, path.relative_to(folder).with_suffix("").parts))]
    if held_out:
        shown = ", ".join(printable(str(path), 120) for path in held_out[:3]) + (" ..." if len(held_out) > 3 else "")
        raise DataError(f"{dataset}: the data folder {printable(folder, 200)} holds files named as a held-out "
                        f"split ({shown}), and a folder is read whole, so they would be trained on. Point the source "
                        "at the training file itself (e.g. its train.jsonl), or move the held-out files out of the "
                        "folder.")


def data_files(folder: Path) -> list[Path]:
    """The data files of a folder; a folder of several types is refused rather than some of them skipped."""
    kinds: dict[str, list[Path]] = {}
    linked: list[Path] = []
    try:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.is_dir() and path.is_symlink():
                linked.append(relative)
            if path.suffix.lower() not in LOCAL_SUFFIXES or path.is_dir():
                continue
            kinds.setdefault(LOCAL_SUFFIXES[path.suffix.lower()], []).append(path)
    except OSError as err:
        raise DataError(f"Cannot read the data folder {folder}: {printable(err, 200)}.") from None
    if linked:
        _refuse_linked_folders(folder, linked)
    if len(kinds) > 1:
        listed = "; ".join(f"{kind}: {printable(', '.join(str(p.relative_to(folder)) for p in paths[:3]), 200)}"
                           + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                           for kind, paths in sorted(kinds.items()))
        raise DataError(f"The data folder {folder} holds files of different types ({listed}); only one type "
                        "would be read. Keep one type in the folder, or list each file as its own dataset.")
    return [path for paths in kinds.values() for path in paths]


def _refuse_linked_folders(folder: Path, linked: list[Path]) -> None:
    """A folder read whole does not go into the folders linked inside it (a link may lead anywhere, or back to the
    folder itself): rather than leave their files out without a word, each is named, with how to include it."""
    shown = ", ".join(printable(str(path), 120) for path in linked[:3]) + (" ..." if len(linked) > 3 else "")
    first = folder / linked[0]
    raise DataError(f"The data folder {printable(folder, 200)} holds linked folders ({shown}): a folder is read "
                    "whole, but not through the links in it, so their files would be left out. List each linked "
                    f"folder as a dataset of its own (data.datasets: - source: {printable(first, 200)}), or copy "
                    "its files into the folder.")


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        payload = json_text.loads(path.read_bytes().decode("utf-8-sig"), parse_int=parse_int, parse_float=parse_float,
                             object_pairs_hook=pairs_once)
    except json.JSONDecodeError as err:
        hint = " It holds several JSON values: if it has one object per line, name it .jsonl." if \
            err.msg == "Extra data" else ""
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}).{hint}") from None
    if isinstance(payload, list):
        for number, row in enumerate(payload, start=1):
            refuse_unreadable_values(row, f"{path} row {number}")
    else:
        refuse_unreadable_values(payload, str(path))
    refuse_pandas_layouts(path, payload)
    if isinstance(payload, dict) and payload and all(isinstance(v, dict) for v in payload.values()):
        # PubMedQA's original layout: {PMID: {QUESTION, CONTEXTS, ...}}
        return Rows({"pubid": key, **value} for key, value in payload.items())
    if isinstance(payload, list):
        return Rows(payload)
    if isinstance(payload, dict) and not payload:
        return Rows()
    _refuse_wrapped_records(path, payload)
    raise DataError(f"{path}: expected a JSON list of records or a dict keyed by id, got {_kind(payload)}.")


def _refuse_wrapped_records(path: Path, payload: Any) -> None:
    """An object that holds the records as a list under one key (the hub's {"data": [...]}): say which key."""
    if not isinstance(payload, dict):
        return
    key = next((k for k, v in payload.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)),
               None)
    if key is None:
        return
    name = printable(key, 60)
    raise DataError(f"{path}: the records are a list under the key '{name}' ({len(payload[key])} records), but the "
                    "kit reads a JSON file whose top level is the list of records itself (or a dict keyed by id). "
                    f"Save that list on its own, e.g. jq '.[\"{name}\"]' {path.name} > rows.json, or write the "
                    "records one per line as .jsonl.")


SNIFF_BYTES = 1 << 16  # the start of a text data file, read before the whole of it
LINE_LIMIT = 1 << 28  # characters of one JSON Lines record (256 Mi; a field holds 1 Mi at most)


def _refuse_binary(path: Path, suffix: str) -> None:
    """A large text data file (.json, .jsonl, .csv) whose start holds a NUL byte is no text: a binary file, or zeros
    (a sparse or preallocated file, a copy cut short), which would be read whole, as one line, before a message."""
    with path.open("rb") as handle:
        start = handle.read(SNIFF_BYTES)
    at = start.find(b"\x00")
    if at < 0:
        return
    utf16 = start[:2] in (b"\xff\xfe", b"\xfe\xff")
    raise DataError(f"{path}: not text: it holds a NUL byte at byte {at} ("
                    + ("UTF-16 text" if utf16 else "a binary file, or zeros left by a copy cut short or a file "
                       "made to size") + f"). Is it really a {suffix} file? Save it as UTF-8 text.")


def _lines(handle: Any, path: Path) -> Any:
    """The lines of a JSON Lines file, each at most LINE_LIMIT characters (read no further than that)."""
    number = 0
    while line := handle.readline(LINE_LIMIT + 1):
        number += 1
        if len(line) > LINE_LIMIT:
            raise DataError(f"{path}:{number}: a line of more than {LINE_LIMIT:,} characters without a line break: "
                            "no JSON Lines record is that long. Is it really a .jsonl file (one JSON object a "
                            "line)?")
        yield number, line


DOS_END_OF_FILE = "\x1a"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows, lines = Rows(), []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in _lines(handle, path):
            if not line.strip() or line.strip() == DOS_END_OF_FILE:  # Ctrl-Z: where DOS tools end a text file
                continue
            if not rows and line.lstrip().startswith("["):
                _refuse_json_array(path)
            try:
                row = json_text.loads(line, parse_int=parse_int, parse_float=parse_float, object_pairs_hook=pairs_once)
            except ValueError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({printable(err, 120)}). Each line must be one "
                                "JSON object.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {_kind(row)}.")
            refuse_unreadable_values(row, f"{path}:{number}")
            rows.append(row)
            lines.append(number)
    rows.lines = lines
    return rows


def _refuse_json_array(path: Path) -> None:
    """A .jsonl file whose content is one JSON array of records (on one line or pretty-printed): JSON, not JSON
    Lines (an array of other values keeps the line's own message). Refused as a .json file holding JSON lines is
    (name it .jsonl), the other way round."""
    try:
        payload = json_text.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError:
        return  # not one JSON document: the line-by-line reading says where it goes wrong
    if isinstance(payload, list) and payload and all(isinstance(item, dict) for item in payload):
        raise DataError(f"{path}: the file is one JSON array of {len(payload):,} records, not JSON Lines (one "
                        "object a line, which a .jsonl file holds). Name it .json (the kit reads a .json file "
                        "holding a list of records), or write one object per line.")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Every cell as text (CSV has no types: '42' stays '42'), with the line each record starts on."""
    rows, lines = Rows(), []
    csv.field_size_limit(MAX_FIELD_CHARS)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        start = 1  # the line the record being read starts on
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                header = next(reader, None)
            if header is None:
                return rows
            if any("\x00" in cell for cell in header):
                raise DataError(f"{path}:{reader.line_num}: contains a NUL byte: is it a binary file rather than CSV?")
            if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
                mark = ";" if header[0].count(";") >= header[0].count("\t") else "\t"
                what = "semicolons" if mark == ";" else "tabs"
                raise DataError(f"{path}:{reader.line_num}: the header is one column, '{printable(header[0], 120)}', "
                                f"with {what} in it: the file looks delimited by {what}, not by commas. A .csv data "
                                "file must be comma-separated: save it with commas (quoting cells that contain "
                                "commas), or as .jsonl.")
            named = [name for name in header if name != ""]
            twice = sorted(name for name, count in Counter(named).items() if count > 1)  # linear: 200,000 columns
            if twice:
                raise DataError(f"{path}:{reader.line_num}: the header names column {printable(twice[0])!r} twice.")
            start = reader.line_num + 1
            for cells in reader:
                if any("\x00" in cell for cell in cells):
                    raise DataError(f"{path}:{start}: contains a NUL byte: is it a binary file rather than CSV?")
                if cells and any(cell != "" for cell in cells):
                    if len(cells) != len(header):
                        raise DataError(f"{path}:{start}: {len(cells)} cell{'s' if len(cells) > 1 else ''}, but the "
                                        f"header names {len(header)} column{'s' if len(header) > 1 else ''}. Quote cells that contain commas or line "
                                        "breaks.")
                    if [cell.strip() for cell in cells] == [name.strip() for name in header]:
                        raise DataError(f"{path}:{start}: this line repeats the header ({printable(','.join(cells), 120)}"
                                        "): two CSV files joined into one? Remove the line (it would be trained on as "
                                        "a row whose text is the column names).")
                    rows.append({name: cell for name, cell in zip(header, cells) if name != ""})
                    lines.append(start)
                start = reader.line_num + 1
        except csv.Error as err:
            if "unexpected end of data" in str(err):  # the reader met the file's end inside a quoted cell
                raise DataError(f"{path}:{start}: a quoted cell opened in the record on this line is never closed (the "
                                "file ends inside it): close the quote, or remove it (a cell may hold \" only "
                                "doubled, \"\", inside quotes).") from None
            too_long = "larger than field limit" in str(err)
            what = (f"a cell longer than {MAX_FIELD_CHARS:,} characters (the most one text field may hold)"
                    if too_long else f"not valid CSV ({printable(err, 120)})")
            raise DataError(f"{path}:{reader.line_num}: {what}.") from None
    rows.lines = lines
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "not a Parquet file we can read"
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {printable(err, 160)}). "
                        "Is it truncated, or another format with a .parquet name?") from None
    return Rows(table.to_pylist())


def _load_hub(spec: DatasetSpec) -> list[dict[str, Any]]:
    return _datasets_load(spec.source, spec.subset, spec.split or "train",
                          where=f"hub dataset '{printable(spec.source)}'")


def _datasets_load(name: str, subset: str | None, split: str, where: str, **kwargs: Any) -> list:
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset, split=split, **kwargs)
    except Exception as err:  # datasets raises many types; all mean "cannot load this source"
        raise DataError(
            f"Cannot load {where} (subset={subset!r}, split={split!r}): {type(err).__name__}: {printable(err, 300)}. "
            "Offline? Download it once, or point 'source' at a local .json/.jsonl/.csv/.parquet file."
        ) from None
    return Rows(loaded.to_list())


def fingerprint(spec: DatasetSpec) -> str:
    local = resolve_local(spec.source)
    if local is None or local.is_dir():
        return f"hub:{spec.source}:{spec.subset}:{spec.split or 'train'}"
    digest = hashlib.sha256()
    with local.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()



