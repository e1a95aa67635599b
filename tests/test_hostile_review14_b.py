"""Inputs of the fourteenth hostile round (faults): a full disk or a file-size limit met by a library's own writer
while a checkpoint is saved, run.log on a full disk, a finished run on read-only media, and a resumed checkpoint cut
short by an interrupted copy or holding NaN weights."""

import errno
import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest

from medqlora import train
from medqlora.cli import main
from medqlora.config import load_config
from medqlora.errors import MedQLoRAError
from medqlora.run_lock import lock_run_folder, release_run_folders
from medqlora.runs import RunDir
from medqlora.write_errors import library_os_errors

from .conftest import assert_one_message, kit_argv, run_cli


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# ---------------------------------------------------------------- ZL01, ZL02: a library's writer meets the disk


def _tokenizers_disk_full():
    raise Exception("No space left on device (os error 28)")  # noqa: TRY002 (the tokenizers library's own)


def _tokenizers_file_too_large():
    raise Exception("File too large (os error 27)")  # noqa: TRY002 (a FAT32 drive, or `ulimit -f`)


@pytest.mark.parametrize(("failure", "said"), [
    (_tokenizers_disk_full, "(No space left on device); a checkpoint being written was removed. Free some space"),
    (_tokenizers_file_too_large, ("(File too large); a checkpoint being written was removed. The file system there "
                                  "limits the size of one file (FAT32 drives: 4 GiB), or the shell limits it")),
])
def test_the_tokenizers_write_failing_while_checkpointing_is_one_message(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys, failure, said):
    """tokenizer.json written into the first checkpoint on a full disk (or past a file-size limit): the tokenizers
    library raises a bare Exception with the OS error in its text, which ended as an internal error."""
    from transformers import Trainer

    def half_then_fail(self, model, trial):
        folder = tmp_path / "full" / "checkpoints" / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_bytes(b"{\"half")
        failure()

    monkeypatch.setattr(Trainer, "_save_checkpoint", half_then_fail)  # below the kit's trainer, as the library is
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "full"}))
    assert result.code == 2
    assert_one_message(result.err, f"Training stopped at step 2: cannot write in the run folder {tmp_path / 'full'} "
                                    f"{said}")
    assert "then train again (the run had no checkpoint yet)" in result.err and "internal error" not in result.err
    assert _manifest(tmp_path / "full")["status"] == "failed"
    assert not list((tmp_path / "full" / "checkpoints").glob("checkpoint-*"))


def test_a_library_error_naming_no_os_error_is_the_error_a_write_in_its_folder_meets(tmp_path, monkeypatch):
    """torch's checkpoint writer on a full disk says only 'unexpected pos 64 vs 0': the folder written is asked."""
    torch_says = "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as caught, library_os_errors(tmp_path):
        monkeypatch.setattr(os, "fsync", full)
        raise RuntimeError(torch_says)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and torch_says in str(caught.value.__cause__)
    assert list(tmp_path.iterdir()) == []  # the trial write leaves nothing
    with pytest.raises(RuntimeError, match="unexpected pos"), library_os_errors(tmp_path):
        raise RuntimeError(torch_says)  # a folder that takes writes: the library's error stays what it is


# ---------------------------------------------------------------- ZL03: run.log on a full disk


class _FullDisk:
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    flush = write


def test_a_run_log_line_the_disk_cannot_take_prints_no_logging_traceback(tmp_path, capsys):
    """A disk with 4 KiB free: the run folder was made, then every line logged printed Python's '--- Logging
    error ---' and a traceback of the kit's call stack before the kit's own one message."""
    from medqlora.messages import begin_command, say

    cfg = load_config(None, [f"output.dir={tmp_path}", "output.run_name=r"])
    run = RunDir.create(cfg)
    handler = next(h for h in logging.getLogger("medqlora").handlers if getattr(h, "baseFilename", "").startswith(
        str(run.path)))
    stream, handler.stream = handler.stream, _FullDisk()
    try:
        say("run folder: made")
        logging.getLogger("medqlora").warning("a warning for run.log")
    finally:
        handler.stream = stream
        begin_command()  # the run.log handler closed, as the next command does
        release_run_folders()
    said = capsys.readouterr()
    assert "[medqlora] run folder: made" in said.out
    assert "Logging error" not in said.err and "Traceback" not in said.err, said.err


# ---------------------------------------------------------------- a trained run, checkpoints kept


@pytest.fixture(scope="module")
def kept_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished run whose checkpoints (2 and 4) were kept, as those of a run killed after its last one."""
    out = tmp_path_factory.mktemp("kept")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "remove_checkpoints", lambda folder: None)  # keep the checkpoints a finished run removes
        assert main(kit_argv(tiny_model_dir, out, "--mode", "train", **{
            "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "r"})) == 0
    return out / "r"


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out" / run.name
    shutil.copytree(run, copy)
    return copy


# ---------------------------------------------------------------- ZL04: a run on read-only media


@pytest.mark.parametrize("mode", ["export", "test"])
def test_a_run_on_a_read_only_file_system_is_said_to_be_read_only(kept_run, tmp_path, monkeypatch, capsys, mode):
    """A finished run on a read-only mount: --mode test / export said to remove the run's lock file, a regular file
    that cannot be removed there (and removing it was never the fix)."""
    run = _copy(kept_run, tmp_path)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    result = run_cli(capsys, ["--mode", mode, "--adapter", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"Cannot write in the run folder {run}: it is on a read-only file system")
    assert f"Copy the run folder to a writable place (cp -r {run} <folder>) and give that copy to --adapter" in \
        result.err
    assert "Remove whatever is there" not in result.err


def test_a_lock_file_that_is_not_a_regular_file_is_still_the_users_to_remove(tmp_path):
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(MedQLoRAError, match="must be a regular file the kit can write. Remove whatever is there"):
        lock_run_folder(tmp_path)


# ---------------------------------------------------------------- ZL05, ZL06: a damaged checkpoint resumed


def _cut_in_half(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


def _nan_in_adapter(checkpoint: Path) -> str:
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "adapter_model.safetensors")
    name = sorted(weights)[1]
    weights[name][0, 0] = math.nan
    save_file(weights, checkpoint / "adapter_model.safetensors", metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("damage", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"])
def test_resuming_from_a_checkpoint_cut_short_names_the_file(kept_run, tmp_path, capsys, damage):
    """An interrupted copy of the run folder: checkpoint-4's optimizer.pt at half its size ended in torch's
    `OSError: [Errno 22] Invalid argument` as an internal error, the manifest marked failed."""
    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    checkpoint = run / "checkpoints" / "checkpoint-4"
    _cut_in_half(checkpoint / damage)
    before = _manifest(run)
    result = run_cli(capsys, ["--mode", "train", "--resume", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"--resume: the checkpoint {checkpoint} is damaged: its {damage} is cut short")
    assert f"Move checkpoint-4 out of {run / 'checkpoints'} to resume from the checkpoint before it" in result.err
    assert _manifest(run) == before  # refused before the run folder is touched
    shutil.move(checkpoint, tmp_path / "checkpoint-4")  # as advised: the checkpoint before it is whole
    assert run_cli(capsys, ["--mode", "train", "--resume", str(run), "--dry-run"]).code == 0


def test_resuming_from_a_checkpoint_with_nan_weights_names_it_not_the_learning_rate(kept_run, tmp_path, capsys):
    """A checkpoint whose adapter holds a NaN: the run trained on, then stopped at a NaN loss advising a lower
    learning rate and gradient clipping, which changes nothing: the checkpoint's own weights are the cause."""
    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    checkpoint = run / "checkpoints" / "checkpoint-4"
    name = _nan_in_adapter(checkpoint)
    for argv in (["--dry-run"], []):
        result = run_cli(capsys, ["--mode", "train", "--resume", str(run), *argv])
        assert result.code == 2
        assert_one_message(result.err, f"--resume: the checkpoint {checkpoint} holds NaN or infinite weights in its "
                                        f"adapter_model.safetensors ({name})")
        assert "Move checkpoint-4 out of" in result.err and "learning_rate" not in result.err
    assert not list(run.glob("adapter*"))
