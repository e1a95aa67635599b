"""The scores: accuracy and macro-F1 against the gold answers, the warning for a model that gives one answer to
nearly every item, the published reference figures, and baseline and fine-tuned results side by side."""

from __future__ import annotations

import math
from typing import Any

REFERENCES: dict[str, list[tuple[str, float]]] = {
    "pubmedqa": [
        ("majority class (always 'yes')", 55.2),
        ("BioBERT (Jin et al. 2019)", 68.1),
        ("single human annotator (Jin et al. 2019)", 78.0),
        ("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper, Table 1)", 75.2),
        ("HuatuoGPT-o1-8B (HuatuoGPT-o1 paper, Table 1)", 79.2),
    ],
    "medqa": [("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper)", 58.7), ("HuatuoGPT-o1-8B", 72.6)],
    "medmcqa": [("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper)", 56.0), ("HuatuoGPT-o1-8B", 60.4)],
}


def classification_metrics(gold: list[str], pred: list[str | None], labels: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 (as PubMedQA's evaluation.py: per-label F1, 0 where undefined, averaged)."""
    n = len(gold)
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    unparsed = sum(p is None for p in pred)
    correct = sum(g == p for g, p in zip(gold, pred, strict=True))
    gold_counts = {label: sum(g == label for g in gold) for label in labels}
    majority = max(labels, key=lambda label: gold_counts[label])
    return {
        "items": n,
        "accuracy": round(100 * correct / n, 2) if n else math.nan,
        "macro_f1": round(100 * sum(f1s) / len(f1s), 2),
        "unparsed": unparsed,
        "accuracy_of_parsed": round(100 * correct / (n - unparsed), 2) if n - unparsed else math.nan,
        "predicted": {label: sum(p == label for p in pred) for label in labels},
        "gold": gold_counts,
        "majority_label": majority,
        "majority_rate": round(100 * gold_counts[majority] / n, 2) if n else math.nan,
    }


ONE_ANSWER_SHARE = 0.9  # a model that gives one answer to more items than this is flagged in the summary


def one_answer_warning(name: str, stage: str, metrics: dict[str, Any]) -> str | None:
    """A sentence when the model gives one answer to more than 90% of the items, with how its accuracy compares to
    always giving the most common gold answer; None otherwise."""
    predicted = metrics.get("predicted") or {}
    if not predicted or not metrics.get("items") or "majority_rate" not in metrics:
        return None
    label, count = max(predicted.items(), key=lambda kv: kv[1])
    share = count / metrics["items"]
    if share <= ONE_ANSWER_SHARE:
        return None
    accuracy, majority = metrics["accuracy"], metrics["majority_rate"]
    compared = "below" if accuracy < majority else "the same as" if accuracy == majority else "above"
    return (f"the {stage.replace('_', '-')} model answers '{label}' to {100 * share:.0f}% of {name}'s items; its "
            f"accuracy {metrics['accuracy']:.1f}% is {compared} always answering '{metrics['majority_label']}' "
            f"({metrics['majority_rate']:.1f}%): read macro-F1 ({metrics['macro_f1']:.1f}) beside accuracy")


def side_by_side(baseline: dict | None, fine_tuned: dict | None) -> dict[str, dict[str, Any]]:
    """Each benchmark's baseline and fine-tuned results together: {name: {baseline, fine_tuned}} (either may be
    None)."""
    names = list((fine_tuned or baseline or {}).keys())
    return {n: {"baseline": (baseline or {}).get(n), "fine_tuned": (fine_tuned or {}).get(n)} for n in names}


def speed_of(n: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "items_per_second": round(n / max(seconds, 1e-9), 2)}
