"""The items of each benchmark (eval.benchmarks): PubMedQA's official test split, multiple-choice sets and
medical-o1 chain-of-thought rows, read through the data boundary; and the check that an adapter was not trained on
the items it is evaluated on."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import json_text
from ..config import BenchmarkSpec, DatasetSpec, KitConfig
from ..data import Example, format_rows, load_rows, mc_options, pubmedqa_test_ids, resolve_local
from ..data.examples import row_name
from ..errors import DataError
from ..formats import BENCHMARK_KINDS, DATASET_FORMATS
from ..leakage_text import normalize
from ..rows import DATASET_ENTRY, MissingColumnError
from ..run_files import Files, changed_training_items
from ..secrets import printable

PUBMEDQA_LABELS = ["yes", "no", "maybe"]


@dataclass
class EvalItem:
    uid: str
    example: Example  # the prompt, exactly as in training
    gold: str
    choices: list[str]
    option_texts: dict[str, str] = field(default_factory=dict)
    format: str = ""  # the data format of its prompt: a training dataset of that format lends its prompt settings
    copies: int = 1  # the rows of its source that hold this item (a duplicate row is scored once, with the first)


def duplicates_of(items: list[EvalItem]) -> int:
    """The rows of a benchmark's source that repeat one of ``items`` (each item scored once, with its first row)."""
    return sum(item.copies - 1 for item in items)


def load_items(bench: BenchmarkSpec, seed: int, entry: str | None = None) -> list[EvalItem]:
    """A benchmark's items (a seeded sample of max_items); ``entry`` is where its config is (eval.benchmarks.N),
    which advice to map columns names in place of a dataset entry."""
    try:
        items = ITEM_LOADERS[bench.kind](bench)
    except MissingColumnError as err:
        raise MissingColumnError(err.missing, _for_benchmark(err.advice, bench, entry)) from None
    except DataError as err:
        raise DataError(_for_benchmark(str(err), bench, entry)) from None
    if bench.max_items is not None and bench.max_items < len(items):
        items = random.Random(seed).sample(items, bench.max_items)
    check_answer_stated_once(f"Benchmark '{printable(bench.name, 80)}'", items)
    return items


def _for_benchmark(advice: str, bench: BenchmarkSpec, entry: str | None) -> str:
    """Advice that names a dataset entry, said of the benchmark's own entry, with the columns its kind reads."""
    if DATASET_ENTRY not in advice:
        return advice
    where = f"{entry or 'eval.benchmarks'} (the benchmark {printable(bench.name, 80)!r})"
    reads = DATASET_FORMATS[BENCHMARK_KINDS[bench.kind].reads].columns
    return (advice.replace(DATASET_ENTRY, f"in {where}").rstrip(".")
            + f". A {bench.kind} benchmark reads {reads}: check that its source is one.")


def check_answer_stated_once(name: str, items: list[EvalItem]) -> None:
    """Multiple-choice items whose answer's text is also another option's (the check training rows get): the model
    cannot tell the right letter from the other by its text, so the item scores a coin toss. Said when some items
    are such (a published set may hold one, as MedMCQA's dev set does), refused when all are: the score would
    measure nothing."""
    from ..messages import say
    from ..row_checks import answer_twin, twin_said

    found = [(item, twin) for item in items if (twin := answer_twin(item.option_texts, item.gold))]
    if not found:
        return
    item, twin = found[0]
    said = f"item {printable(item.uid, 60)}: {twin_said(item.option_texts, item.gold, twin)}"
    if len(found) == len(items):
        raise DataError(f"{name}: every one of its {len(items)} items states the answer in two options ({said}), so "
                        "every answer is a coin toss and the score would measure nothing. Make the options differ "
                        "(or correct the answers), or evaluate on another set.")
    say(f"warning: {name}: {len(found)} of its {len(items)} items state the answer in two options ({said}): the "
        "model cannot tell the right letter from the other by its text, so each of them scores a coin toss. Make "
        "their options differ (or correct the answers), or leave them out, for a score that measures the model alone.")


def _split(bench: BenchmarkSpec) -> str | None:
    """The split a hub benchmark is read from (test unless given); a local one is read whole."""
    if bench.split or bench.source is None or resolve_local(bench.source) is not None:
        return bench.split
    return "test"


def _pubmedqa_items(bench: BenchmarkSpec) -> list[EvalItem]:
    source = bench.source or "data/pubmedqa/ori_pqal.json"
    spec = DatasetSpec(source=source, format="pubmedqa", subset=bench.subset,
                       split=_split(bench), long_answer=False, columns=bench.columns)
    test_ids = pubmedqa_test_ids()
    rows = load_rows(spec)
    found = [EvalItem(example.uid, example, example.response, PUBMEDQA_LABELS, format="pubmedqa")
             for example in format_rows(spec, rows)  # every row checked, bad ones named by file and row
             if example.uid in test_ids]
    if not found:
        raise DataError(f"Benchmark '{bench.name}': no PubMedQA official test questions found in {source}.")
    return sorted(_scored_once(bench.name, found, spec, rows), key=lambda item: item.uid)


def _multiple_choice_items(bench: BenchmarkSpec) -> list[EvalItem]:
    if bench.source is None:
        raise DataError(f"Benchmark '{bench.name}': multiple_choice needs a source (hub id or .jsonl file).")
    spec = DatasetSpec(source=bench.source, format="multiple_choice", subset=bench.subset, split=_split(bench),
                       columns=bench.columns)
    rows = load_rows(spec)
    items = []
    for number, (row, example) in enumerate(zip(rows, format_rows(spec, rows), strict=True), start=1):
        options = mc_options(row, spec)  # checked by format_rows already
        items.append(EvalItem(example.uid or str(number), example, example.response.split(".", 1)[0],
                              sorted(options), dict(options), format="multiple_choice"))
    return _scored_once(bench.name, items, spec, rows)


def _scored_once(name: str, found: list[EvalItem], spec: DatasetSpec, rows: list, answers_agree: bool = True
                 ) -> list[EvalItem]:
    """Each item of a benchmark once, with its first row (the copies counted): rows that repeat an item would weigh
    it twice in the score. With ``answers_agree``, rows of one item that give different answers are left out
    (said, naming them): one of them would be scored wrong whatever the model answers."""
    groups: dict[tuple, list[EvalItem]] = {}
    for item in found:
        groups.setdefault(_key_of(item), []).append(item)
    contradicting = [group for group in groups.values() if answers_agree and len({item.gold for item in group}) > 1]
    items = []
    for group in groups.values():
        if not answers_agree or len({item.gold for item in group}) == 1:
            group[0].copies = len(group)
            items.append(group[0])
    if contradicting:
        _leave_out_contradictions(name, contradicting, len(items), spec, rows)
    return items


def _key_of(item: EvalItem) -> tuple:
    """The question (with its context, where the prompt has one) and its lettered options, as the leakage guard
    normalises text: the same key, the same item."""
    return (normalize(item.example.question), normalize(item.example.context or ""),
            *((o, normalize(text)) for o, text in sorted(item.option_texts.items())))


def _leave_out_contradictions(name: str, groups: list[list[EvalItem]], kept: int, spec: DatasetSpec,
                              rows: list) -> None:
    """Rows that ask one question with the same options and give different answers (a published set may hold a pair,
    as MedMCQA's dev set does): one of them is scored wrong whatever the model answers, so none is scored; said,
    naming the rows, and refused when no item is left."""
    from ..messages import say

    def where(item: EvalItem) -> str:
        named = row_name(spec, item.example.row or 0, getattr(rows, "lines", None), getattr(rows, "names", None))
        return named + (f" (id {printable(item.example.uid, 40)})" if item.example.uid else "")

    first = groups[0]
    options = " with the same options" if first[0].option_texts else ""
    said = (f"{' and '.join(where(item) for item in first[:3])} hold the same question{options} but "
            f"different answers ({' vs '.join(item.gold for item in first[:3])})")
    if not kept:
        raise DataError(f"Benchmark '{printable(name, 80)}': {said}: the benchmark contradicts itself, and no item "
                        "is left to score. Correct the wrong answers, or leave one row of each question out.")
    say(f"warning: Benchmark '{printable(name, 80)}': {said}" + (f", and so do the rows of {len(groups) - 1} more questions" if
        len(groups) > 1 else "") + ": the benchmark contradicts itself, so one of them would be scored wrong whatever "
        f"the model answers; {sum(len(g) for g in groups)} rows left out, {kept} items scored. Correct the wrong "
        "answer, or leave one of the rows out.")


def cot_items_from(examples: list[Example], limit: int) -> list[EvalItem]:
    return [EvalItem(ex.uid or str(i), ex, ex.response, [], format="medical_o1") for i, ex in enumerate(examples[:limit])]


def _cot_items(bench: BenchmarkSpec) -> list[EvalItem]:
    if bench.source is None:
        raise DataError(f"Benchmark '{bench.name}': cot needs a source of medical-o1 rows (Question, Complex_CoT, Response).")
    spec = DatasetSpec(source=bench.source, format="medical_o1", subset=bench.subset, split=_split(bench),
                       cot_style=bench.cot_style, columns=bench.columns)
    rows = load_rows(spec)
    # a question asked twice is scored once; its rows' reference answers may be worded apart, not a contradiction
    return _scored_once(bench.name, cot_items_from(format_rows(spec, rows), 10**9), spec, rows, answers_agree=False)


# How each benchmark kind of formats.BENCHMARK_KINDS reads its items (tests/test_formats.py checks both agree).
ITEM_LOADERS: dict[str, Callable[[BenchmarkSpec], list[EvalItem]]] = {
    "pubmedqa": _pubmedqa_items, "multiple_choice": _multiple_choice_items, "cot": _cot_items}


COT_VALIDATION = "medical-o1 validation"


def cot_style_of(cfg: KitConfig, name: str) -> str | None:
    """The CoT style when benchmark ``name`` is a chain-of-thought one (configured, or the run's own)."""
    for bench in cfg.eval.benchmarks:
        if bench.name == name:
            return bench.cot_style if bench.kind == "cot" else None
    if name.startswith(COT_VALIDATION):
        return name.rsplit(":", 1)[1]
    return None


def load_benchmarks(cfg: KitConfig) -> dict[str, list[EvalItem]]:
    return {bench.name: load_items(bench, cfg.training.seed, f"eval.benchmarks.{i}")
            for i, bench in enumerate(cfg.eval.benchmarks)}


def check_not_trained_on(items_by_bench: dict[str, list[EvalItem]], training_items: Path, required: bool = False
                         ) -> None:
    """Refuse to evaluate an adapter on items its run trained on: the questions in its training_items.jsonl
    (normalised as the leakage guard does: case, punctuation, accents and invisible characters ignored),
    and the evaluation questions its data_stats.json says the run was allowed to train on
    (data.allow_eval_overlap: exact copies and near duplicates inside longer texts). ``required``: the adapter is in
    a run folder of the kit, which writes the file before training; without it the check cannot be made."""
    from ..leakage import flagged_hashes, legacy_question_hash, question_hash

    if not training_items.is_file():
        if required:
            raise DataError(f"{printable(training_items)} is missing: the run writes it before training, and without "
                            "it what this adapter was trained on cannot be checked, so its scores could be inflated by "
                            "items it learned. Restore the file from the run folder's backup, or evaluate another run.")
        return
    held = training_items.read_bytes()
    if required and (change := changed_training_items(training_items.parent, held)):
        raise DataError(f"{printable(training_items)} is not the record its run wrote: {change}. Without it what "
                        "this adapter was trained on cannot be checked, so its scores could be inflated by items it "
                        "learned. Restore the file from the run folder's backup, or evaluate another run.")
    trained: set[str] = set()
    for number, line in enumerate(held.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json_text.loads(line)
            trained.add(str(record["question_sha1_16"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{training_items}:{number}: not a record of training_items.jsonl (the file is damaged), "
                            "so what this adapter was trained on cannot be checked. Evaluate a run whose "
                            "training_items.jsonl is intact.") from None
    stats_file = training_items.parent / Files.DATA_STATS
    if stats_file.is_file():
        try:
            trained |= flagged_hashes(json_text.loads(stats_file.read_text(encoding="utf-8")))
        except ValueError:
            pass  # a damaged data_stats.json only loses the allowed-overlap list; training_items.jsonl still counts
    for name, items in items_by_bench.items():
        seen = [i.uid for i in items
                if question_hash(i.example.question) in trained or legacy_question_hash(i.example.question) in trained]
        if seen:
            raise DataError(
                f"Benchmark '{printable(name, 80)}': {len(seen)} items were trained on by this adapter (e.g. "
                f"{printable(seen[:3], 120)}); "
                "its scores would be inflated. Evaluate on other items or another adapter."
            )
