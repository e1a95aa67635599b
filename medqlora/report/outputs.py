"""The reports of what a run hands over: the end-of-run summary and the sample responses (sample_responses.md)."""

from __future__ import annotations

from typing import Any


def summary_lines(summary: dict[str, Any]) -> list[str]:
    from ..secrets import printable

    lines = ["", "=" * 72, f"medqlora run: {printable(summary['run_dir'], 500)}"]
    for key, label in [
        ("backend", "backend"),
        ("model", "base model"),
        ("train_examples", "training examples"),
        ("steps", "optimizer steps"),
        ("loss", "training loss"),
        ("validation_loss", "validation loss"),
        ("rewards", "GRPO rewards (first -> last)"),
        ("tokens_per_second", "tokens/s (no padding)"),
        ("train_wall_s", "training time (s)"),
        ("total_wall_s", "total time (s)"),
        ("memory", "memory"),
        ("memory_table", "QLoRA vs full fine-tuning"),
        ("adapter_mb", "adapter size (MB)"),
        ("eval", "evaluation"),
        ("format_not_learned", "WARNING: format not learned"),
        ("samples", "sample responses"),
        ("export_dir", "export folder"),
        ("export", "export"),
    ]:
        if summary.get(key) is not None:
            lines.append(f"  {label:<28} {printable(summary[key], 1000)}")
    lines.append("=" * 72)
    return lines


def samples_markdown(results: list[dict[str, Any]], title: str) -> str:
    parts = [f"# {title}\n"]
    for r in results:
        cut = f"*Note: {r['cut']}*\n\n" if r.get("cut") else ""
        parts.append(f"## {r['id']}\n\n**Question:** {r['question']}\n\n{cut}**Answer:**\n\n{r['response']}\n")
    return "\n".join(parts)
