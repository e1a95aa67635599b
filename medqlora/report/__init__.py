"""Every report a run renders: the loss chart, the evaluation report (markdown, JSON, chart), the memory
table (QLoRA against full fine-tuning), the format advice, the sample responses and the end-of-run summary.
Files are written through the run folder's one atomic writer (runs.py); figures through ``save_png``.

    training.py    loss and reward charts, memory table, trainable parameters, the training summary
    evaluation.py  eval_report.md / eval.json / eval_chart.png, per-benchmark lines, format advice
    outputs.py     the end-of-run summary, the sample responses and the export report
    model_card.py  README.md of an export pushed to the Hub
    figures.py     save_png
"""

from .evaluation import (
    COMPLIANCE_LEARNED,
    eval_lines,
    eval_report_markdown,
    baseline_of,
    format_not_learned,
    lm_eval_report_markdown,
    plot_eval_chart,
    summary_row,
    write_eval_report,
)
from .figures import save_png
from .model_card import model_card
from .outputs import export_report_markdown, samples_markdown, summary_lines
from .training import (
    eval_loss_curve,
    eval_loss_text,
    loss_curve,
    loss_trend,
    memory_table,
    memory_table_line,
    memory_table_markdown,
    parameter_counts,
    plot_loss,
    plot_reward_curves,
    trainable_text,
    training_summary,
)

__all__ = [
    "COMPLIANCE_LEARNED", "model_card", "baseline_of", "eval_lines", "eval_loss_curve", "eval_loss_text", "eval_report_markdown",
    "export_report_markdown", "format_not_learned", "lm_eval_report_markdown", "loss_curve", "loss_trend",
    "memory_table", "memory_table_line", "memory_table_markdown", "parameter_counts", "plot_eval_chart",
    "plot_loss", "plot_reward_curves", "samples_markdown", "save_png", "summary_lines", "summary_row",
    "trainable_text", "training_summary", "write_eval_report",
]
