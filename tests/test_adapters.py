"""The adapter boundary (medqlora/adapters.py): checked from its config and safetensors header, against the base
model's config.json, before any weight is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medqlora import adapter_base, adapters
from medqlora.errors import ModelError

# the tiny model of conftest: hidden 64, 4 heads of 16 (2 key/value heads), intermediate 128, 2 layers
SHAPES = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
          "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}


def make_adapter(folder: Path, base: str, r: int = 4, modules=("q_proj", "v_proj"), layers: int = 2,
                 shapes: dict | None = None, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(layers):
        for module in modules:
            n_in, n_out = (shapes or SHAPES)[module]
            part = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.zeros(r, n_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(n_out, r)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    payload = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(modules),
               "base_model_name_or_path": base, **config}
    (folder / "adapter_config.json").write_text(json.dumps(payload))
    return folder


def check(folder: Path, base: Path) -> None:
    adapter_base.check_base(adapters.find(folder), str(base), str(base))


def test_a_matching_adapter_passes_without_loading_weights(tiny_model_dir, tmp_path, monkeypatch):
    folder = make_adapter(tmp_path / "a", str(tiny_model_dir), modules=tuple(SHAPES))
    import safetensors.torch

    def no_loading(*_args, **_kwargs):
        raise AssertionError("a tensor was loaded")

    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)
    found = adapters.find(folder)
    assert found.run is None and found.config["r"] == 4 and len(found.shapes) == 2 * 2 * len(SHAPES)
    adapter_base.check_base(found, str(tiny_model_dir), str(tiny_model_dir))


def test_shapes_that_do_not_fit_name_the_module_and_the_features(tiny_model_dir, tmp_path):
    folder = make_adapter(tmp_path / "a", "elsewhere/model", shapes={**SHAPES, "q_proj": (128, 128)})
    with pytest.raises(ModelError) as caught:
        check(folder, tiny_model_dir)
    message = str(caught.value)
    assert "q_proj is 128 -> 128 features in the adapter and 64 -> 64 in the base model" in message
    assert "Was it trained on a different base model?" in message
    assert "--set model.name=elsewhere/model" in message and "\n" not in message


def test_more_layers_than_the_base_model_has(tiny_model_dir, tmp_path):
    folder = make_adapter(tmp_path / "a", str(tiny_model_dir), layers=3)
    with pytest.raises(ModelError, match="the base model has no module model.layers.2.self_attn"):
        check(folder, tiny_model_dir)


def test_target_modules_the_base_model_lacks(tiny_model_dir, tmp_path):
    folder = make_adapter(tmp_path / "a", str(tiny_model_dir), target_modules=["q_proj", "v_proj", "c_attn"])
    with pytest.raises(ModelError, match=r"targets modules the base model lacks \(c_attn"):
        check(folder, tiny_model_dir)


def test_a_different_model_type_is_named(tiny_model_dir, tmp_path):
    other = tmp_path / "gpt2ish"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    folder = make_adapter(tmp_path / "a", str(other))
    with pytest.raises(ModelError, match="trained on a gpt2 model and the base is a llama"):
        check(folder, tiny_model_dir)


def test_figures_from_config_json_when_no_empty_model_can_be_built(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(adapter_base, "linear_features", lambda *_a, **_k: None)
    good = make_adapter(tmp_path / "good", str(tiny_model_dir), modules=tuple(SHAPES))
    check(good, tiny_model_dir)
    bad = make_adapter(tmp_path / "bad", str(tiny_model_dir), shapes={**SHAPES, "v_proj": (64, 64)})
    with pytest.raises(ModelError, match="v_proj is 64 -> 64 features in the adapter and 64 -> 32"):
        check(bad, tiny_model_dir)


def test_rank_pattern_ranks_are_accepted_and_others_refused(tmp_path):
    folder = make_adapter(tmp_path / "a", "m", r=8, rank_pattern={"q_proj": 8})
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 4, "rank_pattern": {"q_proj": 8, "v_proj": 8}}))
    adapters.find(folder)  # r=4 with q_proj/v_proj at 8 through rank_pattern
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(ModelError, match="r is 4 but .*v_proj has rank 8"):  # PEFT would make v_proj rank 4
        adapters.find(folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 4, "rank_pattern": {}}))
    with pytest.raises(ModelError, match="r is 4 but .* has rank 8"):
        adapters.find(folder)


@pytest.mark.parametrize("config, fragment", [
    ("[1, 2]", "must be a JSON object"),
    ('{"peft_type": "LORA", "r": "16", "target_modules": ["q_proj"], "base_model_name_or_path": "m"}',
     "r is '16', not a positive integer"),
    ('{"peft_type": "LORA", "r": true, "target_modules": ["q_proj"], "base_model_name_or_path": "m"}',
     "r is True, not a positive integer"),
    ('{"peft_type": "LORA", "r": 4, "target_modules": [], "base_model_name_or_path": "m"}', "target_modules"),
    ('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "base_model_name_or_path": null}',
     "base_model_name_or_path is not a string"),
    ("\xff\xfe", "not UTF-8 text"),
])
def test_config_that_is_not_a_lora_config(config, fragment, tmp_path):
    folder = make_adapter(tmp_path / "a", "m")
    (folder / "adapter_config.json").write_bytes(config.encode("latin-1"))
    with pytest.raises(ModelError, match=fragment):
        adapters.find(folder)


def test_pickle_weights_are_refused_with_the_conversion(tmp_path):
    folder = make_adapter(tmp_path / "a", "m")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.pt").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError) as caught:
        adapters.find(folder)
    lines = str(caught.value).splitlines()
    assert "has only pickle weights (adapter_model.pt)" in lines[0] and len(lines) == 4
    assert "weights_only=True" in lines[2] and "adapter_model.safetensors" in lines[3]


def test_a_truncated_header_is_one_short_message(tmp_path):
    folder = make_adapter(tmp_path / "a", "m")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ModelError, match="Cannot load the adapter in .*: adapter_model.safetensors is not a readable"):
        adapters.find(folder)


def test_a_kit_run_folder_needs_its_manifest_and_config(tmp_path):
    folder = make_adapter(tmp_path / "run" / "adapter", "m")
    assert adapters.kit_run_folder(folder) is None
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name: m\n")
    assert adapters.kit_run_folder(folder) is None  # a config.yaml alone does not make a run folder
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"kit_version": "0"}))
    assert adapters.kit_run_folder(folder) == tmp_path / "run"
