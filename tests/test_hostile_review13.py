"""Inputs of the thirteenth hostile round: a training folder in the Hub's layout (train and test files side by
side), read whole."""

import json

import pytest

from medqlora.cli import main

from .conftest import kit_argv


def _rows(n: int, tag: str) -> str:
    return "".join(json.dumps({"instruction": f"{tag} question {i}?", "output": f"{tag} answer {i}."}) + "\n"
                   for i in range(n))


@pytest.mark.parametrize("held_out", ["test.jsonl", "validation-00000-of-00001.jsonl", "dev/part.jsonl", "Test.jsonl"])
def test_a_training_folder_holding_a_held_out_split_is_refused_naming_the_file(tiny_model_dir, tmp_path, capsys,
                                                                             held_out):
    folder = tmp_path / "splits"
    (folder / held_out).parent.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text(_rows(5, "train"))
    (folder / held_out).write_text(_rows(3, "held-out"))
    for split in ("", ", split: train"):
        code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
            "data.datasets": f"[{{source: {folder}, format: instruction{split}}}]"}))
        err = capsys.readouterr().err
        assert code == 2 and "holds files named as a held-out split" in err and held_out in err, err
        assert "data.datasets.0" in err and "Traceback" not in err


def test_a_training_folder_of_training_files_only_is_read_whole(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "train-00000.jsonl").write_text(_rows(4, "a"))
    (folder / "contest_notes.jsonl").write_text(_rows(4, "b"))  # 'contest' is not 'test'
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: {folder}, format: instruction}}]"}))
    assert code == 0, capsys.readouterr().err
