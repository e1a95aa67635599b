"""Datasets -> chat-formatted, tokenized training examples with the prompt masked out of the loss.

Pipeline: ``load_rows`` (hub or local file) -> a format turns each row into an ``Example``
(user prompt + target response) -> ``tokenize_examples`` renders it with the model's own chat
template and masks every prompt token to -100.

The data boundary: every row is checked as it is formatted (``format_rows``). A value that is not
text where text is expected (a number, list, object, boolean or null), a chat of the wrong shape, a
field longer than ``MAX_FIELD_CHARS``, an empty or corrupt file: each is refused with the file, the
row and the field (``data/my.jsonl row 17: field 'output' is a number (42), expected text.``).
Values from the data are shown through ``secrets.printable`` (control characters escaped).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import KIT_ROOT, DataSection, DatasetSpec, template_fields
from .. import leakage
from ..errors import DataError
from ..formats import (  # noqa: F401  (the formats and row checks are part of this module's API)
    CHAT_ROLES, DATASET_FORMATS, FORMAT_SHAPES, FORMATS, PUBMEDQA_PROMPT, Formatter, dataset_format, format_chat,
    format_instruction, format_medical_o1, format_multiple_choice, format_pubmedqa, mc_options)
from ..rows import (  # noqa: F401
    MAX_FIELD_CHARS, Example, _column, _field, _json_preview, _kind, _response, _text, _uid, pmid_of)
from ..secrets import printable

PUBMEDQA_TEST_FILE = KIT_ROOT / "data" / "pubmedqa" / "test_ground_truth.json"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
IGNORE_INDEX = -100


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


class Rows(list):
    """Records of a local file, with the line each starts on where the file has lines (JSONL, CSV)."""

    lines: list[int] | None = None
    names: list[str] | None = None  # per row, "file row N (line L)": rows of a folder of files
    files: list[str] | None = None  # the files of a folder that were read


# ---------------------------------------------------------------- sources


def looks_local(source: str) -> bool:
    """A source written as a path (./x, /x, ~/x) or a data file name (x.jsonl): never a hub id."""
    return source.startswith((".", "/", "~")) or source.lower().endswith(tuple(LOCAL_SUFFIXES))


def resolve_local(source: str) -> Path | None:
    """A local file or folder named by ``source`` (relative to the working dir or the kit), if any."""
    try:
        named = Path(source).expanduser()
        for path in ([named] if named.is_absolute() else [Path.cwd() / named, KIT_ROOT / named]):
            if path.exists():
                return path
    except (OSError, ValueError):  # a name the file system cannot hold (too long, a NUL byte)
        return None
    return None


def load_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    local = resolve_local(spec.source)
    if local is not None:
        _no_hub_options(spec, local)
        return _load_folder(local) if local.is_dir() else _load_local(local)
    if looks_local(spec.source):
        raise DataError(_not_found(spec.source))
    return _load_hub(spec)


def _not_found(source: str) -> str:
    """Why a local source is not there: a link that loops or points nowhere, or the folders it was looked for in
    (an absolute path in none; each folder named once)."""
    name = f"Dataset file '{printable(source)}'"
    try:
        named = Path(source).expanduser()
        places = [named] if named.is_absolute() else list(dict.fromkeys([Path.cwd() / named, KIT_ROOT / named]))
        for path in places:
            if path.is_symlink():
                try:
                    path.resolve(strict=True)
                except RuntimeError:  # Python 3.11 reports a loop so
                    loop = True
                except OSError as err:
                    loop = err.errno == errno.ELOOP
                else:
                    continue
                where = "" if named.is_absolute() else f" ({printable(str(path), 200)})"
                if loop:
                    return (f"{name}{where} is a symbolic link that loops back to itself: point it, or a link it "
                            "leads through, at a real file.")
                return (f"{name}{where} is a symbolic link to {printable(os.readlink(path), 200)}, which does not "
                        "exist: point it at a real file.")
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


def _load_local(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{printable(path.suffix)}'; use .json, .jsonl, .csv or "
                        ".parquet.")
    if not path.is_file():  # a device (/dev/zero, /dev/urandom), a pipe or a socket, perhaps behind a link
        raise DataError(f"Dataset file {path} is not a regular file"
                        + (f" (it links to {path.resolve()})" if path.is_symlink() else "") + ".")
    if path.stat().st_size == 0:
        raise DataError(f"Dataset file {path} is empty.")
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
    files = _data_files(folder)
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


def _data_files(folder: Path) -> list[Path]:
    """The data files of a folder; a folder of several types is refused rather than some of them skipped."""
    kinds: dict[str, list[Path]] = {}
    try:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in LOCAL_SUFFIXES \
                    or path.is_dir():
                continue
            kinds.setdefault(LOCAL_SUFFIXES[path.suffix.lower()], []).append(path)
    except OSError as err:
        raise DataError(f"Cannot read the data folder {folder}: {printable(err, 200)}.") from None
    if len(kinds) > 1:
        listed = "; ".join(f"{kind}: {printable(', '.join(str(p.relative_to(folder)) for p in paths[:3]), 200)}"
                           + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                           for kind, paths in sorted(kinds.items()))
        raise DataError(f"The data folder {folder} holds files of different types ({listed}); only one type "
                        "would be read. Keep one type in the folder, or list each file as its own dataset.")
    return [path for paths in kinds.values() for path in paths]


class _LongInt(str):
    """An integer of more digits than Python reads (4300): kept as its text to be named, then refused."""


def _parse_int(text: str) -> int | str:
    return _LongInt(text) if len(text) > 4000 else int(text)


def _long_int_field(value: Any, name: str = "") -> str | None:
    """The field (a.b[2]) of the first over-long integer in a parsed JSON value, if any."""
    if isinstance(value, _LongInt):
        return name or "the value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _long_int_field(item, f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}" if name else key)
        if found:
            return found
    return None


class _Twice(dict):
    """A JSON object that named a key more than once (json keeps the last value): `twice` is that key."""
    twice = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a dict as json builds it, marked when a key comes twice (refused once the row is known)."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    marked = _Twice(value)
    marked.twice = next(key for key, _ in pairs if key in seen or seen.add(key))
    return marked


def _twice_field(value: Any, name: str = "") -> str | None:
    """The key (a.b[2].key) a JSON object of this parsed value names twice, if any."""
    if isinstance(value, _Twice):
        return f"{name}.{value.twice}" if name else value.twice
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _twice_field(item, f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}" if name else key)
        if found:
            return found
    return None


def _refuse_long_ints(value: Any, where: str) -> None:
    found = _long_int_field(value)
    if found:
        raise DataError(f"{where}: field '{printable(found, 120)}' holds an integer too long to read (over 4000 "
                        "digits). Write it as a quoted string, or remove it.")
    twice = _twice_field(value)
    if twice:
        raise DataError(f"{where}: key '{printable(twice, 120)}' appears twice in one object (JSON would keep only "
                        "the last value). Keep one of them.")


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        payload = json.loads(path.read_bytes().decode("utf-8-sig"), parse_int=_parse_int,
                             object_pairs_hook=_pairs)
    except json.JSONDecodeError as err:
        hint = " It holds several JSON values: if it has one object per line, name it .jsonl." if \
            err.msg == "Extra data" else ""
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}).{hint}") from None
    if isinstance(payload, list):
        for number, row in enumerate(payload, start=1):
            _refuse_long_ints(row, f"{path} row {number}")
    else:
        _refuse_long_ints(payload, str(path))
    if isinstance(payload, dict) and payload and all(isinstance(v, dict) for v in payload.values()):
        # PubMedQA's original layout: {PMID: {QUESTION, CONTEXTS, ...}}
        return Rows({"pubid": key, **value} for key, value in payload.items())
    if isinstance(payload, list):
        return Rows(payload)
    if isinstance(payload, dict) and not payload:
        return Rows()
    raise DataError(f"{path}: expected a JSON list of records or a dict keyed by id, got {_kind(payload)}.")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows, lines = Rows(), []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_int=_parse_int, object_pairs_hook=_pairs)
            except ValueError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({printable(err, 120)}). Each line must be one "
                                "JSON object.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {_kind(row)}.")
            _refuse_long_ints(row, f"{path}:{number}")
            rows.append(row)
            lines.append(number)
    rows.lines = lines
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Every cell as text (CSV has no types: '42' stays '42'), with the line each record starts on."""
    rows, lines = Rows(), []
    csv.field_size_limit(MAX_FIELD_CHARS)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
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
            twice = sorted({name for name in named if named.count(name) > 1})
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
                    rows.append({name: cell for name, cell in zip(header, cells) if name != ""})
                    lines.append(start)
                start = reader.line_num + 1
        except csv.Error as err:
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



# ---------------------------------------------------------------- selection, held-out items, mixing

PUBMEDQA_DIR = KIT_ROOT / "data" / "pubmedqa"


def pubmedqa_test_ids() -> set[str]:
    """The 500 PMIDs of PubMedQA's official test split: never trained on."""
    return set(json.loads(PUBMEDQA_TEST_FILE.read_text()))


def pubmedqa_folds() -> list[list[str]]:
    return json.loads((PUBMEDQA_DIR / "pqal_split_pmids.json").read_text())["folds"]



def format_rows(spec: DatasetSpec, rows: list[dict[str, Any]]) -> list[Example]:
    """Every row checked and formatted; the first bad one is refused with the file, its row and the field."""
    formatter = FORMATS[spec.format]
    lines, names = getattr(rows, "lines", None), getattr(rows, "names", None)
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise DataError(f"expected a record (JSON object), got {_kind(row)}.")
            example = formatter(row, spec)
            if spec.prompt_template is not None:
                example = apply_template(example, spec.prompt_template)
        except DataError as err:
            raise DataError(f"{_row_name(spec, number, lines, names)}: {err}") from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DataError(
                f"{_row_name(spec, number, lines, names)} does not have the shape the {spec.format} format needs "
                f"({type(err).__name__}: {printable(err, 120)}). Expected: "
                f"{FORMAT_SHAPES.get(spec.format, 'see the README')}."
            ) from None
        example.row = number
        examples.append(example)
    return examples


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def apply_template(example: Example, template: str) -> Example:
    """The example with its prompt written by a dataset's prompt_template (placeholders checked by the config).
    {context} stays a placeholder of the example's own template, so that a long context is still the part
    shortened to fit max_seq_length; the fully rendered prompt is also given to the leakage guard."""
    import string

    values = example.fields
    keep_context = "context" in template_fields(template) and "context" in values
    parts, rendered = [], []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(_braces(literal))
        rendered.append(literal)
        if name is None:
            continue
        value = values.get(name, "")
        parts.append("{context}" if name == "context" and keep_context else _braces(value))
        rendered.append(value)
    full = "".join(rendered)
    example.joins = example.joins + (("prompt (data.datasets prompt_template)", full),)
    if keep_context:
        example.prompt, example.context, example.prompt_template = "", values["context"], "".join(parts)
    else:
        example.prompt, example.context, example.prompt_template = full, None, "{context}"
    return example


def system_prompt_of(data: DataSection, spec: DatasetSpec | None) -> str | None:
    """A dataset's own system prompt ('' for none), else data.system_prompt."""
    if spec is not None and spec.system_prompt is not None:
        return spec.system_prompt or None
    return data.system_prompt


def dataset_of_format(data: DataSection, fmt: str) -> DatasetSpec | None:
    """The first training dataset of a format: its prompt settings apply to evaluation items of that format."""
    return next((d for d in data.datasets if d.format == fmt and d.use_for == "train"), None)


def query_prompt(data: DataSection, question: str) -> tuple[str | None, str]:
    """(system prompt, user text) of a free question (the sample queries): the first training dataset's
    system prompt and prompt_template, its other placeholders empty."""
    spec = data.datasets[0]
    if spec.prompt_template is None:
        return system_prompt_of(data, spec), question
    example = apply_template(Example(prompt=question, response="", fields={"question": question}),
                             spec.prompt_template)
    user = example.prompt_template.format(context="") if example.context is not None else example.prompt
    return system_prompt_of(data, spec), user


def _row_name(spec: DatasetSpec, number: int, lines: list[int] | None, names: list[str] | None = None) -> str:
    if names and number <= len(names):
        return names[number - 1]
    line = lines[number - 1] if lines and number <= len(lines) else None
    return f"{printable(spec.source, 200)} row {number}" + (f" (line {line})" if line and line != number else "")


def build_examples(spec: DatasetSpec, rows: list[dict[str, Any]], seed: int) -> tuple[list[Example], dict]:
    """Format rows, hold out evaluation items, shuffle (seeded), cap and weight one dataset."""
    examples = format_rows(spec, rows)
    info: dict[str, Any] = {"rows": len(rows)}
    if getattr(rows, "files", None):
        info["files"] = rows.files
    if spec.format == "pubmedqa":
        held_out = pubmedqa_test_ids()
        kept = [ex for ex in examples if pmid_of(ex.uid) not in held_out]
        info["held_out_pubmedqa_test"] = len(examples) - len(kept)
        examples = kept
        if spec.cv_fold is not None:
            fold = set(pubmedqa_folds()[spec.cv_fold])
            for ex in examples:
                ex.role = "validation" if pmid_of(ex.uid) in fold else "train"
            info["cv_fold_validation"] = sum(ex.role == "validation" for ex in examples)
    if spec.use_for == "validation":
        for ex in examples:
            ex.role = "validation"
    first: list[Example] = []
    if spec.val_first_n is not None:  # by position, before any shuffle; never capped or weighted
        if spec.val_first_n >= len(examples):
            raise DataError(f"Dataset '{printable(spec.source, 200)}': val_first_n={spec.val_first_n} holds out every "
                            f"one of its {len(examples)} rows{' left' if spec.format == 'pubmedqa' else ''}; "
                            "nothing would be trained on. Lower val_first_n.")
        first, examples = examples[: spec.val_first_n], examples[spec.val_first_n :]
        for ex in first:
            ex.role = "validation"
        info["validation_first_n"] = len(first)
    rng = random.Random(seed)
    rng.shuffle(examples)
    if spec.max_samples is not None:
        examples = examples[: spec.max_samples]
    if spec.weight != 1.0:
        pool = len(examples)
        examples = _weighted(examples, spec.weight, rng)
        if pool and not examples:
            raise DataError(f"Dataset '{printable(spec.source, 200)}': weight {spec.weight:g} of its {pool} "
                            f"example{'s' if pool > 1 else ''} rounds to 0 draws, so nothing of it would be trained "
                            f"on. Give it a weight of at least {1 / pool:.4g} (one draw), or leave it out.")
    examples = first + examples
    info["used"] = len(examples)
    if not examples:
        raise DataError(f"Dataset '{printable(spec.source, 200)}' has no examples left after holding out evaluation "
                        "items.")
    return examples, info


def _weighted(examples: list[Example], weight: float, rng: random.Random) -> list[Example]:
    """weight 2.5 -> every example twice plus a random half of them once more."""
    whole, fraction = int(weight), weight - int(weight)
    extra = rng.sample(examples, int(round(fraction * len(examples))))
    return examples * whole + extra


@dataclass
class Collected:
    name: str
    spec: DatasetSpec
    examples: list[Example]
    info: dict[str, Any]


def collect(data: DataSection, seed: int, extra_eval: list[leakage.Item] | None = None,
            local_only: bool = False) -> list[Collected]:
    """Every training dataset formatted and selected, and the leakage guard passed (no model needed).

    ``extra_eval``: items of the benchmarks this run evaluates on, guarded like data.eval_sets.
    ``local_only`` (--dry-run): hub sources are not downloaded; local ones are checked row by row.
    """
    collected = []
    for index, spec in enumerate(data.datasets):
        if local_only and resolve_local(spec.source) is None and not looks_local(spec.source):
            continue
        examples, info = build_examples(spec, load_rows(spec), seed + index)
        collected.append(Collected(f"{index}:{spec.source}", spec, examples, info))
    system = [leakage.Item(leakage.CONFIG, None, data.system_prompt, (("data.system_prompt", data.system_prompt),))
              ] if data.system_prompt and data.system_prompt.strip() else []  # in every prompt: checked once
    system += [leakage.Item(leakage.CONFIG, None, spec.system_prompt,
                            ((f"data.datasets.{i}.system_prompt", spec.system_prompt),))
               for i, spec in enumerate(data.datasets) if spec.system_prompt and spec.system_prompt.strip()]
    guard = leakage.check(
        system + guard_items(collected),
        evaluation_items(data, local_only) + (extra_eval or []),
        data.allow_eval_overlap, data.near_duplicate_ngram, data.near_duplicate_threshold,
    )
    for c in collected:
        c.info["leakage_guard"] = guard
    return collected


def guard_items(collected: list[Collected]) -> list[leakage.Item]:
    """One guard item per training example (a weighted dataset repeats examples: each is checked once)."""
    seen: set[int] = set()
    items = []
    for c in collected:
        for ex in c.examples:
            if id(ex) not in seen:
                seen.add(id(ex))
                items.append(leakage.Item(c.name, ex.uid, ex.question, ex.guard_texts(), ex.row))
    return items


def evaluation_items(data: DataSection, local_only: bool = False) -> list[leakage.Item]:
    """PubMedQA's official test questions, plus every set listed in data.eval_sets (local ones only with
    ``local_only``)."""
    rows = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    items = []
    for pmid in sorted(pubmedqa_test_ids()):  # the question, and its abstract and long answer (their text)
        question, contexts = rows[pmid]["QUESTION"], rows[pmid]["CONTEXTS"]
        items.append(leakage.Item("pubmedqa-test", pmid, question))
        items += [leakage.Item("pubmedqa-test", pmid, text, part=f"abstract paragraph {i + 1}", of=question)
                  for i, text in enumerate(contexts)]
        items.append(leakage.Item("pubmedqa-test", pmid, "\n".join(contexts), part="abstract", of=question))
        items.append(leakage.Item("pubmedqa-test", pmid, rows[pmid]["LONG_ANSWER"], part="long answer", of=question))
    for spec in data.eval_sets:
        if local_only and resolve_local(spec.source) is None and not looks_local(spec.source):
            continue
        items += [leakage.Item(spec.source, ex.uid, ex.question) for ex in format_rows(spec, load_rows(spec))]
    return items


def padding_report(lengths: list[int], micro_batch: int, max_len: int, seed: int) -> dict[str, float]:
    """Share of each batch that is padding: random batches, length-grouped batches, packed rows."""
    if not lengths:
        return {}
    shuffled = list(lengths)
    random.Random(seed).shuffle(shuffled)

    def padded(order: list[int]) -> float:
        batches = [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]
        slots = sum(max(b) * len(b) for b in batches)
        return round(1 - sum(order) / slots, 4)

    bins: list[int] = []  # first-fit decreasing, as TRL's "bfd" packing does
    for length in sorted(lengths, reverse=True):
        for i, used in enumerate(bins):
            if used + length <= max_len:
                bins[i] += length
                break
        else:
            bins.append(length)
    return {
        "random_batches": padded(shuffled),
        "length_grouped_batches": padded(sorted(shuffled, reverse=True)),
        "packed_rows": round(1 - sum(lengths) / (len(bins) * max_len), 4),
        "packed_rows_count": len(bins),
    }


# ---------------------------------------------------------------- chat rendering + tokenization

_PROBE = "MEDQLORA-PROBE-RESPONSE"


def render_prompt(tokenizer: Any, system_prompt: str | None, user: str) -> str:
    """The chat-templated prompt up to and including the assistant header."""
    return tokenizer.apply_chat_template(
        _messages(tokenizer, system_prompt, user), tokenize=False, add_generation_prompt=True
    )


def _messages(tokenizer: Any, system_prompt: str | None, user: str) -> list[dict[str, str]]:
    if not system_prompt:
        return [{"role": "user", "content": user}]
    with_system = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    try:
        tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
        return with_system
    except Exception:  # templates without a system role (e.g. Mistral's) raise a TemplateError
        return [{"role": "user", "content": f"{system_prompt}\n\n{user}"}]


def turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. '<|im_end|>\\n', '<|eot_id|>')."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _PROBE not in text:
        return tokenizer.eos_token or ""
    suffix = text.split(_PROBE, 1)[1]
    return suffix if suffix.strip() else (tokenizer.eos_token or "")


def chat_turn_messages(tokenizer: Any, system_prompt: str | None,
                       turns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """A chat row as messages: its own system turn, else ``system_prompt``; folded into the first user turn for
    templates without a system role (as single-turn prompts are)."""
    messages = [{"role": role, "content": content} for role, content in turns]
    if messages[0]["role"] != "system" and system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    if messages[0]["role"] != "system":
        return messages
    try:
        tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
        return messages
    except Exception:  # templates without a system role (e.g. Mistral's) raise a TemplateError
        system, first, rest = messages[0], messages[1], messages[2:]
        return [{"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def _chat_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """The conversation's text in pieces, (text, learned): each assistant reply with its turn end is learned,
    everything between is not. None when the template does not render a conversation as the concatenation of
    its prefixes (one that rewrites earlier replies, say): then only the last reply is learned."""
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        reply = whole[len(prefix):]  # the reply as the template writes it, with its turn end
        if not prefix.startswith(rendered) or not whole.startswith(prefix) or message["content"] not in reply:
            return None
        pieces += [(prefix[len(rendered):], False), (reply, True)]
        rendered = prefix + reply
    return pieces


def _tokenize_chat(example: Example, tokenizer: Any, system_prompt: str | None, max_len: int, too_long: str,
                   end: str) -> tuple[dict[str, list[int]] | None, str]:
    """Every assistant turn learned, every other token masked; cut at max_len (or dropped) when longer."""
    messages = chat_turn_messages(tokenizer, system_prompt, example.turns)
    pieces = _chat_pieces(tokenizer, messages)
    outcome = "fits"
    if pieces is None:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        pieces, outcome = [(prompt, False), (messages[-1]["content"] + end, True)], "last_turn_only"
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in pieces:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if learned else [IGNORE_INDEX] * len(part)
    if len(ids) > max_len:
        if too_long == "drop" or all(label == IGNORE_INDEX for label in labels[:max_len]):
            return None, "dropped"
        ids, labels, outcome = ids[:max_len], labels[:max_len], "response_truncated"
    return {"input_ids": ids, "labels": labels}, outcome


def tokenize_example(
    example: Example, tokenizer: Any, system_prompt: str | None, max_len: int, too_long: str, end: str
) -> tuple[dict[str, list[int]] | None, str]:
    """Token ids and labels (prompt masked) for one example, and what was done to fit max_len."""
    if example.turns:
        return _tokenize_chat(example, tokenizer, system_prompt, max_len, too_long, end)
    response_ids = tokenizer(example.response + end, add_special_tokens=False)["input_ids"]
    context = example.context
    outcome = "fits"
    for _ in range(4):
        user = example.prompt_template.format(context=context) if context is not None else example.prompt
        prompt_ids = tokenizer(render_prompt(tokenizer, system_prompt, user), add_special_tokens=False)["input_ids"]
        overflow = len(prompt_ids) + len(response_ids) - max_len
        if overflow <= 0:
            break
        if too_long == "drop":
            return None, "dropped"
        if not context:
            break
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        keep = max(0, len(context_ids) - overflow - 8)
        context = tokenizer.decode(context_ids[:keep]) + " ..." if keep else ""
        outcome = "context_truncated"
    else:
        overflow = len(prompt_ids) + len(response_ids) - max_len
    if overflow > 0:
        if len(prompt_ids) >= max_len - 8:
            return None, "dropped"
        response_ids = response_ids[: max_len - len(prompt_ids)]
        outcome = "response_truncated"
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }, outcome


def length_stats(lengths: list[int], max_len: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "over_max_seq_length": sum(length > max_len for length in ordered),
    }


def tokenize_collected(
    collected: list[Collected], data: DataSection, tokenizer: Any, max_len: int, seed: int, micro_batch: int = 1
) -> PreparedData:
    """Render, tokenize and fit every example; split off validation items."""
    end = turn_end(tokenizer)
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for c in collected:
        raw_lengths: list[int] = []
        outcomes: dict[str, int] = {}
        system_prompt = system_prompt_of(data, c.spec)
        for example in c.examples:
            full, _ = tokenize_example(example, tokenizer, system_prompt, 10**9, "truncate", end)
            raw_lengths.append(len(full["input_ids"]))
            tokenized, outcome = tokenize_example(example, tokenizer, system_prompt, max_len, data.too_long, end)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if tokenized is not None:
                records.append({**tokenized, "source": c.name, "uid": example.uid, "role": example.role,
                                "question_hash": leakage.question_hash(example.question), "example": example,
                                "format": c.spec.format, "cot_style": c.spec.cot_style})
        stats[c.name] = {**c.info, "tokens_before_fitting": length_stats(raw_lengths, max_len), "fitting": outcomes}
    if not records:
        _refuse_nothing_fits(data, max_len, stats)
    random.Random(seed).shuffle(records)
    reserved = [r for r in records if r["role"] == "validation"]
    pool = [r for r in records if r["role"] != "validation"]
    n_val = int(round(len(pool) * data.val_ratio))
    validation, train = reserved + pool[:n_val], pool[n_val:]
    if not train:
        refuse_no_training_examples(data, max_len, collected)
    cut = sum(stats[c.name]["fitting"].get("response_truncated", 0) for c in collected)
    warnings = []
    if cut:
        warnings.append(f"{cut} of {sum(len(c.examples) for c in collected)} answers were cut to fit "
                        f"model.max_seq_length={max_len} (data.too_long: truncate): the model learns them "
                        "unfinished. Raise model.max_seq_length, or set data.too_long: drop to leave those examples "
                        "out.")
        logging.getLogger("medqlora").warning(warnings[-1])
    dropped = sum(stats[c.name]["fitting"].get("dropped", 0) for c in collected)
    if dropped and data.too_long == "truncate":
        warnings.append(f"{dropped} of {sum(len(c.examples) for c in collected)} examples were left out: the prompt "
                        f"alone (with the chat template and system prompt) does not fit model.max_seq_length="
                        f"{max_len}, so no answer could be kept even cut (data.too_long: truncate shortens only "
                        "answers and pubmedqa contexts). Raise model.max_seq_length, or shorten those prompts.")
        logging.getLogger("medqlora").warning(warnings[-1])
    stats["total"] = {
        "answers_truncated": cut,
        "prompts_too_long": dropped if data.too_long == "truncate" else 0,
        "warnings": warnings,
        "train": len(train),
        "validation": len(validation),
        "train_tokens": sum(len(r["input_ids"]) for r in train),
        "padding_fraction": padding_report([len(r["input_ids"]) for r in train], micro_batch, max_len, seed),
    }
    fingerprints = {c.name: fingerprint(c.spec) for c in collected}
    return PreparedData(train=train, validation=validation, stats=stats, fingerprints=fingerprints)


def _refuse_nothing_fits(data: DataSection, max_len: int, stats: dict[str, Any]) -> None:
    """No example fits max_len: with drop, truncating would keep some; with truncate, every prompt alone is
    too long (the answer cannot be cut to make room), so only a longer max_seq_length helps."""
    shortest = min((s["tokens_before_fitting"].get("min", 0) for s in stats.values()
                    if s["tokens_before_fitting"].get("count")), default=0)
    if data.too_long == "drop":
        raise DataError(f"No training examples fit model.max_seq_length={max_len} (the shortest is {shortest} "
                        "tokens). Raise it, or set data.too_long: truncate.")
    raise DataError(f"No training example fits model.max_seq_length={max_len}, even cut (data.too_long: truncate): "
                    f"each prompt alone, with the chat template and system prompt, leaves no room for an answer (the "
                    f"shortest example is {shortest} tokens). Raise model.max_seq_length.")


def refuse_no_training_examples(data: DataSection, max_len: int, collected: list[Collected]) -> None:
    """Nothing left to train on once validation items are set apart (val_ratio < 0.5 always leaves some, so the
    datasets for validation are the cause)."""
    if all(c.spec.use_for == "validation" for c in collected):
        raise DataError("No training examples: every dataset has use_for: validation. Give at least one dataset "
                        "use_for: train (the default).")
    raise DataError(f"No training examples: the datasets with use_for: train have none that fit model.max_seq_length="
                    f"{max_len} and are not held out for validation (cv_fold). Check those datasets, or raise "
                    "model.max_seq_length.")


def prepare(data: DataSection, tokenizer: Any, max_len: int, seed: int, micro_batch: int = 1) -> PreparedData:
    return tokenize_collected(collect(data, seed), data, tokenizer, max_len, seed, micro_batch)


def count_rows(data: DataSection, seed: int, extra_eval: list[leakage.Item] | None = None,
               collected: list[Collected] | None = None) -> dict[str, Any]:
    """Dataset sizes for --dry-run: local sources are read and every row checked as a run would (the leakage
    guard included); a path that does not exist is refused; hub sources are not downloaded."""
    if collected is None:
        collected = collect(data, seed, extra_eval, local_only=True)
    checked = {c.name: c.info for c in collected}
    sizes: dict[str, Any] = {}
    for index, spec in enumerate(data.datasets):
        name = f"{index}:{spec.source}"
        sizes[name] = checked.get(name, {"rows": "unknown until downloaded", "used": spec.max_samples})
    return sizes
