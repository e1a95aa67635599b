"""A training step reads nothing back from the model's device outside logging steps, and the figures logged are
the ones the Trainer and TRL log when they read every micro-batch."""

from __future__ import annotations

import collections
import json
import sys

import pytest
import torch
import transformers
from transformers import Trainer
from trl import SFTTrainer

from medqlora import train
from medqlora.cli import main

from .conftest import kit_argv

READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy")
# where the kit's training step runs (the model's own code and the optimizer's are the same in any loop)
STEP_CODE = ("transformers/trainer.py", "trl/trainer/sft_trainer.py", "/medqlora/")
# TRL's chunked loss, which the model's forward runs (TRL patches it): a plain loop on the model runs it too
MODEL_FORWARD = ("_chunked_cross_entropy_loss",)


def _with_callback(monkeypatch, callback, made: list | None = None) -> None:
    kit_trainer = train._trainer_class

    def with_it():
        cls = kit_trainer()

        class Watched(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(callback)
                if made is not None:
                    made.append(self)

        return Watched

    monkeypatch.setattr(train, "_trainer_class", with_it)


def test_training_steps_between_logging_steps_read_nothing_from_the_device(tiny_model_dir, tmp_path, monkeypatch):
    reads: collections.Counter[str] = collections.Counter()
    watching = {"on": False}

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            caller = frame.f_code.co_filename
            if (watching["on"] and any(part in caller for part in STEP_CODE)
                    and frame.f_code.co_name not in MODEL_FORWARD):
                reads[f"{name} {caller}:{frame.f_lineno}"] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))

    made, kept = [], []

    class Window(transformers.TrainerCallback):  # steps 3 to 5: no logging, no checkpoint, no epoch start
        def on_step_end(self, args, state, control, **kwargs):
            watching["on"] = 2 <= state.global_step < 5
            if state.global_step == 4:
                kept.extend(made[0]._metrics["train"]["entropy"])

    _with_callback(monkeypatch, Window(), made)
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "6", "training.logging_steps": "6", "training.save_steps": "0",
        "training.micro_batch_size": "2", "training.gradient_accumulation_steps": "2", "output.run_name": "r"}))
    assert code == 0
    assert not reads, reads
    # TRL's entropy of each of the 8 micro-batches so far, kept on the device without the autograd graph of its step
    assert len(kept) == 8 and all(isinstance(t, torch.Tensor) and not t.requires_grad for t in kept)


class _ReadingEveryStep:
    """The Trainer's and TRL's own per-micro-batch reads, in place of the kit's deferred ones."""

    compute_loss = SFTTrainer.compute_loss
    log = SFTTrainer.log
    _track_num_input_tokens = Trainer._track_num_input_tokens
    floating_point_ops = Trainer.floating_point_ops
    _save_checkpoint = SFTTrainer._save_checkpoint

    def tokens_seen(self):
        return self.state.num_input_tokens_seen


def test_deferred_reads_log_the_figures_read_at_every_step(tiny_model_dir, tmp_path, monkeypatch):
    def history(name: str, trainer_class) -> list[dict]:
        monkeypatch.setattr(train, "_trainer_class", trainer_class)
        code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
            "training.max_steps": "4", "training.logging_steps": "2", "training.save_steps": "0",
            "data.val_ratio": "0.25", "training.eval_steps": "3", "training.micro_batch_size": "2",
            "training.gradient_accumulation_steps": "2", "output.run_name": name}))
        assert code == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())["log_history"]

    kit_trainer = train._trainer_class
    deferred = history("deferred", kit_trainer)
    every_step = history("every-step", lambda: type("EveryStep", (_ReadingEveryStep, kit_trainer()), {}))
    assert [sorted(e) for e in deferred] == [sorted(e) for e in every_step]
    figures = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens", "num_input_tokens_seen",
               "total_flos", "train_loss", "eval_loss", "eval_num_tokens", "eval_entropy", "eval_mean_token_accuracy")
    for ours, theirs in zip(deferred, every_step, strict=True):
        assert {k: ours[k] for k in figures if k in ours} == pytest.approx({k: theirs[k] for k in figures if k in theirs},
                                                                           rel=1e-5)
    assert sum("entropy" in e and "num_input_tokens_seen" in e for e in deferred) == 2  # steps 2 and 4
    assert [e["step"] for e in deferred if "eval_num_tokens" in e][:1] == [3]  # between logging steps


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_batches_reach_a_gpu_without_the_host_waiting_and_losses_are_not_read_each_step(tmp_path, device):
    from medqlora.backends import Runtime
    from medqlora.config import load_config
    from medqlora.runs import RunDir
    from medqlora.trainer_args import common_args

    runtime = Runtime("hf", device, "bf16" if device == "cuda" else "fp32", "test")
    args = common_args(load_config(None, []), runtime, RunDir(tmp_path))
    assert args["accelerator_config"] == {"non_blocking": device == "cuda"}  # from pinned memory, on a GPU
    assert args["logging_nan_inf_filter"] is False  # a NaN loss is logged as NaN, and stops the run
