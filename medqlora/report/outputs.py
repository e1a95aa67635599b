"""The reports of what a run hands over: the end-of-run summary, the sample responses (sample_responses.md) and
the export report (export_report.md)."""

from __future__ import annotations

import json
from typing import Any

from ..secrets import printable


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


def export_report_markdown(report: dict[str, Any]) -> str:
    formats = ", ".join(report["formats"])
    lines = [f"# Export of {printable(report['adapter'])}", "",
             f"Base model: {printable(report['base_model'])}; formats: {formats}.", ""]
    if "merged_dtype" in report:
        header = ("| compared with the trained model (base + adapter) | max abs logit diff | mean abs logit diff | "
                  "top-1 agreement | identical greedy replies |")
        written = f"Merged {report['merged_dtype']} model ({report['merged_gb']} GB) written in {report['merge_and_save_s']} s."
        lines += [written, "", header, "|---|---|---|---|---|"]
        for key, label in (("merged_vs_trained", "merged (dequantized base + adapter)"),
                           ("original_16bit_plus_adapter_vs_trained", "original 16-bit weights + adapter")):
            if key in report:
                c = report[key]
                lines.append(f"| {label} | {c['max_abs_logit_diff']} | {c['mean_abs_logit_diff']} | "
                             f"{c['top1_agreement_percent']}% | {c['identical_greedy_replies']} |")
        lines.append("")
    if "gguf" in report:
        lines += [f"GGUF: {json.dumps(report['gguf'])}", ""]
    if "gguf_lora" in report:
        lines += [f"GGUF LoRA: {json.dumps(report['gguf_lora'])}", ""]
    return "\n".join(lines)
