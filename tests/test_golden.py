"""The loss curve of a tiny deterministic CPU run, pinned: a change to what is trained on (masking, chat
rendering, packing, the order of rows), to the loss or to the optimizer's schedule moves it; rounding does not.

The run: the tiny random Llama (seed 0, fp32, SmolLM2's tokenizer), the default config's PubMedQA rows (8 of
them, seed 3407), 4 steps of 4 examples at learning rate 0.01 with no warm-up, on the hf backend.
"""

import json

import pytest

from .conftest import run_tiny

# log_history's "loss" per step of the run above (torch 2.13 CPU, transformers 5.17, one process).
GOLDEN = [10.833907, 10.804288, 10.717874, 10.715191]

# How far a correct kit may land from GOLDEN on another machine, as the arithmetic bounds it:
# - the first loss sees no update: only the order of fp32 sums differs (another BLAS, thread count or SIMD
#   width). Its longest reduction, the log-sum-exp over 49,152 logits, is off by about sqrt(n) * 2^-24 =
#   1.3e-5 of the loss (n * 2^-24 = 2.9e-3 in the worst case, which random rounding does not reach): 1e-4
#   relative holds it with a margin of 8;
# - later losses also carry weights that differ: Adam moves every weight by about the learning rate a step
#   whatever its gradient's size, so a rounding difference matters only where a gradient is at rounding level,
#   and two such runs were measured 0.03% of the distance trained apart (tests/test_distributed.py's
#   reduction_order_bound). 1% of the distance the loss has fallen lies 30 times above that and far below
#   what a changed mask, row order or schedule does (the first loss alone moves by 1e-2 or more).
FIRST_LOSS_RELATIVE = 1e-4
SHARE_OF_DISTANCE_TRAINED = 0.01


def tolerance(step: int) -> float:
    return FIRST_LOSS_RELATIVE * GOLDEN[0] + SHARE_OF_DISTANCE_TRAINED * abs(GOLDEN[0] - GOLDEN[step])


def test_the_loss_curve_of_a_tiny_deterministic_run_is_the_pinned_one(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{
        "training.max_steps": "4", "training.learning_rate": "0.01", "training.warmup_ratio": "0",
        "training.micro_batch_size": "4", "data.datasets.0.max_samples": "8", "training.seed": "3407",
        "output.run_name": "golden"}) == 0
    history = json.loads((out / "golden" / "metrics.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == len(GOLDEN)
    for step, (loss, pinned) in enumerate(zip(losses, GOLDEN, strict=True)):
        assert loss == pytest.approx(pinned, abs=tolerance(step)), (step, losses)
