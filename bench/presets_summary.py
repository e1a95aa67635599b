"""The table of bench/presets_gpu.sh: per preset, peak GPU memory against its target card, tokens/s, time per step,
and the projected time of the preset's full recipe on the GPU it ran on (memory capped at the card).

    python bench/presets_summary.py RESULTS_DIR PRESET...

Projection: the recipe's optimizer steps (its own epochs or max_steps, its own batch, over the rows its hub datasets
hold, in FULL_ROWS) times the measured seconds per step. Rows longer or shorter than the bench's change the figure;
another GPU scales it by its speed (the run is capped in memory, not in speed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medqlora.config import load_config  # noqa: E402
from medqlora.train import planned_steps  # noqa: E402

# Rows of each hub dataset the presets train on (their cards): the full recipes' sizes.
FULL_ROWS = {
    "FreedomIntelligence/medical-o1-reasoning-SFT": 25_000,  # en: "about 25k English rows" (shared/data/README.md)
    "qiaojin/PubMedQA": 500,  # pqa_labeled: 1000 rows, of which the 500 official test questions are held out
    "lavita/medical-qa-datasets": 239_000,  # all-processed
    "BI55/MedText": 1_400,
}


def full_recipe_steps(preset: str) -> int | None:
    cfg = load_config(preset)
    n = 0.0
    for spec in cfg.data.datasets:
        rows = FULL_ROWS.get(spec.source)
        if rows is None:
            return None
        rows -= spec.val_first_n or 0
        n += min(rows, spec.max_samples or rows) * spec.weight
    return planned_steps(cfg, int(n * (1 - cfg.data.val_ratio)))


def row(results: Path, preset: str) -> dict:
    run = results / "runs" / preset
    out: dict = {"preset": preset}
    try:
        recorded = json.loads((run / "metrics.json").read_text())
        metrics = recorded["metrics"]
        memory = json.loads((run / "memory.json").read_text())["summary"]
        preflight = json.loads((run / "manifest.json").read_text()).get("preflight") or {}
    except (OSError, KeyError, ValueError) as err:
        out["status"] = f"no summary ({type(err).__name__}: {err}); see {preset}.log"
        return out
    steps = metrics["steps"]
    per_step = metrics["train_wall_s"] / steps if steps else None
    full = full_recipe_steps(preset)
    card, peak = preflight.get("card_gib"), memory.get("peak_reserved_gib")
    out.update(
        status="trained", gpu=memory.get("gpu"), steps=steps, train_examples=metrics.get("train_examples"),
        card_gib=card, peak_reserved_gib=peak,
        peak_percent_of_card=round(100 * peak / card, 1) if card and peak is not None else None,
        preflight_estimate_gib=preflight.get("estimate_gib"),
        tokens_per_second=metrics.get("tokens_per_second"),
        tokens_per_second_after_warmup=metrics.get("tokens_per_second_after_warmup"),
        seconds_per_step=round(per_step, 3) if per_step else None, train_wall_s=metrics.get("train_wall_s"),
        full_recipe_steps=full,
        full_recipe_hours_here=round(full * per_step / 3600, 2) if full and per_step else None,
        eval_loss=[e["eval_loss"] for e in recorded.get("log_history", []) if "eval_loss" in e],
    )
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | GPU | card (GiB) | peak reserved (GiB) | % of card | tok/s | tok/s after warm-up | s/step | steps "
             "| full recipe: steps | full recipe: hours here |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "trained":
            lines.append(f"| {r['preset']} | {r['status']} |" + " |" * 10)
            continue
        lines.append(f"| {r['preset']} | {r['gpu']} | {r['card_gib']} | {r['peak_reserved_gib']} | "
                     f"{r['peak_percent_of_card']} | {r['tokens_per_second']} | {r['tokens_per_second_after_warmup']} | "
                     f"{r['seconds_per_step']} | {r['steps']} | {r['full_recipe_steps']} | {r['full_recipe_hours_here']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    results, presets = Path(argv[0]), argv[1:]
    rows = [row(results, p) for p in presets]
    (results / "summary.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (results / "summary.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
