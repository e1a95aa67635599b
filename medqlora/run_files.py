"""The names of the files and folders the kit writes in a run folder, in one place (a module of its own, so
that modules below runs.py in the import order name them too). The files inside adapter/ are PEFT's, named in
adapters.py (CONFIG_NAME, WEIGHTS_NAME), the adapter boundary."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from . import json_text


class Files:
    """The name of every file and folder the kit writes in a run folder."""

    ADAPTER = "adapter"
    CHECKPOINTS = "checkpoints"
    CONFIG = "config.yaml"
    MANIFEST = "manifest.json"
    RUN_LOG = "run.log"
    METRICS = "metrics.json"
    LOSS_CHART = "loss.png"
    MEMORY = "memory.json"
    MEMORY_TABLE = "memory_table.md"
    DATA_STATS = "data_stats.json"
    TRAINING_ITEMS = "training_items.jsonl"
    TENSORBOARD = "tensorboard"  # training.report_to: tensorboard, its event files
    WANDB = "wandb"  # training.report_to: wandb, W&B's local files (WANDB_DIR is the run folder unless set)
    EVAL_BASELINE = "eval_baseline.json"
    EVAL_REPORT = "eval_report.md"
    EVAL_JSON = "eval.json"
    EVAL_CHART = "eval_chart.png"
    LM_EVAL_TASKS = "lm_eval_tasks"  # eval.harness: lm-eval: the task files lm-eval reads
    LM_EVAL_BASELINE = "lm_eval_baseline.json"
    SAMPLES = "sample_responses.md"  # and sample_responses.jsonl beside it (the same name, .jsonl)
    ADAPTER_PARTIAL = ".adapter.partial"  # the adapter being saved; renamed to ADAPTER once whole
    ADAPTER_INTERRUPTED = "adapter-interrupted"  # an earlier adapter, kept aside when a resumed run saves its own
    MLFLOW = "mlruns"  # training.report_to: mlflow, its local tracking store
    GRPO_SAMPLES = "grpo_samples.jsonl"  # GRPO: completions and their rewards, a few per logging step
    REWARD_CURVES = "reward_curves.png"  # GRPO, DPO, ORPO: rewards (or margins) per step
    EXPORT = "export"  # --mode export: export/, then export-<time>/ beside it
    EXPORT_PARTIAL = ".export.partial"  # an export being written; renamed to EXPORT once whole
    EXPORT_REPORT = "export_report.json"  # inside an export folder
    EXPORT_REPORT_MD = "export_report.md"  # the same, for reading
    MODEL_CARD = "README.md"  # inside an export folder pushed to the Hub
    ORIGIN = "origin.json"  # a run folder made for a checkpoint or an export of a run: the training run it comes from
    TRAINING_RUN = (f"{ADAPTER}/", CONFIG, MANIFEST, METRICS, LOSS_CHART, MEMORY, MEMORY_TABLE, DATA_STATS,
                    TRAINING_ITEMS, EVAL_BASELINE, EVAL_REPORT, EVAL_JSON, EVAL_CHART,
                    f"{SAMPLES}/.jsonl", RUN_LOG)  # a training run's files, as a plan names them
    EVALUATION_FILES = (EVAL_BASELINE, EVAL_REPORT, EVAL_JSON, EVAL_CHART)  # where the run evaluates
    LM_EVAL_FILES = (f"{LM_EVAL_TASKS}/", LM_EVAL_BASELINE)  # where it evaluates with eval.harness: lm-eval
    GRPO_FILES = (GRPO_SAMPLES, REWARD_CURVES)  # training.method: grpo (dpo, orpo: REWARD_CURVES)

    @classmethod
    def listed(cls, evaluated: bool, lm_eval: bool = False, method: str = "sft", answered: bool = True,
               trackers: tuple[str, ...] = ()) -> str:
        """The files a training run writes, named for a plan: the evaluation's only where it evaluates, lm-eval's
        where eval.harness runs it, the sample answers where the mode answers the sample queries, the reward
        curves (and GRPO's samples) for the methods after SFT, and the folders of its trackers
        (tracking.tracker_folders: tensorboard/, wandb/, mlruns/)."""
        names = [name for name in cls.TRAINING_RUN if (evaluated or name not in cls.EVALUATION_FILES)
                 and (answered or name != f"{cls.SAMPLES}/.jsonl")]
        at = names.index(cls.TRAINING_ITEMS) + 1
        names[at:at] = list(trackers)
        names += list(cls.LM_EVAL_FILES) if evaluated and lm_eval else []
        names += {"grpo": list(cls.GRPO_FILES), "dpo": [cls.REWARD_CURVES], "orpo": [cls.REWARD_CURVES]}.get(method, [])
        return ", ".join(names)


def manifest_value(run_folder: str | Path, key: str) -> Any:
    """One field of a run folder's manifest.json (None: no manifest, not JSON, or no such field)."""
    try:
        return json_text.loads((Path(run_folder) / Files.MANIFEST).read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def stopped_before_training(run_folder: str | Path) -> str | None:
    """How a run folder's run stopped, where it stopped with nothing trained kept (its manifest's status interrupted
    or failed, no adapter, no checkpoint): an earlier start that takes the run's name. None otherwise."""
    folder = Path(run_folder)
    status = manifest_value(folder, "status")
    stage = str(manifest_value(folder, "stage") or "")
    if status not in ("interrupted", "failed") or "after training" in stage or (folder / Files.ADAPTER).exists() \
            or any((folder / Files.CHECKPOINTS).glob("checkpoint-*")):
        return None
    return stage or f"{status} before its first checkpoint"


# the manifest's record of training_items.jsonl as the run wrote it: an emptied or cut file would pass the trained-on
# check with fewer questions to look for, as a missing one does not
TRAINING_ITEMS_RECORD = "training_items"


def training_items_record(text: str) -> dict[str, Any]:
    """What the manifest records of the training_items.jsonl the run writes: its records and their sha256."""
    return {"records": sum(1 for line in text.splitlines() if line.strip()),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def changed_training_items(run_folder: Path, held: bytes) -> str | None:
    """How the training_items.jsonl of ``run_folder`` (its bytes: ``held``) differs from the one its run wrote, as
    its manifest records it; None where it is the same, or the manifest records none (a run of an earlier version)."""
    recorded = manifest_value(run_folder, TRAINING_ITEMS_RECORD)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return None
    if hashlib.sha256(held).hexdigest() == recorded["sha256"]:
        return None
    records = sum(1 for line in held.splitlines() if line.strip())
    return (f"its run wrote {recorded.get('records')} records (its {Files.MANIFEST} records their sha256), and it "
            f"now holds {records}{' (emptied)' if not held else ''}, changed since")

