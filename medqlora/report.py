"""Training curve, metrics and the end-of-run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]


def eval_loss_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The validation loss computed during training (training.eval_steps), by step."""
    by_step: dict[int, float] = {}
    for e in log_history:  # the evaluation after training repeats the last step's when eval_steps divides it
        if "eval_loss" in e and "step" in e:
            by_step.setdefault(int(e["step"]), float(e["eval_loss"]))
    return sorted(by_step.items())


def eval_loss_text(log_history: list[dict[str, Any]]) -> str:
    points = eval_loss_curve(log_history)
    return " -> ".join(f"{v:.4f} (step {s})" for s, v in points[:1] + points[-1:]) + \
        f" ({len(points)} evaluations, every training.eval_steps and at the end)"


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
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label="training")
    held_out = eval_loss_curve(log_history)
    if held_out:
        ax.plot([s for s, _ in held_out], [v for _, v in held_out], marker="s", markersize=4, label="validation")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title("Training and validation loss" if held_out else "Training loss")
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
