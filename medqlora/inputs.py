"""The run's inputs made ready: the training rows collected and tokenized for the training method, the
benchmark items evaluated before and after training, and the leakage guard over both.

A run and its --dry-run plan read the same rows through these functions, so what a run would refuse the
plan refuses, with the same message.
"""

from __future__ import annotations

from typing import Any

from . import data, evaluate, leakage
from .config import KitConfig
from .messages import say
from .row_checks import check_training_rows


def local_benchmarks(cfg: KitConfig) -> dict[str, list]:
    """The benchmarks that can be read without a download (PubMedQA's shipped test split, local files)."""
    return {b.name: evaluate.load_items(b, cfg.training.seed, f"eval.benchmarks.{i}")
            for i, b in enumerate(cfg.eval.benchmarks) if is_local_benchmark(b)}


def is_local_benchmark(benchmark: Any) -> bool:
    """Whether a benchmark is read from this machine (PubMedQA's shipped test split, a local file) rather than
    from the hub."""
    source = benchmark.source
    return source is None or data.resolve_local(source) is not None or data.looks_local(source)


def benchmark_plan(cfg: KitConfig, benchmark: Any, loaded: dict[str, list] | None = None) -> str:
    """A benchmark as a plan shows it: the items the run scores, counted where they were read (``loaded``: a local
    benchmark's items, as load_items gives them); one from the hub says that it is read (downloaded) only when the
    run starts, so --dry-run could not check it, and scores at most max_items of it."""
    items = (loaded or {}).get(benchmark.name)
    line = f"{benchmark.name} ({benchmark.kind}, {_items_said(benchmark.max_items, items)}, {cfg.eval.method})"
    if is_local_benchmark(benchmark):
        return line
    return (f"{line} [hub dataset {benchmark.source}: not checked by --dry-run; the run reads it, downloading it "
            "unless it is cached, and stops if the hub cannot be reached]")


def _items_said(max_items: int | None, items: list | None) -> str:
    if items is None:
        return f"up to {max_items} items" if max_items else "all items"
    duplicates = evaluate.duplicates_of(items)
    once = f" ({duplicates} duplicate items scored once)" if duplicates else ""
    if max_items and max_items > len(items):
        return f"{len(items)} items{once}, all its source holds, fewer than max_items {max_items}"
    return f"{len(items)} items{once}"


def benchmark_counts(cfg: KitConfig, loaded: dict[str, list]) -> dict[str, int | None]:
    """The items each benchmark scores: counted where read, else its max_items (None: all of a hub split)."""
    return {b.name: len(loaded[b.name]) if b.name in loaded else b.max_items for b in cfg.eval.benchmarks}


def benchmark_guard_items(benchmarks: dict[str, list] | None) -> list[leakage.Item]:
    """The questions of the benchmarks a run evaluates on, for the leakage guard."""
    return [leakage.Item(name, i.uid, i.example.question) for name, items in (benchmarks or {}).items() for i in items]


def planned_examples(cfg: KitConfig, tokenizer: Any, guarded: list[leakage.Item]) -> tuple[dict[str, Any], int | None]:
    """The dataset sizes and the number of training examples a run would train on (None: hub data not downloaded).
    With the model's tokenizer at hand the examples are tokenized and fitted to max_seq_length and the validation
    split taken off exactly as in a run, so what a run refuses is refused here, with the same message."""
    collected = data.collect(cfg.data, cfg.training.seed, guarded, local_only=True)
    check_training_rows(cfg, collected)
    sizes = data.count_rows(cfg.data, cfg.training.seed, collected=collected)
    if len(collected) < len(cfg.data.datasets):
        return sizes, None
    if tokenizer is not None:
        return sizes, len(tokenize(cfg, collected, tokenizer).train)
    pool = [ex for c in collected for ex in c.examples if ex.role != "validation"]
    distinct = len({id(ex) for ex in pool})  # a weighted dataset's copies of one example are held out together
    n_train = len(pool) - round(data.val_ratio_rows(distinct, cfg.data.val_ratio) * len(pool) / max(distinct, 1))
    if n_train == 0:
        data.refuse_no_training_examples(cfg.data, cfg.model.max_seq_length, collected)
    return sizes, n_train


def tokenize(cfg: KitConfig, collected: list, tokenizer: Any) -> data.PreparedData:
    from .data.control_tokens import refuse_control_tokens

    refuse_control_tokens(collected, tokenizer, cfg.data)  # read as turn markers
    if cfg.training.method != "sft":  # prompts (GRPO) or prompt / chosen / rejected rows (DPO, ORPO)
        from . import rl

        return rl.prepare_method_rows(cfg, collected, tokenizer)
    return data.tokenize_collected(collected, cfg.data, tokenizer, cfg.model.max_seq_length, cfg.training.seed,
                                   cfg.training.micro_batch_size)


def same_tokens(first: Any, second: Any, cfg: KitConfig) -> bool:
    probe = data.render_prompt(first, cfg.data.system_prompt, "Is aspirin useful after a myocardial infarction?")
    other = data.render_prompt(second, cfg.data.system_prompt, "Is aspirin useful after a myocardial infarction?")
    return probe == other and first(probe)["input_ids"] == second(other)["input_ids"]


def cot_validation_planned(cfg: KitConfig) -> bool:
    """Whether --mode full generates for held-out medical-o1 rows before and after training."""
    from .config import has_validation

    return bool(cfg.eval.cot_items and has_validation(cfg.data)
                and any(d.format == "medical_o1" for d in cfg.data.datasets))


def evaluates_in_full_mode(cfg: KitConfig) -> bool:
    """Whether --mode full evaluates before and after training (the run and its plan ask this one function).
    eval.in_full_mode with nothing to score (no benchmark, no eval.harness, no medical-o1 validation) is said:
    the run trains only, and writes no evaluation report."""
    if not cfg.eval.in_full_mode:
        return False
    if cfg.eval.benchmarks or cfg.eval.harness or cot_validation_planned(cfg):
        return True
    say("warning: --mode full evaluates nothing here: eval.benchmarks is empty, eval.harness is not set and no "
        "medical-o1 rows are held out, so the run trains only and writes no evaluation report. List a benchmark in "
        "eval.benchmarks (e.g. {name: pubmedqa, kind: pubmedqa}) to score the model before and after training, or "
        "set eval.in_full_mode: false to train without evaluating.")
    return False


def cot_validation(cfg: KitConfig, prepared: data.PreparedData) -> dict[str, list]:
    """The run's held-out medical-o1 examples, generated for before and after training."""
    held_out = [r for r in prepared.validation if r["format"] == "medical_o1"]
    if not held_out or cfg.eval.cot_items == 0:
        return {}
    style = held_out[0]["cot_style"]
    items = evaluate.cot_items_from([r["example"] for r in held_out], cfg.eval.cot_items)
    return {f"{evaluate.COT_VALIDATION}:{style}": items}
