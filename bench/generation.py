"""Generation throughput: the kit's answering path before and after length-ordered batches and the static cache.

One process loads the model once through the kit (as `--mode test` and the generate evaluation do), answers the
same prompts greedily along both paths and writes generated tokens/s, the speed-up and whether the texts are
identical to --out (generation.json, generation.md).

    python bench/generation.py --model /tmp/llama31-8b-random --prompts 128 --max-new-tokens 128 --batch-size 8 \\
        --out bench/results/h200-generation

paths:     before   batches in the caller's order, a cache that grows with each token (the kit before ordering)
           after    the kit's path now: batches of neighbouring prompt lengths, the static cache where
                    generation.static_cache resolves on (auto: hf backend, NVIDIA GPU, a compilable model, and
                    at least 2048 decoding steps: batches x max new tokens, e.g. 16 batches x 128 tokens)
prompts:   PubMedQA test questions from the shipped data/pubmedqa/ori_pqal.json: even ones as the generate
           evaluation asks them (with the abstract, hundreds of tokens), odd ones as a sample query (the question
           alone, tens of tokens), or medical-o1 questions instead with --medical-o1 FILE (a local JSON/JSONL copy)

Each path first answers one batch untimed (CUDA start-up, and on the after path the compilation of the decoding
step, reported as warmup_s). --alone K answers the first K prompts one at a time along the before path: on a model
of random weights in bf16 the next tokens are near ties, so any change of batch shape can flip a greedy choice;
how often batching alone flips one is the yardstick for a mismatch between the paths. No timing is asserted
anywhere: this only measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from medqlora import backends
    from medqlora.config import load_config

    overrides = [f"model.name={args.model}", f"backend={args.backend}", f"model.load_in_4bit={args.load_in_4bit}",
                 f"model.dtype={args.dtype}", f"generation.max_new_tokens={args.max_new_tokens}",
                 f"generation.batch_size={args.batch_size}", "generation.temperature=0",
                 f"generation.static_cache={args.static_cache}", f"eval.max_new_tokens={args.max_new_tokens}"]
    cfg = load_config(None, overrides)
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer = backends.load_for_inference(cfg, runtime, None)
    if args.tokenizer_from:
        from transformers import AutoTokenizer

        source = args.tokenizer_from
        tokenizer = backends.prepare_tokenizer(
            AutoTokenizer.from_pretrained(source if Path(source).is_dir() else backends.resolve_model_source(source)),
            cfg)
    return cfg, model, tokenizer


def prompts(cfg: Any, model: Any, tokenizer: Any, args: argparse.Namespace) -> list[str]:
    """args.prompts chat-templated prompts of very different lengths, in a fixed order."""
    from medqlora.config import BenchmarkSpec
    from medqlora.data import query_prompt, render_prompt
    from medqlora.evaluate import evaluation_length, load_items
    from medqlora.evaluate.prompts import prompt_ids

    items = load_items(BenchmarkSpec(name="pubmedqa", kind="pubmedqa", max_items=args.prompts), cfg.training.seed)
    questions = medical_o1_questions(args) if args.medical_o1 else [
        item.example.fields.get("question") or item.example.prompt for item in items]
    limit = evaluation_length(cfg, model) - args.max_new_tokens
    out = []
    for n in range(args.prompts):
        if n % 2 == 0:
            ids, _ = prompt_ids(cfg, tokenizer, items[n % len(items)], limit, reserved=args.max_new_tokens)
            out.append(tokenizer.decode(ids))
        else:
            out.append(render_prompt(tokenizer, *query_prompt(cfg.data, questions[n % len(questions)])))
    return out


def medical_o1_questions(args: argparse.Namespace) -> list[str]:
    from medqlora.config import DatasetSpec
    from medqlora.data import format_rows, load_rows

    spec = DatasetSpec(source=str(Path(args.medical_o1).resolve()), format="medical_o1")
    return [example.prompt for example in format_rows(spec, load_rows(spec))][: args.prompts]


def measure(cfg: Any, model: Any, tokenizer: Any, texts: list[str], decoding: Any, args: argparse.Namespace
            ) -> tuple[dict[str, Any], list[str]]:
    from medqlora.generate import _generate

    # the warm-up batch holds the longest prompts: with the static cache it compiles the shape the timed run uses
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    longest = sorted(range(len(texts)), key=lambda i: -lengths[i])[: args.batch_size]
    began = time.perf_counter()
    _generate(cfg, model, tokenizer, [texts[i] for i in longest], args.max_new_tokens, args.batch_size, decoding)
    warmup = time.perf_counter() - began
    began = time.perf_counter()
    replies = _generate(cfg, model, tokenizer, texts, args.max_new_tokens, args.batch_size, decoding)
    seconds = time.perf_counter() - began
    tokens = sum(n for _, n in replies)
    return ({"by_length": decoding.by_length, "static_cache": decoding.static_cache, "warmup_s": round(warmup, 2),
             "seconds": round(seconds, 2), "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)},
            [text for text, _ in replies])


def agreement(reference: list[str], other: list[str]) -> dict[str, Any]:
    same = [a == b for a, b in zip(reference, other, strict=False)]
    prefix = [_common_prefix(a, b) / max(len(a), 1) for a, b in zip(reference, other, strict=False)]
    return {"identical": all(same), "identical_prompts": f"{sum(same)}/{len(same)}",
            "mean_common_prefix_percent": round(100 * sum(prefix) / max(len(prefix), 1), 1)}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from medqlora.generate import ARRIVAL_ORDER, _generate, decoding_for

    cfg, model, tokenizer = load(args)
    texts = prompts(cfg, model, tokenizer, args)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    before, before_texts = measure(cfg, model, tokenizer, texts, ARRIVAL_ORDER, args)
    decoding = decoding_for(cfg, model, len(texts), args.max_new_tokens, args.batch_size)
    after, after_texts = measure(cfg, model, tokenizer, texts, decoding, args)
    result: dict[str, Any] = {
        "model": args.model, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "dtype": str(next(model.parameters()).dtype), "prompts": len(texts), "prompt_tokens_min": min(lengths),
        "prompt_tokens_max": max(lengths), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "before": before, "after": after, "speedup": round(after["tokens_per_s"] / before["tokens_per_s"], 2),
        "after_vs_before": agreement(before_texts, after_texts),
    }
    if args.also_batch_sizes:
        result["other_batch_sizes"] = other_batch_sizes(cfg, model, tokenizer, texts, after_texts, args)
    if args.alone:
        alone = [_generate(cfg, model, tokenizer, [t], args.max_new_tokens, 1, ARRIVAL_ORDER)[0][0]
                 for t in texts[: args.alone]]
        result["before_vs_alone"] = agreement(alone, before_texts[: args.alone])
        result["after_vs_alone"] = agreement(alone, after_texts[: args.alone])
    return result


def other_batch_sizes(cfg: Any, model: Any, tokenizer: Any, texts: list[str], reference: list[str],
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    """The after path again at each batch size of --also-batch-sizes: tokens/s, the peak memory of the generation
    itself (the weights are counted before it) and how many texts match the after path at --batch-size."""
    import torch

    from medqlora.generate import decoding_for

    rows = []
    for size in args.also_batch_sizes:
        sized = argparse.Namespace(**{**vars(args), "batch_size": size})
        decoding = decoding_for(cfg, model, len(texts), args.max_new_tokens, size)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            weights = torch.cuda.memory_allocated()
        measured, replies = measure(cfg, model, tokenizer, texts, decoding, sized)
        measured["batch_size"] = size
        if cuda:
            measured["peak_allocated_over_weights_gib"] = round((torch.cuda.max_memory_allocated() - weights) / 2**30, 2)
        measured["vs_after"] = agreement(reference, replies)
        rows.append(measured)
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = ["| path | ordered by length | static cache | warm-up s | s | generated tokens | tokens/s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("before", "after"):
        r = result[name]
        rows.append(f"| {name} | {r['by_length']} | {r['static_cache']} | {r['warmup_s']} | {r['seconds']} | "
                    f"{r['generated_tokens']} | {r['tokens_per_s']} |")
    same = result["after_vs_before"]
    rows += ["", f"{result['prompts']} prompts of {result['prompt_tokens_min']}-{result['prompt_tokens_max']} "
             f"tokens, {result['max_new_tokens']} new tokens, batch {result['batch_size']}, {result['device']}, "
             f"{result['dtype']}: speed-up x{result['speedup']}; greedy texts identical: {same['identical']} "
             f"({same['identical_prompts']})."]
    if result.get("other_batch_sizes"):
        rows += ["", "| after path, batch | tokens/s | x batch " + str(result["batch_size"]) + " | peak GiB over "
                 "the weights | identical to batch " + str(result["batch_size"]) + " |", "| --- | --- | --- | --- | --- |"]
        for r in result["other_batch_sizes"]:
            rows.append(f"| {r['batch_size']} | {r['tokens_per_s']} | "
                        f"x{round(r['tokens_per_s'] / result['after']['tokens_per_s'], 2)} | "
                        f"{r.get('peak_allocated_over_weights_gib', '-')} | {r['vs_after']['identical_prompts']} |")
    for key in ("before_vs_alone", "after_vs_alone"):
        if key in result:
            rows.append(f"{key}: identical {result[key]['identical_prompts']}, mean common prefix "
                        f"{result[key]['mean_common_prefix_percent']}%.")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a checkpoint folder (or any model.name the kit takes)")
    p.add_argument("--tokenizer-from", default=None, help="a tokenizer other than the model folder's")
    p.add_argument("--backend", default="hf", choices=["hf", "unsloth", "auto"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--load-in-4bit", action="store_true", help="NF4 weights (bitsandbytes: no compiled decoding)")
    p.add_argument("--static-cache", default="auto", choices=["auto", "true", "false"],
                   help="generation.static_cache for the after path")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--also-batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                   help="also time the after path at these batch sizes (e.g. 16,32,64)")
    p.add_argument("--alone", type=int, default=8, help="answer the first K prompts one at a time (0: skip)")
    p.add_argument("--medical-o1", default=None, help="medical-o1 rows (JSON/JSONL) for the short prompts")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-generation")
    args = p.parse_args()
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "generation.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
