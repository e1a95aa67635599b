"""Benchmarks: PubMedQA (official test split) and multiple choice, scored by answer likelihood or by
parsing a generated reply, with the same prompts the kit trains on.

    items.py       the benchmarks' items, and the check that an adapter did not train on them
    prompts.py     an item's prompt, fitted to the evaluation length
    likelihood.py  eval.method: likelihood (the log-probability of each answer's first token)
    generation.py  eval.method: generate (the answer extracted from a greedy reply)
    metrics.py     accuracy, macro-F1, the one-answer warning, reference figures
    cot.py         chain-of-thought benchmarks: format compliance, reasoning length, ROUGE-L
"""

from __future__ import annotations

import time
from typing import Any

from ..config import KitConfig
from ..errors import ConfigError
from ..distributed import shared_map
from .cot import cot_metrics, rouge_l, score_cot, split_cot
from .generation import FINAL_RESPONSE, extract_answer, generated_replies, score_generate
from .items import (
    COT_VALIDATION,
    ITEM_LOADERS,
    PUBMEDQA_LABELS,
    EvalItem,
    check_answer_stated_once,
    check_not_trained_on,
    cot_items_from,
    cot_style_of,
    duplicates_of,
    load_benchmarks,
    load_items,
)
from .likelihood import answer_token_ids, score_likelihood
from .metrics import REFERENCES, classification_metrics, one_answer_warning, side_by_side, speed_of
from .prompts import check_item_texts, check_prompts_fit, evaluation_length, item_prompt, prompt_ids

__all__ = [
    "COT_VALIDATION", "FINAL_RESPONSE", "ITEM_LOADERS", "PUBMEDQA_LABELS", "REFERENCES", "EvalItem",
    "answer_token_ids", "check_answer_stated_once", "check_not_trained_on", "check_something_to_score",
    "check_item_texts", "check_prompts_fit",
    "classification_metrics", "cot_items_from",
    "cot_metrics", "cot_style_of", "duplicates_of", "evaluate", "evaluation_length", "extract_answer",
    "generated_replies",
    "item_prompt", "load_benchmarks", "load_items", "one_answer_warning", "prompt_ids", "rouge_l",
    "score_cot", "score_generate", "score_likelihood", "side_by_side", "split_cot",
]


def check_something_to_score(cfg: KitConfig) -> None:
    """--mode eval with no benchmark and no lm-eval harness would load the model and report no score at all."""
    if not cfg.eval.benchmarks and cfg.eval.harness is None:
        raise ConfigError("--mode eval has nothing to score: eval.benchmarks is empty and eval.harness is not set. "
                          "List a benchmark in eval.benchmarks (e.g. {name: pubmedqa, kind: pubmedqa}, the official "
                          "test split), or set eval.harness: lm-eval with its eval.lm_eval.tasks.")


def evaluate(cfg: KitConfig, model: Any, tokenizer: Any, items_by_bench: dict[str, list[EvalItem]]) -> dict:
    """Score every benchmark with the configured method; returns {benchmark: metrics}."""
    check_item_texts(cfg, tokenizer, items_by_bench)  # a tokenizer read only now (a hub model) checks them here
    results = {}
    score = score_likelihood if cfg.eval.method == "likelihood" else score_generate
    for name, items in items_by_bench.items():
        style = cot_style_of(cfg, name)
        if style is not None:
            results[name] = score_cot(cfg, model, tokenizer, items, style)
            continue
        began = time.perf_counter()
        scored = shared_map(lambda part: score(cfg, model, tokenizer, part), items)
        seconds = time.perf_counter() - began
        labels = list(dict.fromkeys(choice for item in items for choice in item.choices))  # sets mixing 4 and 5 options
        metrics = classification_metrics([i.gold for i in items], [s["pred"] for s in scored], labels)
        metrics.update(method=cfg.eval.method, **speed_of(len(items), seconds), duplicates=duplicates_of(items),
                       shortened=sum(bool(s.get("shortened")) for s in scored),
                       per_item=[{"uid": i.uid, "gold": i.gold, **s} for i, s in zip(items, scored, strict=True)])
        results[name] = metrics
    return results
