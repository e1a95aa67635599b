"""The datasets of a config taken together: no rows listed twice by mistake, and no data folder that holds the
output folder (whose runs the next run would read as data)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from ..config import DataSection, DatasetSpec
from ..errors import DataError
from ..secrets import printable
from .sources import data_files, resolve_local

# what only changes how many of a dataset's rows are drawn: two entries alike in everything else read the same rows
_AMOUNT_FIELDS = {"source", "max_samples", "weight"}


def _identity(spec: DatasetSpec) -> str:
    """The file or folder a source names (however it is written), or the hub id."""
    local = resolve_local(spec.source)
    return str(local.resolve()) if local is not None else spec.source


def refuse_repeated_datasets(data: DataSection) -> None:
    """Two training entries of data.datasets that read the same rows the same way (the same source, format and
    options): every row would be trained twice without a word. Oversampling is data.datasets[].weight's work."""
    seen: dict[tuple[str, str], int] = {}
    for index, spec in enumerate(data.datasets):
        if spec.use_for != "train":
            continue
        options = json.dumps(spec.model_dump(mode="json", exclude=_AMOUNT_FIELDS), sort_keys=True)
        key = (_identity(spec), options)
        if key in seen:
            raise DataError(f"data.datasets.{seen[key]} and data.datasets.{index} both read "
                            f"{printable(spec.source, 200)} the same way: every row would be trained twice. "
                            "Remove one of them; to draw a dataset's rows more often on purpose, set its weight "
                            "(data.datasets[].weight: 2.0 draws each row twice on average).")
        seen[key] = index
    _refuse_files_read_twice(data)
    _refuse_validation_on_training_files(data)


def _files_read(spec: DatasetSpec) -> set[Path]:
    """The data files a local source reads (a folder: each of its data files), resolved; a hub id: none."""
    local = resolve_local(spec.source)
    if local is None:
        return set()
    return {path.resolve() for path in data_files(local)} if local.is_dir() else {local.resolve()}


def _refuse_files_read_twice(data: DataSection) -> None:
    """A data folder and a file inside it (or a folder inside it) both listed the same way: the file's rows would be
    trained twice without a word, as with the same file listed twice."""
    readers: dict[tuple[str, Path], int] = {}
    for index, spec in enumerate(data.datasets):
        if spec.use_for != "train":
            continue
        options = json.dumps(spec.model_dump(mode="json", exclude=_AMOUNT_FIELDS), sort_keys=True)
        for path in sorted(_files_read(spec)):
            earlier = readers.setdefault((options, path), index)
            if earlier != index:
                raise DataError(f"data.datasets.{earlier} and data.datasets.{index} both read {printable(path, 200)} "
                                "the same way (a data folder and a file inside it): its rows would be trained twice. "
                                "Remove the file's entry, or list the folder's files one by one; to draw a file's "
                                "rows more often on purpose, set its weight (data.datasets[].weight: 2.0 draws each "
                                "row twice on average).")


def _refuse_validation_on_training_files(data: DataSection) -> None:
    """A file given both to train on and as the validation set (use_for: validation): its validation loss would be
    measured on rows being trained on, and say nothing of rows the model has not seen."""
    trained: dict[Path, int] = {}
    for index, spec in enumerate(data.datasets):
        if spec.use_for == "train":
            for path in _files_read(spec):
                trained.setdefault(path, index)
    for index, spec in enumerate(data.datasets):
        if spec.use_for != "validation":
            continue
        for path in sorted(_files_read(spec)):
            if path in trained:
                raise DataError(f"data.datasets.{index} (use_for: validation) reads {printable(path, 200)}, which "
                                f"data.datasets.{trained[path]} trains on: the validation loss would be measured on "
                                f"rows being trained on. {_HOLD_OUT}")
            copied = _same_bytes(path, trained)
            if copied is not None:
                raise DataError(f"data.datasets.{index} (use_for: validation) reads {printable(path, 200)}, a copy of "
                                f"{printable(copied, 200)} (the same bytes), which data.datasets.{trained[copied]} "
                                f"trains on: the validation loss would be measured on rows being trained on. {_HOLD_OUT}")


_HOLD_OUT = ("Hold out part of that dataset with its val_first_n (or data.val_ratio) instead, or give a file of other "
             "rows as the validation set.")


def _same_bytes(path: Path, trained: dict[Path, int]) -> Path | None:
    """The training file ``path`` is a byte-for-byte copy of, if any (sizes first: only files of one size are read)."""
    if not path.is_file():  # a pipe or device is refused where it is read, never read here
        return None
    size = path.stat().st_size
    return next((other for other in sorted(trained) if other.is_file() and other.stat().st_size == size
                 and filecmp.cmp(path, other, shallow=False)), None)


def refuse_output_inside_data(data: DataSection, output: Path) -> None:
    """The output folder inside a data folder (or the data folder itself): the run folders written there (adapter
    config, reports, samples) would be read as rows by the next run."""
    out = output.expanduser().resolve()
    for key, specs in (("data.datasets", data.datasets), ("data.eval_sets", data.eval_sets)):
        for index, spec in enumerate(specs):
            local = resolve_local(spec.source)
            if local is None or not local.is_dir():
                continue
            folder = local.resolve()
            if out == folder or folder in out.parents:
                raise DataError(f"The output folder {printable(out, 200)} (--output-dir or output.dir) lies inside "
                                f"the data folder {printable(folder, 200)} that {key}.{index} reads: the run folders "
                                "written there would be read as data by the next run. Choose an output folder "
                                "outside the data folder.")
