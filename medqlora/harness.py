"""lm-evaluation-harness (``eval.harness: lm-eval``) on the kit's own loaded model, offline.

The kit writes one lm-eval task per benchmark into the run folder (``lm_eval_tasks/``): a YAML file whose
``dataset_path: json`` reads a JSONL file written beside it from local data (the shipped PubMedQA test split and
MedMCQA held-out set, the user's MedQA and MMLU files), with the prompt of lm-eval's own task of that name. So
nothing reaches a hub, the items are the kit's scorer's items (same split, same seeded sample), and the task
folder can be run again with lm-eval's own command line (``lm_eval --include_path <run>/lm_eval_tasks``).

lm-eval scores a multiple-choice item by the log-likelihood of each whole answer after the prompt (acc) and by
that log-likelihood divided by the answer's length in bytes (acc_norm).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MMLU_MEDICAL, BenchmarkSpec, KitConfig
from .data import dataset_of_format, resolve_local, system_prompt_of
from .environment import check_datasets_cache
from .errors import ConfigError, DataError, MedQLoRAError
from .evaluate import PUBMEDQA_LABELS, EvalItem, check_item_texts, classification_metrics, evaluation_length, load_items
from .generation_batch import batch_size_for
from .harness_mmlu import subject_items
from .progress import bars_shown
from .rows import MissingColumnError
from .secrets import printable

INSTALL = 'pip install "medqlora[eval]" (from a source checkout: pip install "lm_eval>=0.4.13,<0.5")'
SHIPPED_MEDMCQA = "data/medmcqa/heldout.jsonl"

# The prompts of lm-eval's own tasks (lm_eval/tasks/pubmedqa, medqa, medmcqa, mmlu/default), as Jinja templates
# over the fields the kit writes for each item.
_OPTIONS = "{% for o in options %}{{letters[loop.index0]}}. {{o}}\n{% endfor %}"
PROMPTS = {
    "pubmedqa": "Abstract: {{context}}\nQuestion: {{question}}\nAnswer:",
    "medqa": "Question: {{question}}\n" + _OPTIONS + "Answer:",
    "medmcqa": "Question: {{question}}\nChoices:\n" + _OPTIONS + "Answer:",
    "mmlu": "{{question.strip()}}\n" + _OPTIONS + "Answer:",
}


@dataclass
class HarnessTask:
    name: str  # the kit's name (pubmedqa, medqa, medmcqa, mmlu_anatomy...); lm-eval's is medqlora_<name>
    prompt: str  # a key of PROMPTS
    items: list[EvalItem]
    description: str = ""  # lm-eval's text before the first item (MMLU names its subject)

    @property
    def lm_eval_name(self) -> str:
        return f"medqlora_{self.name}"


# ---------------------------------------------------------------- tasks from local files


def check_installed() -> None:
    """lm-evaluation-harness 0.4 importable with the parts the kit calls (another package named lm_eval, or an
    older release, is refused here, before any evaluation runs)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"eval.harness: lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}, "
                          "or leave eval.harness unset to score with the kit's own scorer only.") from None
    try:
        from lm_eval import simple_evaluate  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as err:
        where = printable(str(getattr(lm_eval, "__file__", None) or getattr(lm_eval, "__path__", "?")), 160)
        raise ConfigError(f"eval.harness: lm-eval needs lm-evaluation-harness 0.4, but the lm_eval package at {where} "
                          f"is not it or is too old ({type(err).__name__}: {printable(str(err), 120)}): {INSTALL}."
                          ) from None


def load_tasks(cfg: KitConfig) -> list[HarnessTask] | None:
    """The configured tasks with their items, read and checked before any model loads; None without a harness."""
    if cfg.eval.harness != "lm-eval":
        return None
    check_installed()
    check_datasets_cache("eval.harness: lm-eval")
    from .distributed import world_size

    if world_size() > 1:
        raise ConfigError("eval.harness: lm-eval runs in one process, and this run has "
                          f"{world_size()}: train without it, then run --mode eval on the saved adapter in one process "
                          "(python medical_qlora_finetuning.py --mode eval, no torchrun or accelerate launch).")
    tasks = []
    for name in cfg.eval.lm_eval.tasks:
        if name == "pubmedqa":
            tasks.append(HarnessTask(name, "pubmedqa", _sampled(cfg, name, _pubmedqa_spec(cfg))))
        elif name in ("medqa", "medmcqa"):
            tasks.append(HarnessTask(name, name, _multiple_choice_items(cfg, name)))
        else:
            tasks += [_mmlu_task(cfg, subject) for subject in _subjects(name)]
    return tasks


def _pubmedqa_spec(cfg: KitConfig) -> BenchmarkSpec:
    """The pubmedqa task reads the items of the kit's benchmark named pubmedqa (its source too), so that the report
    puts the same questions side by side; a benchmark of that name of another kind is a name clash, refused."""
    kit = next((b for b in cfg.eval.benchmarks if b.name == "pubmedqa"), None)
    if kit is None:
        return BenchmarkSpec(name="pubmedqa", kind="pubmedqa")
    if kit.kind != "pubmedqa":
        raise ConfigError(f"eval.benchmarks: the benchmark named pubmedqa is of kind {kit.kind} "
                          f"({printable(kit.source or 'no source', 120)}), and lm-eval's pubmedqa task scores PubMedQA "
                          "questions: the report would put different items side by side under one name. Rename that "
                          "benchmark (e.g. name: my_mcq), or leave pubmedqa out of eval.lm_eval.tasks.")
    return kit


def _sampled(cfg: KitConfig, name: str, bench: BenchmarkSpec) -> list[EvalItem]:
    """The kit's items for ``bench``: the same seeded sample as the kit's benchmark of that name when max_items is
    not set for lm-eval."""
    size = cfg.eval.lm_eval.max_items
    if size is None:
        size = next((b.max_items for b in cfg.eval.benchmarks if b.name == name), None)
    return load_items(bench.model_copy(update={"max_items": size}), cfg.training.seed)


def _multiple_choice_items(cfg: KitConfig, name: str) -> list[EvalItem]:
    """The items of the medqa or medmcqa task; a file of another layout is named with the layout it needs (the
    lm-eval settings map no columns)."""
    bench = _multiple_choice(cfg, name)
    try:
        return _four_options(name, bench, _sampled(cfg, name, bench))
    except MissingColumnError as err:
        raise DataError(f"{err.missing} eval.lm_eval.{name} reads a JSONL file with one question a line: question, "
                        f"options {{A..D}}, answer_idx (the letter), as in {SHIPPED_MEDMCQA} (docs/lm-eval.md), or "
                        "MedMCQA's hub layout (question, opa, opb, opc, opd, cop 0-3); write the file in one of "
                        "those layouts.") from None


def _multiple_choice(cfg: KitConfig, name: str) -> BenchmarkSpec:
    source = getattr(cfg.eval.lm_eval, name) or (SHIPPED_MEDMCQA if name == "medmcqa" else None)
    if source is None:
        raise DataError("lm-eval task medqa needs its data, which the kit does not ship: set eval.lm_eval.medqa to a "
                        "MedQA 4-option JSONL file (one question a line: question, options {A..D}, answer_idx), or "
                        "leave medqa out of eval.lm_eval.tasks.")
    local = resolve_local(source)
    if local is None or not local.is_file():
        raise DataError(f"lm-eval task {name}: eval.lm_eval.{name} {printable(source)!r} is not a file here (the "
                        "harness reads local files only). Give the path of a JSONL file, relative to the working "
                        "folder or absolute.")
    return BenchmarkSpec(name=name, kind="multiple_choice", source=str(local))


def _four_options(name: str, bench: BenchmarkSpec, items: list[EvalItem]) -> list[EvalItem]:
    """lm-eval's medqa (medqa_4options) and medmcqa ask four options, A-D: items with other options would be scored
    under that name and not compare with its published figures."""
    other = next((item for item in items if item.choices != list("ABCD")), None)
    if other is None:
        return items
    lm_eval_name = "medqa_4options" if name == "medqa" else name
    raise DataError(f"lm-eval task {name}: {printable(bench.source)} holds items with {len(other.choices)} options "
                    f"({printable(', '.join(other.choices), 80)}; item {printable(other.uid, 40)}), and lm-eval's "
                    f"{lm_eval_name} asks four, A-D: its score would not compare. Give eval.lm_eval.{name} a 4-option "
                    f"file, or score this one with the kit's own scorer: eval.benchmarks: [{{name: {name}_"
                    f"{len(other.choices)}options, kind: multiple_choice, source: <the file>}}].")


def _subjects(name: str) -> tuple[str, ...]:
    return MMLU_MEDICAL if name == "mmlu_medical" else (name.removeprefix("mmlu_"),)


def _mmlu_task(cfg: KitConfig, subject: str) -> HarnessTask:
    pretty = subject.replace("_", " ")
    return HarnessTask(f"mmlu_{subject}", "mmlu", subject_items(cfg, subject),
                       f"The following are multiple choice questions (with answers) about {pretty}.\n\n")


def plan(cfg: KitConfig, tasks: list[HarnessTask] | None = None) -> list[str]:
    """The dry-run's lines for the harness (its checks made: package, task data, unless ``tasks`` were loaded)."""
    tasks = tasks if tasks is not None else load_tasks(cfg)
    return [f"lm-eval {t.name} ({len(t.items)} items, lm-evaluation-harness, zero-shot log-likelihood)"
            for t in tasks or []]


def items_by_task(tasks: list[HarnessTask] | None) -> dict[str, list[EvalItem]]:
    """The tasks' items by name, for the leakage and trained-on guards."""
    return {f"lm-eval {t.name}": t.items for t in tasks or []}


# ---------------------------------------------------------------- the task folder


def doc_of(task: HarnessTask, item: EvalItem) -> dict[str, Any]:
    """The record lm-eval reads for one item: the prompt's fields, the answer choices and the gold index."""
    if task.prompt == "pubmedqa":
        fields = item.example.fields
        return {"id": item.uid, "question": fields["question"], "context": fields["context"],
                "letters": PUBMEDQA_LABELS, "label": PUBMEDQA_LABELS.index(item.gold)}
    letters = item.choices
    return {"id": item.uid, "question": item.example.question or item.example.prompt,
            "options": [item.option_texts[letter] for letter in letters], "letters": letters,
            "label": letters.index(item.gold)}


def task_yaml(task: HarnessTask, data_file: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": task.lm_eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPTS[task.prompt],
        "doc_to_choice": "letters",
        "doc_to_target": "label",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    if task.description:
        config["description"] = task.description
    return config


def write_task_folder(folder: Path, tasks: list[HarnessTask]) -> None:
    """One <task>.jsonl and <task>.yaml per task in ``folder`` (a fresh folder of the run)."""
    import yaml

    from .runs import write_file_bytes  # the run folder's one writer: no link followed, nothing half-written

    for task in tasks:
        data_file = folder / f"{task.lm_eval_name}.jsonl"
        rows = "".join(json.dumps(doc_of(task, i), ensure_ascii=False) + "\n" for i in task.items)
        write_file_bytes(data_file, rows.encode("utf-8"))
        config = yaml.safe_dump(task_yaml(task, data_file.resolve()), sort_keys=False, allow_unicode=True)
        write_file_bytes(folder / f"{task.lm_eval_name}.yaml", config.encode("utf-8"))


# ---------------------------------------------------------------- running lm-eval


def run_tasks(cfg: KitConfig, model: Any, tokenizer: Any, folder: Path, tasks: list[HarnessTask]) -> dict[str, Any]:
    """lm-eval's scores of the loaded model (base, or with its adapter) on the tasks in ``folder``:
    {task: metrics}, the metrics as the kit's scorer reports them plus lm-eval's acc and acc_norm."""
    check_installed()
    check_item_texts(cfg, tokenizer, {task.name: task.items for task in tasks})  # read as turn markers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    quiet = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # its warning about a model passed as an object, and an INFO line per step
        logger.setLevel(logging.ERROR)
    if cfg.eval.lm_eval.apply_chat_template:  # the template model.chat_template chooses, as the kit's scorer uses
        from .backends.tokenizer import use_chat_template

        tokenizer = use_chat_template(tokenizer, cfg)
    try:
        length = evaluation_length(cfg, model)
        size = batch_size_for(cfg.eval.batch_size, model, length, 1, sum(len(task.items) for task in tasks),
                              cfg.training.gpu_memory_gib, what="lm-eval")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=size, max_length=length)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        return {task.name: _run_one(cfg, lm, manager, task) for task in tasks}
    except MedQLoRAError:
        raise
    except Exception as err:  # lm-eval's own failures (an unreadable task folder, a model it cannot drive)
        raise MedQLoRAError(f"lm-evaluation-harness failed on {printable(folder)}: {type(err).__name__}: "
                            f"{printable(str(err), 400)}. Check the task files there, or leave eval.harness unset."
                            ) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _run_one(cfg: KitConfig, lm: Any, manager: Any, task: HarnessTask) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    chat = cfg.eval.lm_eval.apply_chat_template
    began = time.perf_counter()
    with _progress_bars_only_on_a_terminal():
        output = simple_evaluate(
            model=lm, tasks=[task.lm_eval_name], num_fewshot=0, task_manager=manager,
            apply_chat_template=chat, system_instruction=_system_prompt(cfg, task) if chat else None,
            log_samples=True, verbosity="ERROR", random_seed=cfg.training.seed,
        )
    return _metrics(task, output, time.perf_counter() - began)


def _system_prompt(cfg: KitConfig, task: HarnessTask) -> str | None:
    """The system prompt the kit's scorer gives the task's items: the first training dataset of their format's own,
    else data.system_prompt."""
    fmt = task.items[0].format if task.items else None
    return system_prompt_of(cfg.data, dataset_of_format(cfg.data, fmt) if fmt else None)


@contextlib.contextmanager
def _progress_bars_only_on_a_terminal() -> Iterator[None]:
    """lm-eval draws its own tqdm bars on stderr: where stderr is a log file or a pipe (a batch job, CI), they would
    fill it with carriage-return lines, so they are drawn only on a terminal, as the kit's own bars are."""
    if bars_shown():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _metrics(task: HarnessTask, output: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The kit's metrics (accuracy, macro-F1, predicted labels) from lm-eval's per-item log-likelihoods, with lm-eval's
    own acc and acc_norm beside them."""
    summary = output["results"][task.lm_eval_name]
    samples = sorted(output["samples"][task.lm_eval_name], key=lambda s: s["doc_id"])
    per_item, gold, pred = [], [], []
    for sample in samples:
        letters, scores = sample["doc"]["letters"], [float(r[0]) for r in sample["filtered_resps"]]
        answer = letters[scores.index(max(scores))]
        gold.append(letters[sample["doc"]["label"]])
        pred.append(answer)
        per_item.append({"uid": sample["doc"]["id"], "gold": gold[-1], "pred": answer,
                         "loglikelihoods": [round(s, 4) for s in scores]})
    metrics = classification_metrics(gold, pred, task.items[0].choices if task.prompt != "pubmedqa"
                                     else PUBMEDQA_LABELS)
    metrics.update(method="lm-eval loglikelihood", lm_eval_acc=_pct(summary.get("acc,none")),
                   lm_eval_acc_norm=_pct(summary.get("acc_norm,none")), seconds=round(seconds, 2),
                   items_per_second=round(len(samples) / max(seconds, 1e-9), 2), per_item=per_item)
    return metrics


def _pct(value: Any) -> float:
    return round(100 * float(value), 2) if isinstance(value, (int, float)) else math.nan


# ---------------------------------------------------------------- report


def summary_text(results: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"lm-eval {name} acc {(row.get('baseline') or {}).get('lm_eval_acc', '-')} -> "
                     f"{(row.get('fine_tuned') or {}).get('lm_eval_acc', '-')}" for name, row in results.items())


EVALUATING_MODES = ("eval", "full")


def unused_harness_settings(cfg: KitConfig, mode: str) -> list[str]:
    """eval.lm_eval settings given while eval.harness is unset, in a mode that evaluates: lm-eval does not run, so
    they are unused (said by the plan under "unused" and by the run as a warning)."""
    if mode not in EVALUATING_MODES or cfg.eval.harness is not None:
        return []
    given, defaults = cfg.eval.lm_eval, type(cfg.eval.lm_eval)()
    names = [f"eval.lm_eval.{name}" for name in sorted(given.model_fields_set)
             if getattr(given, name) != getattr(defaults, name)]
    if not names:
        return []
    named = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    one = len(names) == 1
    return [(f"{named} {'is a setting' if one else 'are settings'} of eval.harness: lm-eval, which is not set: "
             f"{'it is' if one else 'they are'} unused and lm-evaluation-harness does not run. Set eval.harness: "
             f"lm-eval to use {'it' if one else 'them'}, or remove {'it' if one else 'them'}")]
