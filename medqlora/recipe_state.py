"""What a Recipe holds while a mode runs, typed in one place: the stage mixins (stages.py, model_stages.py,
adapter_modes.py, run_records.py) read and set these attributes, and Recipe.__init__ gives them their first
values. A stage's docstring says which of them it leaves for the next."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: importing these modules here would load the model stack with `import medqlora`
    from .backends import Runtime
    from .commands import Options
    from .config import KitConfig
    from .data import PreparedData
    from .fit import ModelShape
    from .harness import HarnessTask
    from .runs import RunDir


class RecipeState:
    cfg: KitConfig  # this process's config (its share of each batch)
    saved_cfg: KitConfig  # the same in the terms of all processes together, as config.yaml holds it
    options: Options
    runtime: Runtime | None  # backend, device, dtype
    run: RunDir | None  # the run folder
    checkpoint: Path | None  # --resume: the checkpoint training continues from
    facts: dict[str, Any]  # what the manifest records
    summary: dict[str, Any]  # the end-of-run summary
    model: Any
    source: str | None  # the model source, resolved once (backends.resolve_model_source)
    tokenizer: Any
    benchmarks: dict[str, list] | None  # the kit's benchmarks: name -> items
    lm_eval_tasks: list[HarnessTask] | None  # eval.harness: lm-eval
    collected: list  # the training rows read and checked
    prepared: PreparedData | None  # the rows tokenized
    shape: ModelShape | None  # the model's dimensions, for the memory preflight
    after_load: dict[str, Any]  # memory once the model is loaded
    baseline: dict | None  # scores before training
    lm_eval_baseline: dict | None
    result: Any  # what training returned (metrics, log history, memory)
