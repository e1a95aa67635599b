"""Hostile round 16, models: a tokenizer that names no end-of-sequence token, and pickled weights (or a checkpoint's
training state) that would run a command while read.

Findings handled here: 58, 63.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli
from .test_hostile_review14_b import _copy, kept_run  # noqa: F401 (kept_run: a fixture)


def _copy_model(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def _edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- ZT01: no end-of-sequence token


@pytest.fixture(scope="module")
def no_eos_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model whose tokenizer, config and generation config name no end-of-sequence or padding token."""
    model = _copy_model(tiny_model_dir, tmp_path_factory.mktemp("noeos") / "model")
    _edit_json(model / "tokenizer_config.json", eos_token=None, pad_token=None)
    for name in ("config.json", "generation_config.json"):
        if (model / name).is_file():
            _edit_json(model / name, eos_token_id=None, pad_token_id=None)
    if (model / "special_tokens_map.json").is_file():
        _edit_json(model / "special_tokens_map.json", eos_token=None, pad_token=None)
    return model


def test_a_tokenizer_without_an_end_token_is_refused_in_every_mode_naming_the_field(no_eos_model, tmp_path, capsys):
    """Was: --dry-run exit 0, then the run `internal error: ValueError: The specified pad_token ('None') is not found
    in the vocabulary`, exit 1."""
    out = tmp_path / "out"
    commands = [("--mode", "train", "--dry-run"), ("--mode", "train"),
                ("--mode", "chat", "--adapter", "none", "--prompt", "Is aspirin useful?"),
                ("--mode", "test", "--adapter", "none", "--dry-run")]
    for args in commands:
        result = run_cli(capsys, kit_argv(no_eos_model, out, *args))
        assert result.code == 2, (args, result.err)
        assert_one_message(result.err, f"model.name: the tokenizer of {no_eos_model} has no end-of-sequence token")
        assert "Set eos_token in the model's tokenizer_config.json to the token it was trained to end a text " \
               'with (e.g. "eos_token": "<|endoftext|>", a token of its vocabulary)' in result.err
        assert "internal error" not in result.err
    assert not out.exists() or not any(out.iterdir())  # refused before a run folder was made


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_token(tiny_model_dir, tmp_path):
    from medqlora.backends import load_tokenizer
    from medqlora.config import load_config

    from .conftest import tiny_overrides

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    _edit_json(model / "tokenizer_config.json", pad_token=None)
    tokenizer = load_tokenizer(load_config(None, tiny_overrides(model, tmp_path / "out")), str(model))
    assert tokenizer.eos_token is not None and tokenizer.pad_token == tokenizer.eos_token


# ---------------------------------------------------------------- ZT02: pickled weights that hold code


class _Command:
    """Pickled as a call of os.system: reading the pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _pickle_with_code(path: Path, marker: Path, zip_format: bool = True) -> Path:
    import torch

    torch.save({"model.embed_tokens.weight": _Command(f"touch {marker}")}, str(path),
               _use_new_zipfile_serialization=zip_format)
    return path


def _pickled_model(model: Path, to: Path) -> Path:
    """``model`` with its weights as pytorch_model.bin (a pickle, as older checkpoints are)."""
    import torch
    from safetensors.torch import load_file

    folder = _copy_model(model, to)
    torch.save(load_file(str(folder / "model.safetensors")), str(folder / "pytorch_model.bin"))
    (folder / "model.safetensors").unlink()
    return folder


def test_pickled_weights_that_would_run_a_command_are_refused_in_the_kits_words(tiny_model_dir, tmp_path, capsys):
    """Was: torch's UnpicklingError relayed, advising `Re-running torch.load with weights_only set to False`."""
    marker = tmp_path / "ran"
    model = _copy_model(tiny_model_dir, tmp_path / "evil")
    (model / "model.safetensors").unlink()
    _pickle_with_code(model / "pytorch_model.bin", marker)
    for args in (("--mode", "train", "--dry-run"), ("--mode", "chat", "--adapter", "none", "--prompt", "Hello?")):
        result = run_cli(capsys, kit_argv(model, tmp_path / "out", *args))
        assert result.code == 2
        assert_one_message(result.err, f"model.name: {model / 'pytorch_model.bin'} holds code, not only weights: "
                                       f"reading it would call {os.system.__module__}.system")
        assert "the kit does not load it. Use the model's safetensors release" in result.err
        assert "weights_only" not in result.err and "False" not in result.err
    assert not marker.exists()


def test_pickled_weights_of_tensors_alone_load(tiny_model_dir, tmp_path, capsys):
    model = _pickled_model(tiny_model_dir, tmp_path / "pickled")
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "chat", "--adapter", "none",
                                      "--prompt", "Is aspirin useful?"))
    assert result.code == 0, result.err


def test_a_refusal_of_an_old_format_pickle_is_told_in_the_kits_words(tmp_path):
    """A pickle of torch's old (non-zip) format is not disassembled beforehand: torch's loader refuses its code, and
    the failed load is told as the kit's message."""
    import torch

    from medqlora.backends.hf import load_errors

    marker = tmp_path / "ran"
    file = _pickle_with_code(tmp_path / "pytorch_model.bin", marker, zip_format=False)
    with pytest.raises(Exception) as refused:
        torch.load(str(file), weights_only=True)
    message = str(load_errors(str(tmp_path), refused.value))
    assert f"{tmp_path} holds code, not only weights: reading it would call {os.system.__module__}.system" in message
    assert "weights_only" not in message and not marker.exists()


# ---------------------------------------------------------------- ZT03: a checkpoint's training state holds code


def test_a_checkpoint_whose_optimizer_state_holds_code_is_refused_on_resume(kept_run, tmp_path, capsys):  # noqa: F811
    run = _copy(kept_run, tmp_path)
    shutil.rmtree(run / "adapter")
    checkpoint = run / "checkpoints" / "checkpoint-4"
    marker = tmp_path / "ran"
    _pickle_with_code(checkpoint / "optimizer.pt", marker)
    before = (run / "manifest.json").read_text()
    for argv in (["--dry-run"], []):
        result = run_cli(capsys, ["--mode", "train", "--resume", str(run), *argv])
        assert result.code == 2
        assert_one_message(result.err, f"--resume: {checkpoint / 'optimizer.pt'} holds code, not only weights: "
                                       f"reading it would call {os.system.__module__}.system")
        assert "Move checkpoint-4 out of" in result.err and "weights_only" not in result.err
    assert (run / "manifest.json").read_text() == before and not marker.exists()


def test_the_training_state_a_checkpoint_holds_is_no_code(kept_run):  # noqa: F811
    """optimizer.pt, scheduler.pt and rng_state.pth (numpy's random state) as the trainer saves them pass; so does
    training_args.bin, which the trainer never reads back."""
    from medqlora.checkpoint_files import check_checkpoint
    from medqlora.torch_pickles import code_in_pickle

    checkpoint = kept_run / "checkpoints" / "checkpoint-4"
    saved = sorted(p.name for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
    assert {"optimizer.pt", "rng_state.pth"} <= set(saved)
    assert code_in_pickle(checkpoint / "training_args.bin")  # a TrainingArguments object: not read on resume
    check_checkpoint(checkpoint)
