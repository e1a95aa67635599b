"""The attention kernel a run trained with is recorded in its manifest.json (runtime.attention)."""

import json
import sys
import types

from medqlora import backends

from .conftest import run_tiny


def test_the_manifest_records_the_attention_kernel_of_training(tiny_model_dir, tmp_path):
    assert run_tiny(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "run", "training.save_steps": "0"}) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    # transformers' default for a Llama on the CPU: PyTorch scaled_dot_product_attention
    assert manifest["runtime"]["attention"] == "sdpa"


def test_unsloths_choice_is_read_from_its_dispatch_flags(monkeypatch):
    unsloth_gpu = backends.Runtime("unsloth", "cuda", "bf16", "test")
    for flash, xformers, expected in ((True, True, "flash_attn"), (False, True, "xformers"), (False, False, "sdpa")):
        flags = types.SimpleNamespace(HAS_FLASH_ATTENTION=flash, HAS_XFORMERS=xformers)
        monkeypatch.setitem(sys.modules, "unsloth.utils.attention_dispatch", flags)
        assert backends.attention_kernel(object(), unsloth_gpu) == f"unsloth: {expected}"
