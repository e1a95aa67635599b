"""Hostile and unlucky inputs around the files of a run folder, closed standard streams, llama.cpp converters that
write no usable file, and fetching llama.cpp into a cache that cannot hold it: a GRPO samples file that is a named
pipe or a hard link, a manifest that is a named pipe, a closed standard input or error, an empty or linked GGUF."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqlora.errors import MedQLoRAError
from medqlora.run_files import Files
from medqlora.runs import RunDir

from .conftest import assert_one_message, kit_argv, run_cli


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    return RunDir(run)


def test_a_grpo_samples_file_that_is_a_named_pipe_is_refused_not_waited_on(tmp_path):
    run = _run_folder(tmp_path)
    os.mkfifo(run.path / Files.GRPO_SAMPLES)
    with pytest.raises(MedQLoRAError, match="grpo_samples.jsonl is not a regular file"):
        run.check_links()  # checked when a resumed run starts, before any work
    with pytest.raises(MedQLoRAError, match="is not a regular file"):
        run.append_text(Files.GRPO_SAMPLES, "{}\n")  # and when written: no reader, no wait


def test_a_grpo_samples_file_hard_linked_outside_is_refused_and_the_file_kept(tmp_path):
    run = _run_folder(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    os.link(notes, run.path / Files.GRPO_SAMPLES)
    with pytest.raises(MedQLoRAError, match="hard link"):
        run.check_links()
    with pytest.raises(MedQLoRAError, match="hard link"):
        run.append_text(Files.GRPO_SAMPLES, '{"completion": "secret"}\n')
    assert notes.read_text() == "my precious notes\n"


def test_grpo_samples_are_appended_to_the_run_folders_own_file(tmp_path):
    run = _run_folder(tmp_path)
    run.append_text(Files.GRPO_SAMPLES, "one\n")
    run.append_text(Files.GRPO_SAMPLES, "two\n")
    run.check_links()
    assert (run.path / Files.GRPO_SAMPLES).read_text() == "one\ntwo\n"


def test_chat_with_standard_input_closed_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when the kit starts with standard input closed
    for dry_run in ((), ("--dry-run",)):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry_run, "--mode", "chat",
                                          "--adapter", "none"))
        assert result.code == 2
        assert_one_message(result.err, "--prompt")
        assert "standard input, which is closed" in result.err


def test_a_user_error_with_standard_error_closed_still_exits_2(tmp_path):
    """A launcher that closes stderr: the descriptor is often taken by a file opened read-only at start."""
    taken = tmp_path / "launcher.sh"
    taken.write_text("#!/bin/sh\n")
    script = Path(__file__).resolve().parents[1] / "medical_qlora_finetuning.py"
    with taken.open("rb") as read_only:
        result = subprocess.run([sys.executable, str(script), "--dry-run", "--set", "training.max_steps=0"],
                                stdout=subprocess.DEVNULL, stderr=read_only, timeout=300, check=False)
    assert result.returncode == 2
    assert taken.read_text() == "#!/bin/sh\n"


CONVERTER = "import os, sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\n"
WRITES_EMPTY = CONVERTER + "open(out, 'wb').close()\n"
LEAVES_A_LINK = CONVERTER + "os.symlink({target!r}, out)\n"


@pytest.mark.parametrize("body,fmt,said", [
    (WRITES_EMPTY, "gguf_lora", "ended without error but wrote an empty adapter-f16.gguf"),
    (WRITES_EMPTY, "gguf", "ended without error but wrote an empty model-f16.gguf"),
    (LEAVES_A_LINK, "gguf_lora", "ended without error but left a symbolic link at adapter-f16.gguf")],
    ids=["lora-empty", "merged-empty", "lora-link"])
def test_a_converter_that_writes_an_empty_file_or_a_link_fails_the_export_in_one_message(
        lora_folder, tiny_model_dir, tmp_path, monkeypatch, capsys, body, fmt, said):
    outside = tmp_path / "outside.txt"
    outside.write_text("not a GGUF file\n")
    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir()
    for script in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        (llama_cpp / script).write_text(body.format(target=str(outside)))
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama_cpp))
    out = tmp_path / "out"
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(lora_folder),
                                      **{"export.formats": f"[{fmt}]", "export.gguf_type": "f16"}))
    assert result.code == 2
    assert_one_message(result.err, said)
    assert not list(out.glob("*/.export.partial"))
    assert outside.read_text() == "not a GGUF file\n"


def test_a_damaged_gguf_file_is_one_message_not_a_crash(tmp_path):
    from medqlora.export.llama_cpp import read_gguf

    damaged = tmp_path / "adapter-f16.gguf"
    damaged.write_bytes(b"GGUF" + b"\x00" * 3)
    with pytest.raises(MedQLoRAError, match="is not a readable GGUF file"):
        read_gguf(damaged)


def _fetch(monkeypatch, capsys, cache: Path, download) -> tuple[int, str]:
    """python -m medqlora.export --fetch-llama-cpp into ``cache`` (MEDQLORA_CACHE), pip's download replaced."""
    from medqlora import backends
    from medqlora.export import __main__ as fetch_command
    from medqlora.export import llama_cpp

    monkeypatch.setattr(backends, "CACHE_DIR", cache)
    monkeypatch.setattr(llama_cpp, "_run_pip", download)
    code = fetch_command.main(["--fetch-llama-cpp"])
    return code, capsys.readouterr().err


def _no_download(*args, **kwargs):
    raise AssertionError("the cache folder is checked before anything is downloaded")


def _place_file(where: Path) -> None:
    where.write_text("my notes\n")


def _place_link(where: Path) -> None:
    checkout = where.parent.parent / "my-llama.cpp"
    checkout.mkdir()
    (checkout / "convert_hf_to_gguf.py").write_text("# an older checkout\n")
    where.symlink_to(checkout)


@pytest.mark.parametrize("place,said", [(_place_file, "is a file, where the kit keeps llama.cpp's converter"),
                                        (_place_link, "is a symbolic link (to ")], ids=["file", "link"])
def test_fetching_llama_cpp_over_a_file_or_link_is_refused_before_the_download(tmp_path, monkeypatch, capsys,
                                                                              place, said):
    cache = tmp_path / "cache"
    cache.mkdir()
    place(cache / "llama.cpp")
    code, err = _fetch(monkeypatch, capsys, cache, _no_download)
    assert code == 2
    assert_one_message(err, said)
    assert not (cache / "llama.cpp.partial").exists()
    if (cache / "llama.cpp").is_symlink():
        assert sorted(p.name for p in (cache / "llama.cpp").iterdir()) == ["convert_hf_to_gguf.py"]
    else:
        assert (cache / "llama.cpp").read_text() == "my notes\n"


def test_fetching_llama_cpp_into_a_cache_that_cannot_be_created_is_refused_before_the_download(tmp_path,
                                                                                              monkeypatch, capsys):
    cache = Path("/proc/medqlora-cache")  # /proc takes no new folders, even from root
    code, err = _fetch(monkeypatch, capsys, cache, _no_download)
    assert code == 2
    assert_one_message(err, "MEDQLORA_CACHE: cannot create /proc/medqlora-cache")


def test_ctrl_c_while_fetching_llama_cpp_is_one_message_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    cache = tmp_path / "cache"
    code, err = _fetch(monkeypatch, capsys, cache, interrupted)
    assert code == 130
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert list(cache.iterdir()) == []


def test_a_fetch_that_fails_while_unpacking_leaves_nothing_and_a_whole_one_is_kept(tmp_path, monkeypatch, capsys):
    import io
    import tarfile

    def download(command, **kwargs):  # pip download -d FOLDER: a source archive shaped as llama-cpp-python's
        folder = Path(command[command.index("-d") + 1])
        with tarfile.open(folder / "llama_cpp_python-0.3.36.tar.gz", "w:gz") as tar:
            for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py"):
                data = b"# llama.cpp\n"
                member = tarfile.TarInfo(f"llama_cpp_python-0.3.36/vendor/llama.cpp/{name}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))

    from medqlora.export import llama_cpp

    cache = tmp_path / "cache"
    real_rename = Path.rename

    def full_disk(self, target):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(Path, "rename", full_disk)
    code, err = _fetch(monkeypatch, capsys, cache, download)
    assert code == 2
    assert_one_message(err, "No space left on device")
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(Path, "rename", real_rename)
    code, err = _fetch(monkeypatch, capsys, cache, download)
    assert code == 0, err
    assert llama_cpp._holds(cache / "llama.cpp", ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"))


def _kit_run(tmp_path) -> Path:
    """A run folder as the kit leaves it, as far as telling it from a foreign adapter goes."""
    run = tmp_path / "run"
    (run / Files.ADAPTER).mkdir(parents=True)
    (run / Files.MANIFEST).write_text('{"kit_version": "1"}\n')
    (run / Files.CONFIG).write_text("model: {}\n")
    (run / Files.TRAINING_ITEMS).write_text("")
    return run


@pytest.mark.parametrize("record", [Files.MANIFEST, Files.CONFIG, Files.TRAINING_ITEMS, Files.DATA_STATS])
def test_a_run_record_that_is_a_named_pipe_is_named_not_taken_for_a_foreign_adapter(tmp_path, record):
    from medqlora import adapters

    run = _kit_run(tmp_path)
    assert adapters.kit_run_folder(run / Files.ADAPTER) == run
    (run / record).unlink(missing_ok=True)
    os.mkfifo(run / record)
    with pytest.raises(MedQLoRAError, match=f"{record} is not a regular file \\(a named pipe\\)"):
        adapters.kit_run_folder(run / Files.ADAPTER)
