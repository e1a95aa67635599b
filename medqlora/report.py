"""Training curve, metrics and the end-of-run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]


def loss_trend(log_history: list[dict[str, Any]]) -> str | None:
    """Mean loss over the first and the last tenth of the logged steps (single steps are noisy)."""
    losses = [loss for _, loss in loss_curve(log_history)]
    if not losses:
        return None
    k = max(1, len(losses) // 10)
    return f"{sum(losses[:k]) / k:.4f} -> {sum(losses[-k:]) / k:.4f} (mean of first/last {k} logged steps)"


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> bool:
    points = loss_curve(log_history)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return True


def save_png(fig: Any, path: Path) -> None:
    """The figure as PNG bytes, written through the run folder's writer (no link at ``path`` is followed)."""
    import io

    import matplotlib.pyplot as plt

    from .runs import write_file_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_file_bytes(path, buffer.getvalue())


def summary_lines(summary: dict[str, Any]) -> list[str]:
    from .secrets import printable

    lines = ["", "=" * 72, f"medqlora run: {printable(summary['run_dir'], 500)}"]
    for key, label in [
        ("backend", "backend"),
        ("model", "base model"),
        ("train_examples", "training examples"),
        ("steps", "optimizer steps"),
        ("loss", "training loss"),
        ("rewards", "GRPO rewards (first -> last)"),
        ("tokens_per_second", "tokens/s (no padding)"),
        ("train_wall_s", "training time (s)"),
        ("total_wall_s", "total time (s)"),
        ("memory", "memory"),
        ("adapter_mb", "adapter size (MB)"),
        ("eval", "evaluation"),
        ("samples", "sample responses"),
        ("export_dir", "export folder"),
        ("export", "export"),
    ]:
        if summary.get(key) is not None:
            lines.append(f"  {label:<28} {printable(summary[key], 1000)}")
    lines.append("=" * 72)
    return lines
