"""The evaluation reports: eval_report.md (benchmarks, chain-of-thought format, perplexity, lm-eval), eval.json and
eval_chart.png; one line a benchmark as each evaluation ends and in the end-of-run summary; and the advice when
a reasoning format was not learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import evaluate, harness
from ..config import KitConfig
from ..distributed import is_main
from ..evaluate import REFERENCES, one_answer_warning
from ..messages import say
from ..runs import Files, RunDir
from .figures import save_png

COMPLIANCE_LEARNED = 20.0  # % of replies in the reasoning format below which the run did not learn it


def format_not_learned(cfg: KitConfig, tuned: dict[str, dict], steps: int | None) -> str | None:
    """What to change when the fine-tuned model's chain-of-thought format compliance stayed near zero.
    Measured with SmolLM2-135M on the 198 medical-o1 demo rows: 60 steps at lr 2e-4 left it at 0%; 150 steps at
    lr 1e-3 reached 75%."""
    low = {name: m["format_compliance"] for name, m in tuned.items()
           if isinstance(m.get("format_compliance"), (int, float)) and m["format_compliance"] < COMPLIANCE_LEARNED}
    if not low:
        return None
    t = cfg.training
    shown = ", ".join(f"{name} {value}%" for name, value in low.items())
    return (f"the chain-of-thought format was not learned ({shown} of replies follow it after {steps} steps at "
            f"learning rate {t.learning_rate:g}): train longer and with a higher learning rate, e.g. --set "
            f"training.max_steps={max(150, 2 * (steps or 0))} --set "
            f"training.learning_rate={max(t.learning_rate * 5, 1e-3):g} "
            "for a small model (SmolLM2-135M on the 198 demo rows: 60 steps at 2e-4 gave 0%, 150 steps at 1e-3 gave "
            "75%), or more epochs for a 3-8B model.")


def summary_row(name: str, row: dict[str, dict]) -> str:
    """One benchmark in the end-of-run summary: accuracy with macro-F1 and the majority-class rate beside it, and a
    warning when a model gives one answer to nearly every item."""
    base, tuned = (row.get(k) or {} for k in ("baseline", "fine_tuned"))
    if "accuracy" not in (tuned or base):
        return f"{name} format_compliance {base.get('format_compliance', '-')} -> {tuned.get('format_compliance', '-')}"
    either = tuned or base
    text = (f"{name} accuracy {base.get('accuracy', '-')} -> {tuned.get('accuracy', '-')}, macro-F1 "
            f"{base.get('macro_f1', '-')} -> {tuned.get('macro_f1', '-')}")
    if "majority_rate" in either:
        text += f" (always '{either['majority_label']}': {either['majority_rate']})"
    warnings = [w for stage, m in (("baseline", base), ("fine_tuned", tuned)) if m
                for w in [evaluate.one_answer_warning(name, stage, m)] if w]
    return text + "".join(f"; WARNING: {w}" for w in warnings)


def write_eval_report(cfg: KitConfig, run: RunDir, results: dict[str, dict], title: str,
                      perplexity: dict | None = None, lm_eval: dict[str, dict] | None = None,
                      lm_eval_folder: str = Files.LM_EVAL_TASKS, baseline: dict[str, str] | None = None) -> str:
    """eval_report.md, eval.json and eval_chart.png in the run folder (new names if they exist); ``lm_eval``: the
    lm-evaluation-harness results, a section of their own, scored on the task files in ``lm_eval_folder``;
    ``baseline``: what the baseline column scored, for an adapter trained from another one (baseline_of)."""
    rows = [summary_row(name, row) for name, row in results.items()]
    if perplexity:
        rows.append(f"perplexity {perplexity['before']} -> {perplexity['after']}")
    if lm_eval:
        rows.append(harness.summary_text(lm_eval))
    line = "; ".join(rows) + " (baseline -> fine-tuned)"
    if not is_main():
        return line
    md, js, png = run.unique(Files.EVAL_REPORT), run.unique(Files.EVAL_JSON), run.unique(Files.EVAL_CHART)
    text = eval_report_markdown(results, f"Evaluation: {title}", perplexity)
    if baseline:
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\n{baseline['note']}\n\n{rest}"
    run.write_text(md, text + ("\n" + lm_eval_report_markdown(lm_eval, lm_eval_folder) if lm_eval else ""))
    run.write_json(js, {"method": cfg.eval.method, **(baseline or {}), "benchmarks": results, "perplexity": perplexity,
                        **({"lm_eval": lm_eval, "lm_eval_tasks": lm_eval_folder} if lm_eval else {})})
    plot_eval_chart(results, run.path / png)
    say(f"evaluation report: {run.path / md}")
    return line


def baseline_of(start: str | None, model: str, scored_with_start: bool) -> dict[str, str] | None:
    """What the baseline column of an adapter trained from another one (its training.init_adapter, ``start``)
    scored: that start adapter (a run that continued it, scored before training: the delta is its own training), or
    the bare base model (an evaluation of the adapter afterwards: the delta holds both trainings). None without one."""
    if not start:
        return None
    name = Path(*Path(start).parts[-2:]).as_posix()  # its run folder and adapter folder, not this machine's path
    if scored_with_start:
        note = (f"This run started from the adapter {name} (training.init_adapter): the baseline column scores that "
                f"start adapter on {model}, before this run trained it further, so the delta is this run's training "
                "alone.")
    else:
        note = (f"This adapter's run started from the adapter {name} (training.init_adapter): the baseline column "
                f"scores the bare base model {model}, so the delta holds that start adapter's training too. Evaluate "
                f"the start adapter as well (--mode eval --adapter of its run) to see this run's share.")
    return {"init_adapter": name, "baseline": "the start adapter" if scored_with_start else "the bare base model",
            "note": note}


def eval_lines(stage: str, results: dict[str, dict]) -> list[str]:
    """One line a benchmark, said as each evaluation ends."""
    lines = []
    for name, m in results.items():
        if "format_compliance" in m:
            lines.append(f"eval {stage} {name}: format compliance {m['format_compliance']}%, reasoning "
                         f"{m['mean_reasoning_words']} words, ROUGE-L {m['rouge_l']} on {m['items']} items")
            continue
        lines.append(f"eval {stage} {name}: accuracy {m['accuracy']}% macro-F1 {m['macro_f1']}% on {m['items']} items"
                     f"{_duplicates_said(m)} ({m['method']}, {m['items_per_second']} items/s); "
                     f"predicted {m['predicted']}"
                     + (f"; {m['shortened']} prompts had their context shortened to fit eval.max_length"
                        if m.get("shortened") else ""))
    return lines


def _duplicates_said(metrics: dict[str, Any]) -> str:
    """The rows of a benchmark's source that repeat an item scored (each distinct question scored once)."""
    duplicates = metrics.get("duplicates")
    return f" ({duplicates} duplicate items scored once)" if duplicates else ""


def eval_report_markdown(results: dict[str, dict[str, Any]], title: str, perplexity: dict | None = None) -> str:
    cot = {n: r for n, r in results.items() if "format_compliance" in (r.get("fine_tuned") or r.get("baseline") or {})}
    results = {n: r for n, r in results.items() if n not in cot}
    lines = [f"# {title}", "", "| benchmark | items | method | baseline | fine-tuned | delta | macro-F1 (base / tuned) |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        base, tuned = row.get("baseline"), row.get("fine_tuned")
        any_run = tuned or base
        cells = [
            name, str(any_run["items"]), any_run["method"],
            _pct(base), _pct(tuned),
            f"{tuned['accuracy'] - base['accuracy']:+.1f}" if base and tuned else "",
            f"{_f1(base)} / {_f1(tuned)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in %. Unparsed replies (generate method) count as wrong and are listed below.", ""]
    for name, row in results.items():
        lines.append(f"## {name}")
        for stage in ("baseline", "fine_tuned"):
            if row.get(stage):
                m = row[stage]
                lines.append(f"- {stage}: predicted {m['predicted']} vs gold {m['gold']}; unparsed {m['unparsed']}; "
                             f"{m['items_per_second']} items/s; {m.get('shortened', 0)} prompts shortened")
                warning = one_answer_warning(name, stage, m)
                if warning:
                    lines.append(f"- **warning**: {warning}")
        any_run = row.get("fine_tuned") or row.get("baseline")
        if any_run.get("duplicates"):
            lines.append(f"- {any_run['duplicates']} duplicate items scored once: rows of the source that repeat "
                         "another's question and options count once in the accuracy, with their first row")
        if "majority_rate" in any_run:
            lines.append(f"- always answering the most common gold label ('{any_run['majority_label']}'): "
                         f"{any_run['majority_rate']}% on these items")
        for label, value in REFERENCES.get(name.lower(), []):
            lines.append(f"- reference: {label}: {value}")
        lines.append("")
    if cot:
        lines += ["## Chain-of-thought format", "",
                  "| set | items | format compliance % (base / tuned) | reasoning words (base / tuned) | "
                  "ROUGE-L of the final response (base / tuned) |", "|---|---|---|---|---|"]
        for name, row in cot.items():
            b, t = row.get("baseline") or {}, row.get("fine_tuned") or {}
            lines.append(f"| {name} | {(t or b)['items']} | {b.get('format_compliance', '-')} / "
                         f"{t.get('format_compliance', '-')} | {b.get('mean_reasoning_words', '-')} / "
                         f"{t.get('mean_reasoning_words', '-')} | {b.get('rouge_l', '-')} / {t.get('rouge_l', '-')} |")
        lines.append("")
    if perplexity:
        lines += ["## Held-out perplexity (reference responses, validation set)", "",
                  f"- before training: {perplexity.get('before', '-')}", f"- after training: {perplexity.get('after', '-')}",
                  ""]
    return "\n".join(lines)


def _pct(metrics: dict | None) -> str:
    return f"{metrics['accuracy']:.1f}" if metrics else "-"


def _f1(metrics: dict | None) -> str:
    return f"{metrics['macro_f1']:.1f}" if metrics else "-"


def plot_eval_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if "accuracy" in (results[n].get("fine_tuned") or results[n].get("baseline") or {})]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(names)), 3.6))
    for offset, stage, colour in ((-0.2, "baseline", "#9aa5b1"), (0.2, "fine_tuned", "#2f6db3")):
        values = [results[n][stage]["accuracy"] if results[n].get(stage) else 0 for n in names]
        ax.bar([i + offset for i in range(len(names))], values, width=0.4, label=stage.replace("_", "-"), color=colour)
    for i, name in enumerate(names):
        for label, value in REFERENCES.get(name.lower(), []):
            ax.hlines(value, i - 0.45, i + 0.45, colors="#c0392b", linestyles="dotted", linewidth=1)
            ax.text(i + 0.46, value, label.split(" (")[0], fontsize=6, va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def lm_eval_report_markdown(results: dict[str, dict[str, Any]], folder: str = Files.LM_EVAL_TASKS) -> str:
    lines = ["## lm-evaluation-harness", "",
             "| task | items | baseline acc | fine-tuned acc | delta | acc_norm (base / tuned) | "
             "macro-F1 (base / tuned) | items/s (base / tuned) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        base, tuned = row.get("baseline"), row.get("fine_tuned")
        either = tuned or base
        lines.append("| " + " | ".join([
            name, str(either["items"]), _cell(base, "lm_eval_acc"), _cell(tuned, "lm_eval_acc"),
            f"{tuned['lm_eval_acc'] - base['lm_eval_acc']:+.1f}" if base and tuned else "",
            f"{_cell(base, 'lm_eval_acc_norm')} / {_cell(tuned, 'lm_eval_acc_norm')}",
            f"{_cell(base, 'macro_f1')} / {_cell(tuned, 'macro_f1')}",
            f"{_cell(base, 'items_per_second')} / {_cell(tuned, 'items_per_second')}",
        ]) + " |")
    lines += ["", "lm-eval's zero-shot prompts and answer scoring (the log-likelihood of each whole answer; acc_norm "
              "divides it by the answer's length in bytes), on the same items as the kit's scorer where the benchmark "
              f"names match; the task files are in {folder}/. Accuracy in %.", ""]
    for name, row in results.items():
        for stage in ("baseline", "fine_tuned"):
            if row.get(stage):
                lines.append(f"- {name} {stage}: predicted {row[stage]['predicted']} vs gold {row[stage]['gold']}")
    return "\n".join(lines) + "\n"


def _cell(metrics: dict | None, key: str) -> str:
    return f"{metrics[key]:.1f}" if metrics and isinstance(metrics.get(key), (int, float)) else "-"
