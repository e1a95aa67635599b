"""Rows -> the examples of a run: each row formatted and checked (``format_rows``, naming file, row and
field), written by a dataset's prompt_template (``apply_template``), PubMedQA's official test items and CV fold
held out, shuffled, capped and weighted per dataset (``build_examples``), and every dataset guarded against
the evaluation items (``collect``, with ``leakage``). Also the prompt of a free question (``query_prompt``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .. import json_text, leakage
from ..config import KIT_ROOT, DataSection, DatasetSpec, template_fields
from ..errors import DataError
from ..formats import FORMAT_SHAPES, FORMATS
from ..rows import SEAM_WORDS, Example, MissingColumnError, _kind, pmid_of
from ..secrets import printable
from .source_sets import refuse_repeated_datasets
from .sources import check_hub_dataset_id, load_rows, looks_local, refuse_held_out_files, resolve_local

PUBMEDQA_TEST_FILE = KIT_ROOT / "data" / "pubmedqa" / "test_ground_truth.json"

PUBMEDQA_DIR = KIT_ROOT / "data" / "pubmedqa"


def pubmedqa_test_ids() -> set[str]:
    """The 500 PMIDs of PubMedQA's official test split: never trained on."""
    return set(json_text.loads(PUBMEDQA_TEST_FILE.read_text()))


def pubmedqa_folds() -> list[list[str]]:
    return json_text.loads((PUBMEDQA_DIR / "pqal_split_pmids.json").read_text())["folds"]



def format_rows(spec: DatasetSpec, rows: list[dict[str, Any]]) -> list[Example]:
    """Every row checked and formatted; the first bad one is refused with the file, its row and the field."""
    formatter = FORMATS[spec.format]
    lines, names = getattr(rows, "lines", None), getattr(rows, "names", None)
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise DataError(f"expected a record (JSON object), got {_kind(row)}.")
            example = formatter(row, spec)
            if spec.prompt_template is not None:
                example = apply_template(example, spec.prompt_template)
        except MissingColumnError as err:
            advice = _lacking_row_advice(rows, number, err.columns) or err.advice
            raise MissingColumnError(f"{row_name(spec, number, lines, names)}: {err.missing}", advice,
                                     err.columns) from None
        except DataError as err:
            raise DataError(f"{row_name(spec, number, lines, names)}: {err}") from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DataError(
                f"{row_name(spec, number, lines, names)} does not have the shape the {spec.format} format needs "
                f"({type(err).__name__}: {printable(err, 120)}). Expected: "
                f"{FORMAT_SHAPES.get(spec.format, 'see docs/formats.md')}."
            ) from None
        example.row = number
        examples.append(example)
    return examples


def _lacking_row_advice(rows: Any, number: int, columns: tuple[str, ...]) -> str | None:
    """When other rows have the column this row lacks, the file is right and the row is not: say so (mapping a column
    with ``columns:`` would not help). None when no other row has it."""
    holding = next((n for n, row in enumerate(rows, start=1)
                    if n != number and isinstance(row, dict) and any(c in row for c in columns)), None)
    if holding is None:
        return None
    return (f"Other rows have it (row {holding} does): fill it in in this row, or remove the row.")


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def apply_template(example: Example, template: str) -> Example:
    """The example with its prompt written by a dataset's prompt_template (placeholders checked by the config).
    {context} stays a placeholder of the example's own template, so that a long context is still the part
    shortened to fit max_seq_length; the fully rendered prompt is also given to the leakage guard."""
    import string

    values = example.fields
    keep_context = "context" in template_fields(template) and "context" in values
    parts, rendered = [], []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(_braces(literal))
        rendered.append(literal)
        if name is None:
            continue
        value = values.get(name, "")
        parts.append("{context}" if name == "context" and keep_context else _braces(value))
        rendered.append(value)
    full = "".join(rendered)
    example.joins = example.joins + (("prompt (data.datasets prompt_template)", full),)
    if keep_context:
        example.prompt, example.context, example.prompt_template = "", values["context"], "".join(parts)
    else:
        example.prompt, example.context, example.prompt_template = full, None, "{context}"
    return example


def system_prompt_of(data: DataSection, spec: DatasetSpec | None) -> str | None:
    """A dataset's own system prompt ('' for none), else data.system_prompt."""
    if spec is not None and spec.system_prompt is not None:
        return spec.system_prompt or None
    return data.system_prompt


def dataset_of_format(data: DataSection, fmt: str) -> DatasetSpec | None:
    """The first training dataset of a format: its prompt settings apply to evaluation items of that format."""
    return next((d for d in data.datasets if d.format == fmt and d.use_for == "train"), None)


def query_prompt(data: DataSection, question: str) -> tuple[str | None, str]:
    """(system prompt, user text) of a free question (the sample queries): the first training dataset's
    system prompt and prompt_template, its other placeholders empty."""
    spec = data.datasets[0]
    if spec.prompt_template is None:
        return system_prompt_of(data, spec), question
    example = apply_template(Example(prompt=question, response="", fields={"question": question}),
                             spec.prompt_template)
    user = example.prompt_template.format(context="") if example.context is not None else example.prompt
    return system_prompt_of(data, spec), user


def row_name(spec: DatasetSpec, number: int, lines: list[int] | None, names: list[str] | None = None) -> str:
    """A row as messages name it: its file and row number (and line, where they differ), or its own name."""
    if names and number <= len(names):
        return names[number - 1]
    line = lines[number - 1] if lines and number <= len(lines) else None
    return f"{printable(spec.source, 200)} row {number}" + (f" (line {line})" if line and line != number else "")


def build_examples(spec: DatasetSpec, rows: list[dict[str, Any]], seed: int) -> tuple[list[Example], dict]:
    """Format rows, hold out evaluation items, shuffle (seeded), cap and weight one dataset."""
    examples = format_rows(spec, rows)
    info: dict[str, Any] = {"rows": len(rows)}
    if getattr(rows, "files", None):
        info["files"] = rows.files
    if spec.format == "pubmedqa":
        held_out = pubmedqa_test_ids()
        kept = [ex for ex in examples if pmid_of(ex.uid) not in held_out]
        info["held_out_pubmedqa_test"] = len(examples) - len(kept)
        examples = kept
        if spec.cv_fold is not None:
            fold = set(pubmedqa_folds()[spec.cv_fold])
            for ex in examples:
                ex.role = "validation" if pmid_of(ex.uid) in fold else "train"
            info["cv_fold_validation"] = sum(ex.role == "validation" for ex in examples)
    if spec.use_for == "validation":
        for ex in examples:
            ex.role = "validation"
    first: list[Example] = []
    if spec.val_first_n is not None:  # by position, before any shuffle; never capped or weighted
        if spec.val_first_n >= len(examples):
            raise DataError(f"Dataset '{printable(spec.source, 200)}': val_first_n={spec.val_first_n} holds out every "
                            f"one of its {len(examples)} rows{' left' if spec.format == 'pubmedqa' else ''}; "
                            "nothing would be trained on. Lower val_first_n.")
        first, examples = examples[: spec.val_first_n], examples[spec.val_first_n :]
        for ex in first:
            ex.role = "validation"
        info["validation_first_n"] = len(first)
    rng = random.Random(seed)
    rng.shuffle(examples)
    if spec.max_samples is not None:
        examples = examples[: spec.max_samples]
    if spec.weight != 1.0:
        pool = len(examples)
        examples = _weighted(examples, spec.weight, rng)
        if pool and not examples:
            raise DataError(f"Dataset '{printable(spec.source, 200)}': weight {spec.weight:g} of its {pool} "
                            f"example{'s' if pool > 1 else ''} rounds to 0 draws, so nothing of it would be trained "
                            f"on. Give it a weight of at least {1 / pool:.4g} (one draw), or leave it out.")
    examples = first + examples
    info["used"] = len(examples)
    if spec.cv_fold is not None and not any(ex.role == "validation" for ex in examples):
        raise DataError(_empty_fold(spec, info))
    if not examples:
        raise DataError(f"Dataset '{printable(spec.source, 200)}' has no examples left after holding out evaluation "
                        "items.")
    return examples, info


def _empty_fold(spec: DatasetSpec, info: dict[str, Any]) -> str:
    """Why a dataset's cv_fold holds out nothing: no row is in the fold, or max_samples drew none of those that are."""
    where = f"Dataset '{printable(spec.source, 200)}': cv_fold {spec.cv_fold}"
    if info.get("cv_fold_validation"):
        return (f"{where} holds out {info['cv_fold_validation']} rows, and max_samples {spec.max_samples} (drawn at "
                "random) kept none of them: there would be no validation set. Raise max_samples, or use val_first_n "
                "(the first N rows, kept whole).")
    return (f"{where} holds out the rows whose pubid is in PubMedQA PQA-L's official cross-validation fold "
            f"{spec.cv_fold}, and none of its {info['rows']} rows is (no pubid, or not a PQA-L one): there would be "
            "no validation set. Use val_first_n (its first N rows) or data.val_ratio for this data, or remove cv_fold.")


def _weighted(examples: list[Example], weight: float, rng: random.Random) -> list[Example]:
    """weight 2.5 -> every example twice plus a random half of them once more."""
    whole, fraction = int(weight), weight - int(weight)
    extra = rng.sample(examples, int(round(fraction * len(examples))))
    return examples * whole + extra


@dataclass
class Collected:
    name: str
    spec: DatasetSpec
    examples: list[Example]
    info: dict[str, Any]


def collect(data: DataSection, seed: int, extra_eval: list[leakage.Item] | None = None,
            local_only: bool = False) -> list[Collected]:
    """Every training dataset formatted and selected, and the leakage guard passed (no model needed).

    ``extra_eval``: items of the benchmarks this run evaluates on, guarded like data.eval_sets.
    ``local_only`` (--dry-run): hub sources are not downloaded; local ones are checked row by row.
    """
    refuse_repeated_datasets(data)
    collected = []
    for index, spec in enumerate(data.datasets):
        if local_only and resolve_local(spec.source) is None and not looks_local(spec.source):
            check_hub_dataset_id(spec.source)  # downloaded by the run only, but a name that is no id stops here
            continue
        local = resolve_local(spec.source)
        if local is not None and local.is_dir() and spec.use_for == "train":
            refuse_held_out_files(local, f"data.datasets.{index}")
        examples, info = build_examples(spec, load_rows(spec), seed + index)
        collected.append(Collected(f"{index}:{spec.source}", spec, examples, info))
    system = [leakage.Item(leakage.CONFIG, None, data.system_prompt, (("data.system_prompt", data.system_prompt),))
              ] if data.system_prompt and data.system_prompt.strip() else []  # in every prompt: checked once
    system += [leakage.Item(leakage.CONFIG, None, spec.system_prompt,
                            ((f"data.datasets.{i}.system_prompt", spec.system_prompt),))
               for i, spec in enumerate(data.datasets) if spec.system_prompt and spec.system_prompt.strip()]
    guard = leakage.check(
        system + guard_items(collected, data),
        evaluation_items(data, local_only) + (extra_eval or []),
        data.allow_eval_overlap, data.near_duplicate_ngram, data.near_duplicate_threshold, data.possible_near_copies,
    )
    for c in collected:
        c.info["leakage_guard"] = guard
    return collected


def guard_warnings(collected: list[Collected]) -> list[str]:
    """The leakage guard's warning (possible near copies), for the run's list of warnings."""
    guard = collected[0].info.get("leakage_guard", {}) if collected else {}
    return [guard["warning"]] if guard.get("warning") else []


def guard_items(collected: list[Collected], data: DataSection | None = None) -> list[leakage.Item]:
    """One guard item per training example (a weighted dataset repeats examples: each is checked once); with
    ``data``, the system prompt of the config that goes before each example's prompt joined to its start."""
    seen: set[int] = set()
    items = []
    for c in collected:
        system = _system_prompt_of(c, data)
        for ex in c.examples:
            if id(ex) not in seen:
                seen.add(id(ex))
                texts = ex.guard_texts()
                items.append(leakage.Item(c.name, ex.uid, ex.question, texts + _system_seam(system, texts), ex.row))
    return items


def _system_prompt_of(c: Collected, data: DataSection | None) -> tuple[str, str] | None:
    """(setting, text) of the config's system prompt that goes before the dataset's prompts, if any."""
    if data is None:
        return None
    index = c.name.split(":", 1)[0]
    if c.spec.system_prompt and c.spec.system_prompt.strip():
        return f"data.datasets.{index}.system_prompt", c.spec.system_prompt
    if data.system_prompt and data.system_prompt.strip():
        return "data.system_prompt", data.system_prompt
    return None


def _system_seam(system: tuple[str, str] | None, texts: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The end of the config's system prompt and the start of the example's prompt as one text: a question split
    between them is whole in the prompt the model reads, and neither holds it (the system prompt is checked alone
    once, as a config item)."""
    if system is None or not texts:
        return ()
    tail = " ".join(system[1].split()[-SEAM_WORDS:])
    head = " ".join(texts[0][1].split()[:SEAM_WORDS])
    return ((f"{system[0]} + {texts[0][0]} (joined)", f"{tail} {head}"),)


def evaluation_items(data: DataSection, local_only: bool = False) -> list[leakage.Item]:
    """PubMedQA's official test questions, plus every set listed in data.eval_sets (local ones only with
    ``local_only``)."""
    rows = json_text.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    items = []
    for pmid in sorted(pubmedqa_test_ids()):  # the question, and its abstract and long answer (their text)
        question, contexts = rows[pmid]["QUESTION"], rows[pmid]["CONTEXTS"]
        items.append(leakage.Item("pubmedqa-test", pmid, question))
        items += [leakage.Item("pubmedqa-test", pmid, text, part=f"abstract paragraph {i + 1}", of=question)
                  for i, text in enumerate(contexts)]
        items.append(leakage.Item("pubmedqa-test", pmid, "\n".join(contexts), part="abstract", of=question))
        items.append(leakage.Item("pubmedqa-test", pmid, rows[pmid]["LONG_ANSWER"], part="long answer", of=question))
    for spec in data.eval_sets:
        if local_only and resolve_local(spec.source) is None and not looks_local(spec.source):
            check_hub_dataset_id(spec.source)
            continue
        items += [leakage.Item(spec.source, ex.uid, ex.question) for ex in format_rows(spec, load_rows(spec))]
    return items


def padding_report(lengths: list[int], micro_batch: int, max_len: int, seed: int) -> dict[str, float]:
    """Share of each batch that is padding: random batches, length-grouped batches, packed rows."""
    if not lengths:
        return {}
    shuffled = list(lengths)
    random.Random(seed).shuffle(shuffled)

    def padded(order: list[int]) -> float:
        batches = [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]
        slots = sum(max(b) * len(b) for b in batches)
        return round(1 - sum(order) / slots, 4)

    bins: list[int] = []  # first-fit decreasing, as TRL's "bfd" packing does
    for length in sorted(lengths, reverse=True):
        for i, used in enumerate(bins):
            if used + length <= max_len:
                bins[i] += length
                break
        else:
            bins.append(length)
    return {
        "random_batches": padded(shuffled),
        "length_grouped_batches": padded(sorted(shuffled, reverse=True)),
        "packed_rows": round(1 - sum(lengths) / (len(bins) * max_len), 4),
        "packed_rows_count": len(bins),
    }


