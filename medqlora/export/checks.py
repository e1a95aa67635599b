"""Every export checked against the trained model (base + adapter, as in training): logits and greedy replies on
sample prompts, compared."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import backends
from ..config import KitConfig
from ..data import query_prompt, render_prompt
from ..generate import load_queries
from ..progress import bar


@dataclass
class Reference:
    """What the trained model (base + adapter, as in training) answers: the yardstick of every export."""

    prompts: list[str]
    logits: list[Any]  # float32 CPU tensors, one [tokens, vocab] per prompt
    greedy: list[list[int]]
    figures: dict[str, Any] = field(default_factory=dict)


def trained_reference(cfg: KitConfig, runtime: backends.Runtime, adapter: Path, source: str | None = None) -> Reference:
    """Logits and greedy tokens of the model exactly as trained (4-bit base + adapter on a GPU). ``source``: the
    model source resolved before."""
    began = time.perf_counter()
    model, tokenizer = backends.load_for_inference(cfg, runtime, adapter, source)
    questions = load_queries(cfg.generation.queries_file)[: cfg.export.compare_prompts]
    prompts = [render_prompt(tokenizer, *query_prompt(cfg.data, q["question"])) for q in questions]
    logits, greedy = _score(model, tokenizer, prompts, cfg.export.compare_tokens)
    figures = {"load_and_score_s": round(time.perf_counter() - began, 2), "prompts": len(prompts)}
    del model
    free_memory()
    return Reference(prompts, logits, greedy, figures)


def _score(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int) -> tuple[list[Any], list[list[int]]]:
    """Per prompt: the logits over the prompt and the greedy continuation (one at a time: no padding effects)."""
    import torch

    stops = backends.stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    logits, greedy = [], []
    with bar(len(prompts), "checking the export") as progress:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            with torch.inference_mode():
                logits.append(model(input_ids=ids).logits[0].float().cpu())
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            greedy.append(out[0, ids.shape[1]:].tolist())
            progress.update(1)
    return logits, greedy


def compare(reference: Reference, model: Any, tokenizer: Any) -> dict[str, Any]:
    """How far a model is from the trained one: logit differences, top-1 agreement, identical greedy replies."""
    import torch

    logits, greedy = _score(model, tokenizer, reference.prompts, max(len(g) for g in reference.greedy))
    del model
    free_memory()
    diffs = [(a - b).abs() for a, b in zip(logits, reference.logits, strict=True)]
    top1 = [(a.argmax(-1) == b.argmax(-1)).float().mean().item() for a, b in zip(logits, reference.logits, strict=True)]
    same = sum(g[: len(r)] == r for g, r in zip(greedy, reference.greedy, strict=True))
    scale = max(r.abs().max().item() for r in reference.logits)
    return {
        "max_abs_logit_diff": round(max(d.max().item() for d in diffs), 5),
        "mean_abs_logit_diff": round(torch.cat([d.flatten() for d in diffs]).mean().item(), 6),
        "largest_logit": round(scale, 3),
        "top1_agreement_percent": round(100 * sum(top1) / len(top1), 2),
        "identical_greedy_replies": f"{same}/{len(greedy)}",
        "first_divergence": _first_divergence(greedy, reference.greedy),
    }


def _first_divergence(greedy: list[list[int]], expected: list[list[int]]) -> list[int | None]:
    found: list[int | None] = []
    for g, r in zip(greedy, expected, strict=True):
        found.append(next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), None if g[: len(r)] == r else len(g)))
    return found


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def folder_gb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9, 3)
