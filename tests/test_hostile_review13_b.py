"""Inputs of the thirteenth hostile round (second part): the commands advised after an interruption run with the
run's own config, a base model with a NaN weight, the kit's converted GGUF copy damaged, and run_mode's standard
output that cannot be written or whose reader went away."""

import json
import math
import shlex
import shutil
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import medqlora
from medqlora.cli import main
from medqlora.config import load_config
from medqlora.errors import ModelError, OutputLost

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides


def _advised(err: str, before: str, after: str = "\n") -> list[str]:
    """The arguments of the command the message advises between ``before`` and ``after`` (or the end of its line)."""
    line = err[err.index(before) + len(before):].split(after)[0].splitlines()[0]
    return shlex.split(line.split("medical_qlora_finetuning.py", 1)[-1])


# ---------------------------------------------------------------- ZJ01: advice carries the run's config


def test_the_evaluation_advised_after_an_interruption_scores_the_runs_own_benchmark(tiny_model_dir, tmp_path,
                                                                                    capsys, monkeypatch):
    """SIGTERM during --mode full --config FILE (eval max_items 5 in FILE): the advised --mode eval --adapter RUN,
    run as printed, scored the default config's benchmark (its 100 items), not the run's."""
    import signal

    from medqlora import signals
    from medqlora.recipe import Recipe

    config = tmp_path / "mine.yaml"
    config.write_text(load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out", **{
        "eval.benchmarks.0.max_items": "5", "training.max_steps": "1", "output.run_name": "cut"})).to_yaml())
    real = Recipe.evaluate

    def terminated(self, benchmarks, stage):
        if stage == "fine-tuned":
            signals._received = signal.SIGTERM
            raise KeyboardInterrupt
        return real(self, benchmarks, stage)

    monkeypatch.setattr(Recipe, "evaluate", terminated)
    result = run_cli(capsys, ["--mode", "full", "--config", str(config)])
    run = tmp_path / "out" / "cut"
    assert result.code == 143, result.err[-2000:]
    advised = _advised(result.err, "finish the evaluation with: python ")
    assert advised == ["--mode", "eval", "--config", str(run / "config.yaml"), "--adapter", str(run)]
    monkeypatch.setattr(Recipe, "evaluate", real)
    assert main(advised) == 0
    scored = json.loads((run / "eval.json").read_text())
    assert {row["items"] for row in _benchmark_rows(scored)} == {5}  # the run's 5 items, not the default's 100


def _benchmark_rows(scored: dict) -> list[dict]:
    """Every scored row of eval.json (baseline and fine-tuned, each benchmark) that says how many items it scored."""
    rows = []

    def walk(value):
        if isinstance(value, dict):
            if "items" in value and isinstance(value["items"], int):
                rows.append(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(scored)
    assert rows, scored
    return rows


def test_the_resume_advised_after_an_interrupted_training_continues_the_run_as_printed(tiny_model_dir, tmp_path,
                                                                                       capsys, monkeypatch):
    from medqlora import train

    kit_trainer = train._trainer_class()

    class InterruptedAtThree(kit_trainer):
        def training_step(self, *args, **kwargs):
            if self.state.global_step == 3:
                raise KeyboardInterrupt
            return super().training_step(*args, **kwargs)

    config = tmp_path / "mine.yaml"
    config.write_text(load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out", **{
        "training.max_steps": "5", "training.save_steps": "2", "output.run_name": "cut"})).to_yaml())
    monkeypatch.setattr(train, "_trainer_class", lambda: InterruptedAtThree)
    result = run_cli(capsys, ["--mode", "train", "--config", str(config)])
    run = tmp_path / "out" / "cut"
    assert result.code == 130 and "Interrupted (Ctrl-C) at step 3" in result.err, result.err[-2000:]
    advised = _advised(result.err, "Continue from its last checkpoint with ")
    advised[-1] = advised[-1].removesuffix(".")
    assert advised == ["--mode", "train", "--config", str(run / "config.yaml"), "--resume", str(run)]
    monkeypatch.setattr(train, "_trainer_class", lambda: kit_trainer)
    assert main(advised) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "trained" and manifest["resumed_from"] == "checkpoint-2"


def test_every_advice_on_a_stopped_run_names_its_config(tmp_path, capsys):
    """--resume of a run interrupted after its training, and --adapter of a run killed before its adapter was saved:
    both advise a command on the run, with its config.yaml."""
    from medqlora import adapters

    run = tmp_path / "outputs" / "my run"  # a blank in the path: the advised command quotes it
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "manifest.json").write_text(json.dumps({"status": "interrupted", "kit_version": "0.1.0",
                                                   "stage": "interrupted during evaluation after training: the "
                                                            "adapter is saved"}))
    code, _, err = run_cli(capsys, ["--mode", "train", "--resume", str(run)])
    assert code == 2
    assert_one_message(err, f"--mode eval --config '{run / 'config.yaml'}' --adapter '{run}'")
    killed = tmp_path / "outputs" / "killed"
    killed.mkdir(parents=True)
    (killed / "config.yaml").write_text(load_config(None).to_yaml())
    (killed / "manifest.json").write_text(json.dumps({"status": "running", "kit_version": "0.1.0"}))
    (killed / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (killed / "checkpoints" / "checkpoint-2" / adapters.CONFIG_NAME).write_text("{}")
    with pytest.raises(ModelError, match=f"--mode train --config {killed / 'config.yaml'} --resume {killed}"):
        adapters.locate(str(killed), "--adapter")


# ---------------------------------------------------------------- ZJ02, ZJ03: a base model with a NaN weight


def _broken_copy(model_dir: Path, where: Path, value: float) -> Path:
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(model_dir, where)
    weights = load_file(copy / "model.safetensors")
    weights["model.layers.1.self_attn.q_proj.weight"][3, 5] = value
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_base_model_with_a_nan_weight_is_refused_before_the_baseline_naming_the_tensor(tiny_model_dir, tmp_path,
                                                                                        capsys, value):
    """The baseline reported 0% and training stopped at step 1 blaming the learning rate; the weight was never named."""
    broken = _broken_copy(tiny_model_dir, tmp_path / "broken", value)
    for mode in (["--mode", "full"], ["--mode", "eval", "--adapter", "none"]):
        result = run_cli(capsys, kit_argv(broken, tmp_path / "out", *mode))
        assert result.code == 2, result.err[-2000:]
        assert_one_message(result.err, f"The base model {broken} holds NaN or infinite values in its weights: first "
                                       "in model.layers.1.self_attn.q_proj.weight.")
        assert "eval baseline" not in result.out and "learning rate" not in result.err
    assert not list((tmp_path / "out").glob("*/eval_baseline.json")) and not list((tmp_path / "out").glob("*/adapter"))


def test_the_check_reads_4bit_weights_by_their_quantization_state_not_their_packed_bytes():
    import torch

    from medqlora.backends.finite import non_finite_tensors

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.Parameter(torch.ones(4))
            self.packed = torch.nn.Parameter(torch.full((4,), math.nan), requires_grad=False)  # bytes read as floats
            self.packed.quant_state = SimpleNamespace(absmax=torch.zeros(2, dtype=torch.uint8), offset=torch.tensor(0.),
                                                      state2=SimpleNamespace(absmax=torch.ones(2), offset=None))
            self.ids = torch.nn.Parameter(torch.arange(3), requires_grad=False)  # not floating point: not checked

    model = Tiny()
    assert non_finite_tensors(model) == []
    model.packed.quant_state.state2.absmax[1] = math.inf
    model.norm.data[0] = math.nan
    assert non_finite_tensors(model) == ["norm", "packed (nested quantization absmax)"]
    big = Tiny()
    big.norm.data[:] = 3e38  # finite values whose float32 sum overflows: looked at value by value, not refused
    assert non_finite_tensors(big) == []


def test_a_nan_loss_at_the_first_step_points_at_the_base_model_not_the_learning_rate(tiny_model_dir, tmp_path, capsys,
                                                                                      monkeypatch):
    """(4-bit weights are checked in part only, and float16 can overflow): the loss of step 1 is computed before the
    learning rate acted, so lowering it cannot help."""
    from medqlora import train

    kit_trainer = train._trainer_class()

    class NanFromTheStart(kit_trainer):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            return (loss[0] * math.nan, *loss[1:]) if isinstance(loss, tuple) else loss * math.nan

    monkeypatch.setattr(train, "_trainer_class", lambda: NanFromTheStart)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train"))
    assert result.code == 2
    assert_one_message(result.err, "Training stopped at step 1: the ")
    assert ("before the learning rate could act, so the base model is the likely cause: "
            f"{tiny_model_dir} may hold NaN or infinite weights") in result.err
    assert "--set training.learning_rate=" not in result.err


# ---------------------------------------------------------------- ZJ04: the kit's converted GGUF copy damaged


def _fake_conversion(monkeypatch, tmp_path, conversions: list):
    """A GGUF 'converted' into a small but whole checkpoint (a real safetensors file), counting the conversions."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from medqlora.backends import gguf as conversion

    class Converted(SimpleNamespace):
        def save_pretrained(self, folder, **_):
            conversions.append(folder)
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "config.json").write_text('{"model_type": "llama"}')
            save_file({"w": torch.ones(1000)}, Path(folder) / "model.safetensors")

    class Tokenizer(SimpleNamespace):
        chat_template = None

        def save_pretrained(self, folder, **_):
            (Path(folder) / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(conversion, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(conversion, "check_gguf_file", lambda _: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *_, **__: Converted(config=SimpleNamespace(), generation_config=None))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *_, **__: Tokenizer())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    return conversion, gguf


@pytest.mark.parametrize("damage", ["truncated weights", "cut tokenizer.json", "no weights"])
def test_a_damaged_converted_gguf_in_the_kits_cache_is_converted_again(tmp_path, monkeypatch, capsys, damage):
    """A cut-off model.safetensors in the kit's cache read 'Cannot load model ... SafetensorError ... Check
    model.name', although model.name was right: the copy is the kit's own, and it is made again."""
    conversions = []
    conversion, gguf = _fake_conversion(monkeypatch, tmp_path, conversions)
    target = conversion.convert_gguf(gguf)
    weights = target / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "cut tokenizer.json":
        (target / "tokenizer.json").write_text('{"model": ')
    else:
        weights.unlink()
    from medqlora.backends.sources import _converted

    assert not _converted(str(gguf))  # nothing reads a damaged copy as the model's config (the plan, --dry-run)
    assert conversion.convert_gguf(gguf) == target and len(conversions) == 2
    said = capsys.readouterr().out
    assert f"warning: the kit's converted copy of model.gguf at {target} is damaged (its " in said or \
        "is damaged (it holds no weights" in said, said
    assert "converting it again" in said
    assert len(weights.read_bytes()) > 4000 and json.loads((target / "tokenizer.json").read_text()) == {}
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # the damaged copy is gone, nothing beside it
    assert conversion.convert_gguf(gguf) == target and len(conversions) == 2  # a whole copy is used as it is


def test_a_converted_copy_that_cannot_be_loaded_is_named_as_the_kits_cache_not_model_name(tmp_path, monkeypatch):
    """Damage the header checks cannot see (a tensor's type no longer fits its bytes): the load fails, and the message
    says the kit's cached conversion is at fault, and to delete it."""
    from safetensors import SafetensorError

    from medqlora.backends import gguf as conversion
    from medqlora.backends.hf import load_errors

    monkeypatch.setattr(conversion, "CACHE_DIR", tmp_path / "cache")
    copy = tmp_path / "cache" / "gguf" / "SmolLM2-abc123"
    copy.mkdir(parents=True)
    message = str(load_errors(str(copy), SafetensorError("Error while deserializing header: invalid tensor info")))
    assert message.startswith(f"Cannot load the kit's converted copy of the GGUF model at {copy} (SafetensorError")
    assert "Delete the folder, and the kit converts model.name again" in message and "Check model.name" not in message
    elsewhere = tmp_path / "models" / "mine"
    elsewhere.mkdir(parents=True)
    assert "Check model.name" in str(load_errors(str(elsewhere), SafetensorError("bad")))


@pytest.mark.slow
def test_a_run_on_the_default_model_with_its_cached_copy_cut_short_converts_it_again(smol_dir, tmp_path, capsys,
                                                                                      monkeypatch):
    from medqlora.backends import gguf as conversion

    monkeypatch.setattr(conversion, "CACHE_DIR", tmp_path / "cache")
    copy = shutil.copytree(smol_dir, tmp_path / "cache" / "gguf" / smol_dir.name)
    weights = copy / "model.safetensors"
    whole = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(whole // 3)  # a full disk, or a crash of the machine, while it was written
    result = run_cli(capsys, ["--mode", "chat", "--adapter", "none", "--prompt", "Hi", "--set",
                              "generation.max_new_tokens=4", "--set", f"output.dir={tmp_path / 'out'}"])
    assert result.code == 0, result.err[-2000:]
    assert f"the kit's converted copy of {smol_dir.name.rsplit('-', 1)[0]}.gguf at {copy} is damaged" in result.err
    assert weights.stat().st_size == whole


# ---------------------------------------------------------------- ZJ05, ZJ06: run_mode's standard output


class _Unwritable:
    """A standard output that fails every write: ``error`` (a full disk; a reader gone away)."""

    def __init__(self, error: OSError):
        self.error, self.writes = error, 0

    def write(self, text):
        self.writes += 1
        raise self.error

    def flush(self):
        pass


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    return load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out"))


def test_run_mode_with_a_full_standard_output_finishes_and_raises_the_kits_error(cfg, tmp_path, monkeypatch):
    """The command line turns it into exit 2; run_mode raised a raw OSError from the first progress line, and the
    evaluation stopped there."""
    import errno

    full = _Unwritable(OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(sys, "stdout", full)
    with pytest.raises(OutputLost, match=r"standard output could not be written \(No space left on device\)") as lost:
        medqlora.run_mode("eval", cfg, adapter="none")
    assert sys.stdout is full and full.writes == 1  # the guard is gone; after the failure nothing was written there
    run = lost.value.result.path
    assert run is not None and (run / "eval.json").is_file()  # the evaluation went on to its end


def test_run_mode_whose_reader_went_away_raises_the_kits_error_and_leaves_no_generation_running(cfg, monkeypatch):
    """A broken pipe while --prompt's answer streamed: a raw BrokenPipeError, and the generation thread left inside the
    model, which aborted the process at its exit (exit 134, the command line's too)."""
    before = threading.active_count()
    monkeypatch.setattr(sys, "stdout", _Unwritable(BrokenPipeError(32, "Broken pipe")))
    with pytest.raises(OutputLost, match=r"closed by its reader \(a broken pipe.*the command went on to its end"):
        medqlora.run_mode("chat", cfg, adapter="none", prompt="What is anaemia?")
    assert threading.active_count() == before
