"""training.kernels: Liger Kernel on the hf backend where it can run (auto), required (liger) or off (none); the
kernels applied to the causal LM inside the PEFT model, told to TRL's trainer, and named in the manifest."""

import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest

from medqlora import backends
from medqlora.backends import kernels
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import run_tiny

GPU = backends.Runtime("hf", "cuda", "bf16", "test")
CPU = backends.Runtime("hf", "cpu", "fp32", "test")
UNSLOTH = backends.Runtime("unsloth", "cuda", "bf16", "test")


def cfg_with(*overrides: str):
    return load_config(overrides=list(overrides))


def installed(monkeypatch, *names: str) -> None:
    """find_spec sees ``names`` (liger_kernel, triton) as installed, and nothing else that it is asked for."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        importlib.machinery.ModuleSpec(name, None) if name in names
        else None if name in ("liger_kernel", "triton") else real(name, *a)))


@pytest.mark.parametrize(("runtime", "overrides", "model_type", "used"), [
    (GPU, (), "llama", True),
    (GPU, (), "mistral", True),
    (GPU, (), "qwen3", True),
    (GPU, (), None, True),  # a plan whose config.json is not here: decided again when the run loads the model
    (GPU, (), "gemma3", False),
    (CPU, (), "llama", False),
    (UNSLOTH, (), "llama", False),
    (GPU, ("training.method=grpo",), "llama", False),
    (GPU, ("training.kernels=none",), "llama", False),
])
def test_auto_uses_liger_on_the_hf_backend_where_it_can_run(monkeypatch, runtime, overrides, model_type, used):
    installed(monkeypatch, "liger_kernel", "triton")
    choice = kernels.choose_kernels(cfg_with(*overrides), runtime, model_type)
    assert choice.liger is used
    assert choice.record() == [kernels.LIGER_USED] if used else choice.record()[0].startswith(("none: ", "unsloth: "))


def test_auto_without_the_package_trains_without_it_and_says_why(monkeypatch):
    installed(monkeypatch, "triton")
    assert kernels.choose_kernels(cfg_with(), GPU, "llama").record() == ["none: liger-kernel is not installed"]
    installed(monkeypatch, "liger_kernel")
    assert kernels.choose_kernels(cfg_with(), GPU, "llama").record() == ["none: triton is not installed"]


@pytest.mark.parametrize(("runtime", "overrides", "model_type", "installs", "says"), [
    (CPU, (), "llama", ("liger_kernel", "triton"), "need an NVIDIA GPU and this run trains on the CPU"),
    (GPU, (), "llama", ("triton",), "pip install liger-kernel==0.8.5"),
    (GPU, (), "llama", ("liger_kernel",), "triton is not installed"),
    (UNSLOTH, (), "llama", ("liger_kernel", "triton"), "Unsloth, which brings its own fused kernels"),
    (GPU, (), "gemma3", ("liger_kernel", "triton"), "architecture (gemma3) is not one the kit applies"),
    (GPU, ("training.method=grpo",), "llama", ("liger_kernel", "triton"), "SFT only, and training.method is grpo"),
])
def test_liger_required_where_it_cannot_run_is_refused_with_what_to_change(monkeypatch, runtime, overrides,
                                                                           model_type, installs, says):
    installed(monkeypatch, *installs)
    with pytest.raises(ConfigError, match="training.kernels") as err:
        kernels.choose_kernels(cfg_with("training.kernels=liger", *overrides), runtime, model_type)
    assert says in str(err.value)


def test_liger_required_is_refused_for_sharded_training(monkeypatch):
    installed(monkeypatch, "liger_kernel", "triton")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=r"sharded training \(fsdp\)"):
        kernels.choose_kernels(cfg_with("training.kernels=liger"), GPU, "llama")
    assert not kernels.choose_kernels(cfg_with(), GPU, "llama").liger


def test_an_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="training.kernels"):
        cfg_with("training.kernels=triton")


def test_a_dry_run_names_the_kernels_and_refuses_liger_on_the_cpu(capsys):
    from medqlora.cli import main

    argv = ["--mode", "train", "--dry-run", "--set", "data.datasets.0.max_samples=8"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["training"]["kernels"].startswith("none: Liger Kernel's Triton kernels need an NVIDIA GPU")
    assert main(argv + ["--set", "training.kernels=liger"]) == 2
    err = capsys.readouterr().err
    assert err.count("medqlora: error") == 1 and "Traceback" not in err
    assert "training.kernels: liger, but Liger Kernel's Triton kernels need an NVIDIA GPU" in err


def test_a_run_with_liger_on_the_cpu_stops_before_its_run_folder(tiny_model_dir, tmp_path, capsys):
    assert run_tiny(tiny_model_dir, tmp_path, "--mode", "train", **{"training.kernels": "liger"}) == 2
    assert "training.kernels: liger, but Liger Kernel's Triton kernels need an NVIDIA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- applied, with a stand-in for the library

class FakeLiger:
    """liger_kernel.transformers as far as the kit and transformers call it: the calls are kept, and the patched
    forward accepts the arguments TRL gives a Liger model (the standard loss is computed, as Liger's would be)."""

    LIGER_ARGUMENTS = ("skip_logits", "return_token_accuracy", "use_token_scaling")

    def __init__(self):
        self.kit_calls, self.trainer_calls = [], []

    def apply_liger_kernel_to_llama(self, model=None, **flags):
        self.kit_calls.append((model, flags))
        forward = model.forward

        def liger_forward(*args, **kwargs):
            for name in self.LIGER_ARGUMENTS:
                kwargs.pop(name, None)
            return forward(*args, **kwargs)

        model.forward = liger_forward

    def _apply_liger_kernel_to_instance(self, model=None, **flags):
        self.trainer_calls.append((model, flags))

    def install(self, monkeypatch) -> None:
        package = types.ModuleType("liger_kernel")
        package.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
        library = types.ModuleType("liger_kernel.transformers")
        library.apply_liger_kernel_to_llama = self.apply_liger_kernel_to_llama
        library._apply_liger_kernel_to_instance = self._apply_liger_kernel_to_instance
        package.transformers = library
        monkeypatch.setitem(sys.modules, "liger_kernel", package)
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers", library)
        installed(monkeypatch, "liger_kernel", "triton")
        monkeypatch.setattr(kernels, "gpu_visible", lambda runtime: True)  # the tiny model trains on the CPU
        import transformers.integrations.liger

        monkeypatch.setattr(transformers.integrations.liger, "is_liger_kernel_available", lambda: True)


def test_liger_is_applied_to_the_causal_lm_inside_the_peft_model_with_every_kernel(monkeypatch, tiny_model_dir,
                                                                                   tmp_path):
    from transformers import LlamaForCausalLM

    from medqlora.runs import RunDir
    from medqlora.train import sft_config

    fake = FakeLiger()
    fake.install(monkeypatch)
    cfg = cfg_with(f"model.name={tiny_model_dir}")
    runtime = backends.Runtime("hf", "cpu", "fp32", "test")
    model, _, _ = backends.load_for_training(cfg, runtime)
    [(patched, flags)] = fake.kit_calls
    assert isinstance(patched, LlamaForCausalLM) and patched is model.get_base_model()
    assert flags == {"rms_norm": True, "swiglu": True, "rope": True, "fused_linear_cross_entropy": True,
                     "cross_entropy": False}
    assert runtime.kernels == ["liger: rms_norm, swiglu, rope, fused_linear_cross_entropy"]
    args = sft_config(cfg, runtime, RunDir(tmp_path / "run"))
    assert args.use_liger_kernel and args.liger_kernel_config == flags and args.loss_type == "nll"


def test_a_liger_run_records_its_kernels_and_learns_as_without_them(monkeypatch, tiny_model_dir, tmp_path):
    assert run_tiny(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "plain",
                                                                     "training.kernels": "none"}) == 0
    fake = FakeLiger()
    fake.install(monkeypatch)
    assert run_tiny(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "liger"}) == 0
    manifest = json.loads((tmp_path / "liger" / "manifest.json").read_text())
    assert manifest["runtime"]["kernels"] == ["liger: rms_norm, swiglu, rope, fused_linear_cross_entropy"]
    assert len(fake.kit_calls) == 1
    [(model, flags)] = fake.trainer_calls  # the Trainer applies the same kernels to the same model again
    assert model is fake.kit_calls[0][0] and flags == fake.kit_calls[0][1]
    # TRL's loss path with use_liger_kernel (plain nll) and without (chunked nll): the same loss
    assert losses(tmp_path / "liger") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


def test_auto_on_the_cpu_trains_exactly_as_none(tiny_model_dir, tmp_path):
    for setting in ("auto", "none"):  # ('none' is no run name: --adapter none means the base model)
        assert run_tiny(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": f"kernels-{setting}",
                                                                         "training.kernels": setting}) == 0
    assert losses(tmp_path / "kernels-auto") == losses(tmp_path / "kernels-none")
    manifest = json.loads((tmp_path / "kernels-auto" / "manifest.json").read_text())
    on_the_cpu = "none: Liger Kernel's Triton kernels need an NVIDIA GPU and this run trains on the CPU"
    assert manifest["runtime"]["kernels"] == [on_the_cpu]


def test_a_library_that_fails_to_import_is_skipped_by_auto_and_refused_by_liger(monkeypatch, tiny_model_dir):
    installed(monkeypatch, "liger_kernel", "triton")
    monkeypatch.setattr(kernels, "gpu_visible", lambda runtime: True)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)  # importing it raises ImportError
    runtime = backends.Runtime("hf", "cpu", "fp32", "test")
    model, _, _ = backends.load_for_training(cfg_with(f"model.name={tiny_model_dir}"), runtime)
    assert runtime.kernels[0].startswith("none: liger-kernel failed to import (ModuleNotFoundError")
    with pytest.raises(ConfigError, match="training.kernels: liger, but liger-kernel failed to import"):
        kernels.apply_kernels(model, cfg_with("training.kernels=liger"), runtime)


def losses(run) -> list[float]:
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]
