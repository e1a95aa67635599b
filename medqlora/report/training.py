"""The training reports: the loss and GRPO reward charts, the memory table (QLoRA against full fine-tuning), the
trainable parameters, and the training part of the end-of-run summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import fit
from ..config import KitConfig
from .figures import save_png

if TYPE_CHECKING:
    from ..backends import Runtime


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
    """Mean loss over the first and the last tenth of the logged steps (single steps are noisy); one logged step
    has no trend, and says so."""
    points = loss_curve(log_history)
    losses = [loss for _, loss in points]
    if not losses:
        return None
    if len(points) == 1:
        return (f"{losses[0]:.4f} at step {points[0][0]}, the only logged step: no trend to show (a smaller "
                "training.logging_steps logs more steps)")
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


def plot_reward_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Per-reward means, KL and completion length against the step."""
    series = sorted({k for e in history for k in e if k.startswith("rewards/") and k.endswith("/mean")})
    extra = [k for k in ("reward", "kl", "completions/mean_length", "loss") if any(k in e for e in history)]
    if not series and not extra:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = series + extra
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.8 * len(names)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], names, strict=True):
        points = [(e["step"], e[key]) for e in history if key in e and "step" in e and "train_runtime" not in e]
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=2)
        ax.set_ylabel(key.removeprefix("rewards/").removesuffix("/mean"), fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.suptitle("GRPO: rewards, KL and completion length")
    fig.tight_layout()
    save_png(fig, path)
    return True


def memory_table(cfg: KitConfig, runtime: Runtime, shape: fit.ModelShape | None, model: Any,
                 memory_report: dict[str, Any]) -> dict[str, Any] | None:
    """The table the setups report: trainable parameters, and QLoRA's peak memory (measured on a GPU, estimated
    by the kit's memory model too) against full fine-tuning with the same batch (estimated: never measured)."""
    if shape is None:
        return None
    trainable, total = parameter_counts(model)
    t = cfg.training
    qlora = fit.estimate(shape, cfg, runtime.backend, t.micro_batch_size, t.gradient_checkpointing)
    full = fit.full_finetune_estimate(shape, cfg, t.micro_batch_size, t.gradient_checkpointing)
    return {
        "trainable_parameters": trainable,
        "total_parameters": shape.total_params(),
        "trainable_percent": round(100 * trainable / max(shape.total_params(), 1), 3),
        "lora_parameters_by_shape": shape.lora_params(cfg.lora.r, cfg.lora.target_modules),
        "qlora_peak_reserved_gib_measured": memory_report.get("summary", {}).get("peak_reserved_gib"),
        "qlora_estimated_gib": qlora.total_gib,
        "full_finetuning_estimated_gib": full["total_gib"],
        "full_finetuning_estimate": full,
        "full_finetuning_note": fit.FULL_FT_NOTE,
        "batch": f"{t.micro_batch_size} x {cfg.model.max_seq_length} tokens, checkpointing "
                 f"{fit.checkpointing_name(t.gradient_checkpointing)}, optimizer {t.optimizer}",
    }


def memory_table_markdown(table: dict[str, Any]) -> str:
    measured = table["qlora_peak_reserved_gib_measured"]
    full = table["full_finetuning_estimate"]
    return "\n".join([
        "# Memory: QLoRA against full fine-tuning", "",
        f"Batch: {table['batch']}.", "",
        "| method | peak GPU memory (GiB) | trainable parameters |", "|---|---|---|",
        f"| QLoRA (4-bit base + LoRA), measured | {measured if measured is not None else 'not measured (no GPU)'} | "
        f"{table['trainable_parameters']:,} ({table['trainable_percent']}%) |",
        f"| QLoRA, the kit's estimate | {table['qlora_estimated_gib']} | |",
        f"| full fine-tuning, ESTIMATED | {table['full_finetuning_estimated_gib']} (weights {full['weights_gib']}, "
        f"gradients "
        f"{full['gradients_gib']}, optimizer + fp32 master {full['optimizer_and_master_gib']}, activations "
        f"{full['activations_gib']}) | {table['total_parameters']:,} (100%) |", "",
        f"Full fine-tuning: {table['full_finetuning_note']}.", ""])


def memory_table_line(table: dict[str, Any]) -> str:
    measured = table["qlora_peak_reserved_gib_measured"]
    qlora = f"{measured} GiB measured" if measured is not None else f"{table['qlora_estimated_gib']} GiB estimated"
    return (f"QLoRA {qlora} vs full fine-tuning {table['full_finetuning_estimated_gib']} GiB (an estimate, not "
            "measured); "
            f"trainable parameters {table['trainable_parameters']:,} ({table['trainable_percent']}%) (memory_table.md)")


def parameter_counts(model: Any) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts 4-bit weights by value, not by storage
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def trainable_text(model: Any) -> str:
    trainable, total = parameter_counts(model)
    return f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def training_summary(train_examples: int, metrics: dict[str, Any], log_history: list[dict[str, Any]],
                     memory_report: dict[str, Any], table: dict[str, Any] | None, adapter_mb: float) -> dict[str, Any]:
    """The training part of the end-of-run summary."""
    from .. import memory

    summary = {
        "train_examples": train_examples,
        "steps": metrics.get("steps"),
        "loss": loss_trend(log_history),
        **({"validation_loss": eval_loss_text(log_history)} if eval_loss_curve(log_history) else {}),
        "train_wall_s": metrics.get("train_wall_s"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "memory": memory.format_summary(memory_report),
        **({"memory_table": memory_table_line(table)} if table else {}),
        "adapter_mb": adapter_mb,
    }
    if metrics.get("rewards"):  # GRPO: each reward's mean over the first and last fifth of the steps
        summary["rewards"] = "; ".join(f"{k.removeprefix('rewards/').removesuffix('/mean')} {v['first']} -> {v['last']}"
                                       for k, v in metrics["rewards"].items())
    return summary
