"""Hostile round 17, writes into a run folder the command did not make: --mode test and export of a run write into
the adapter's run folder, and a full disk there was answered "Free some space (or choose another --output-dir)",
though --output-dir does not move those files."""

import errno
import os

import pytest

from .conftest import assert_one_message, run_cli
from .test_hostile_review14_b import _copy, kept_run  # noqa: F401 (kept_run: a fixture)


@pytest.mark.parametrize("mode", ["test", "export"])
@pytest.mark.parametrize(("code", "advice"), [
    (errno.ENOSPC, "Free some space on that disk, or copy the run folder to a disk with room (cp -r {run} <folder> "
                   "and give the copy to --adapter (--output-dir does not move the adapter's run folder))"),
    (errno.EFBIG, "limits the size of one file (FAT32 drives: 4 GiB), or the shell limits it (ulimit -f): raise the "
                  "limit, or copy the run folder to another file system (cp -r {run} <folder> and give the copy to"),
])
def test_a_failed_write_in_the_adapters_run_folder_advises_a_copy_not_output_dir(kept_run, tmp_path, monkeypatch,  # noqa: F811
                                                                                 capsys, mode, code, advice):
    run = _copy(kept_run, tmp_path)
    real_replace = os.replace

    def full(source, target, *args, **kwargs):
        if str(target).startswith(str(run)) and "manifest" not in str(target) and ".lock" not in str(target):
            raise OSError(code, os.strerror(code))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    result = run_cli(capsys, ["--mode", mode, "--adapter", str(run), "--output-dir", str(tmp_path / "elsewhere")])
    assert result.code == 2
    assert_one_message(result.err, advice.format(run=run))
    assert "choose another --output-dir" not in result.err


def test_a_failed_write_in_a_new_run_folder_still_advises_output_dir(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from .conftest import kit_argv

    out = tmp_path / "out"
    real_replace = os.replace

    def full(source, target, *args, **kwargs):
        if str(target).endswith("config.yaml"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "train"))
    assert result.code == 2
    assert_one_message(result.err, "No space left on device. Free some space (or choose another --output-dir)")
    [run] = out.iterdir()  # holding its log, the run folder is kept (only one holding nothing but its lock goes)
    assert (run / "run.log").stat().st_size > 0


# ---------------------------------------------------------------- 89: a checkpoint copy the user kept beside them

@pytest.mark.parametrize("kept_as", ["checkpoint-4.bak", "checkpoint-abc", "checkpoint-\u0664"])
def test_a_checkpoint_folder_by_another_name_is_left_alone_on_resume(kept_run, tmp_path, capsys, kept_as):  # noqa: F811
    """A copy named checkpoint-4.bak made --resume fail with ValueError: invalid literal for int()."""
    import shutil

    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    checkpoints = run / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-4", checkpoints / kept_as)
    shutil.rmtree(checkpoints / "checkpoint-4")
    result = run_cli(capsys, ["--mode", "train", "--resume", str(run)])
    assert result.code == 0, result.err[-2000:]
    assert "Traceback" not in result.err and "internal error" not in result.err
    import json

    assert json.loads((run / "metrics.json").read_text())["metrics"]["resumed_from_step"] == 2
    assert (checkpoints / kept_as / "trainer_state.json").is_file()  # the user's copy untouched


# ---------------------------------------------------------------- 41: a finished run whose adapter was moved away

def test_a_finished_run_whose_adapter_folder_is_gone_is_said_so(kept_run, tmp_path, capsys):  # noqa: F811
    """It was called a run "whose training stopped before its adapter was saved", though its manifest records the
    adapter it saved."""
    import shutil

    run = _copy(kept_run, tmp_path)
    shutil.move(run / "adapter", tmp_path / "moved-adapter")
    result = run_cli(capsys, ["--mode", "chat", "--prompt", "hi", "--adapter", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"is a run folder of this kit that saved its adapter (its manifest.json records "
                                   f"it), but its adapter/ holds no adapter_config.json now: moved or deleted since? "
                                   f"Put the adapter folder back as {run / 'adapter'}, or give its new place")
    assert "stopped before its adapter was saved" not in result.err


# ---------------------------------------------------------------- 129: an adapter folder given as the base model

@pytest.mark.parametrize("given, what", [("adapter", "a LoRA adapter folder"),
                                         ("", "a run folder of this kit (its adapter in adapter/)")])
def test_an_adapter_or_run_folder_given_as_the_base_model_is_named_with_its_base(kept_run, tiny_model_dir, tmp_path,  # noqa: F811
                                                                                  capsys, given, what):
    from .conftest import kit_argv

    folder = kept_run / given if given else kept_run
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"model.name": str(folder)}))
    assert result.code == 2
    assert_one_message(result.err, f"It is {what}, not a base model: give it as --adapter {folder}")
    assert f"--set model.name={tiny_model_dir}" in result.err


# ---------------------------------------------------------------- 154: a cut chat template saved with an adapter

def test_an_adapters_cut_chat_template_is_named_as_the_adapters_file(kept_run, tmp_path, capsys):  # noqa: F811
    """The message named the base model's template (intact) and advised model.chat_template, which did not help."""
    run = _copy(kept_run, tmp_path)
    template = run / "adapter" / "chat_template.jinja"
    if not template.is_file():
        pytest.skip("the tokenizer saves its template in tokenizer_config.json")
    template.write_bytes(template.read_bytes()[:120])
    result = run_cli(capsys, ["--mode", "chat", "--prompt", "hi", "--adapter", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"The chat template of the adapter in {run / 'adapter'} (its chat_template.jinja, "
                                   "saved with it) cannot render a conversation")
    assert "restore chat_template.jinja from the run folder it came from" in result.err


# ---------------------------------------------------------------- 156: an empty or cut adapter_config.json

@pytest.mark.parametrize("keep, said", [(0, "is empty (0 bytes): a copy that never wrote it, or one cut short."),
                                        (40, "ends in the middle of its JSON (40 bytes): cut short by a copy or a "
                                             "full disk?")])
def test_an_empty_or_cut_adapter_config_is_said_to_be_cut(kept_run, tmp_path, capsys, keep, said):  # noqa: F811
    run = _copy(kept_run, tmp_path)
    config = run / "adapter" / "adapter_config.json"
    config.write_bytes(config.read_bytes()[:keep])
    result = run_cli(capsys, ["--mode", "chat", "--prompt", "hi", "--adapter", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"{config} {said} Copy the adapter folder (or the run folder holding it) again")
