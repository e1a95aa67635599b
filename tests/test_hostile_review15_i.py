"""Hostile round 15, resume and report writes: a checkpoint whose trainer_state.json is at another step than its
folder (copied in from a longer run), and a report write that a file-size limit refuses."""

import errno
import json
import os
import shutil

import pytest

from medqlora.errors import MedQLoRAError
from medqlora.runs import RunDir, write_file_bytes

from .conftest import assert_one_message, run_cli
from .test_hostile_review14_b import _copy, kept_run  # noqa: F401 (kept_run: a fixture)


def _set_global_step(checkpoint, step) -> None:
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["global_step"] = step
    state_file.write_text(json.dumps(state))


# ---------------------------------------------------------------- ZR01: a checkpoint's state from another run


@pytest.mark.parametrize("step", [100, 2, "4", None])
def test_a_checkpoint_whose_state_is_at_another_step_is_refused(kept_run, tmp_path, capsys, step):  # noqa: F811
    """checkpoint-4 with global_step 100 (a trainer_state.json copied from a longer run): --resume ended at once,
    status "trained", metrics "steps: 100", the run's last steps never trained."""
    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    checkpoint = run / "checkpoints" / "checkpoint-4"
    _set_global_step(checkpoint, step)
    before = (run / "manifest.json").read_text()
    for argv in (["--dry-run"], []):
        result = run_cli(capsys, ["--mode", "train", "--resume", str(run), *argv])
        assert result.code == 2
        assert_one_message(result.err, f"--resume: the checkpoint {checkpoint} does not match its own state: its "
                                        f"trainer_state.json says global_step {json.dumps(step)}, its folder name step 4")
        assert "Move checkpoint-4 out of" in result.err
    assert (run / "manifest.json").read_text() == before and not (run / "adapter").exists()


def test_a_checkpoint_at_its_own_step_resumes(kept_run, tmp_path, capsys):  # noqa: F811
    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    _set_global_step(run / "checkpoints" / "checkpoint-2", 2)
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    assert run_cli(capsys, ["--mode", "train", "--resume", str(run)]).code == 0
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4


# ---------------------------------------------------------------- ZR02: what a failed report write advises


@pytest.mark.parametrize(("code", "advice"), [
    (errno.EFBIG, "limits the size of one file"),
    (errno.ENOSPC, "Free some space"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "You may not write in that folder"),
])
def test_a_report_write_the_system_refuses_says_what_to_change(tmp_path, monkeypatch, code, advice):
    """`ulimit -f` hit while writing eval_chart.png was reported as "Is the disk full or read-only?": neither."""
    from medqlora import runs

    monkeypatch.setattr(runs, "_MADE_HERE", {str(tmp_path)})  # a run folder this command made
    target = tmp_path / "eval_chart.png"
    target.write_bytes(b"earlier")

    def refused(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(MedQLoRAError) as caught:
        write_file_bytes(target, b"new")
    assert f"Cannot write {target}: {os.strerror(code)}. " in str(caught.value) and advice in str(caught.value)
    assert "Is the disk full" not in str(caught.value)
    assert target.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["eval_chart.png"]


def test_a_run_folder_entry_the_system_refuses_to_create_says_what_to_change(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(MedQLoRAError, match="read-only file system: copy the run folder to a writable place"):
        run.fresh_dir("adapter")  # a run folder this command did not make: --output-dir would not move it


# ---------------------------------------------------------------- ZR03: a lock file the user may not write


def test_a_lock_file_without_write_permission_is_not_said_to_be_removed(tmp_path, monkeypatch):
    """A run folder (or its .lock) of another user: the advice was to remove the lock, which the user may not."""
    from medqlora import run_lock

    def denied(*_args, **_kwargs):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(run_lock.os, "open", denied)
    with pytest.raises(MedQLoRAError) as caught:
        run_lock.lock_run_folder(tmp_path)
    said = str(caught.value)
    assert f"Cannot open {tmp_path / '.lock'} (Permission denied): you may not write the run folder's lock" in said
    assert f"cp -r {tmp_path} <folder>" in said and "Remove whatever is there" not in said
