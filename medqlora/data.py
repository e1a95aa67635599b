"""Datasets -> chat-formatted, tokenized training examples with the prompt masked out of the loss.

Pipeline: ``load_rows`` (hub or local file) -> a format turns each row into an ``Example``
(user prompt + target response) -> ``tokenize_examples`` renders it with the model's own chat
template and masks every prompt token to -100.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import KIT_ROOT, DataSection, DatasetSpec
from . import leakage
from .errors import DataError

PUBMEDQA_TEST_FILE = KIT_ROOT / "data" / "pubmedqa" / "test_ground_truth.json"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
IGNORE_INDEX = -100


@dataclass
class Example:
    prompt: str  # the user turn
    response: str  # the assistant turn the model learns to produce
    context: str | None = None  # a part of the prompt that may be shortened to fit max_seq_length
    prompt_template: str = "{context}"  # how prompt and context combine when context is set
    uid: str | None = None
    question: str = ""  # what the leakage guard compares with evaluation questions (default: prompt)
    role: str = "train"  # "validation" for items that a split (e.g. a PubMedQA CV fold) reserves

    def __post_init__(self) -> None:
        if not self.question:
            self.question = self.prompt


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- sources


def resolve_local(source: str) -> Path | None:
    """A local file or folder named by ``source`` (relative to the working dir or the kit), if any."""
    for base in (Path.cwd(), KIT_ROOT):
        path = (base / source).expanduser()
        if path.exists():
            return path
    return None


def load_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    local = resolve_local(spec.source)
    if local is not None:
        return _load_local(local, spec)
    if spec.source.endswith(tuple(LOCAL_SUFFIXES)) or spec.source.startswith((".", "/", "~")):
        raise DataError(f"Dataset file '{spec.source}' not found (looked in {Path.cwd()} and {KIT_ROOT}).")
    return _load_hub(spec)


def _load_local(path: Path, spec: DatasetSpec) -> list[dict[str, Any]]:
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"Dataset file {path} is empty.")
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"Cannot read {path} as JSON: {err}.") from None
        if isinstance(payload, dict) and payload and all(isinstance(v, dict) for v in payload.values()):
            # PubMedQA's original layout: {PMID: {QUESTION, CONTEXTS, ...}}
            return [{"pubid": key, **value} for key, value in payload.items()]
        if isinstance(payload, list):
            return payload
        raise DataError(f"{path}: expected a JSON list of records or a dict keyed by id.")
    builder = LOCAL_SUFFIXES.get(path.suffix)
    if path.is_dir():
        return _datasets_load(str(path), None, spec.split, where=str(path))
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use .json, .jsonl, .csv or .parquet.")
    return _datasets_load(builder, None, "train", where=str(path), data_files=str(path))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return _parse_jsonl(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start} of a line). Save it as UTF-8 JSON Lines.") from None


def _parse_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err}). Each line must be one JSON object.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}.")
            rows.append(row)
    if not rows:
        raise DataError(f"Dataset file {path} has no records.")
    return rows


def _load_hub(spec: DatasetSpec) -> list[dict[str, Any]]:
    return _datasets_load(spec.source, spec.subset, spec.split, where=f"hub dataset '{spec.source}'")


def _datasets_load(name: str, subset: str | None, split: str, where: str, **kwargs: Any) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset, split=split, **kwargs)
    except Exception as err:  # datasets raises many types; all mean "cannot load this source"
        raise DataError(
            f"Cannot load {where} (subset={subset!r}, split={split!r}): {type(err).__name__}: {err}. "
            "Offline? Download it once, or point 'source' at a local .json/.jsonl/.csv/.parquet file."
        ) from None
    return loaded.to_list()


def fingerprint(spec: DatasetSpec) -> str:
    local = resolve_local(spec.source)
    if local is None or local.is_dir():
        return f"hub:{spec.source}:{spec.subset}:{spec.split}"
    return "sha256:" + hashlib.sha256(local.read_bytes()).hexdigest()


# ---------------------------------------------------------------- formats

Formatter = Callable[[dict[str, Any], DatasetSpec], Example]
FORMATS: dict[str, Formatter] = {}


def register(name: str) -> Callable[[Formatter], Formatter]:
    def add(fn: Formatter) -> Formatter:
        FORMATS[name] = fn
        return fn

    return add


def _column(row: dict[str, Any], spec: DatasetSpec, *names: str) -> Any:
    """The first of ``names`` present in ``row`` (after the spec's column mapping)."""
    for name in names:
        mapped = spec.columns.get(name, name)
        if mapped in row and row[mapped] is not None:
            return row[mapped]
    wanted = " or ".join(f"'{spec.columns.get(n, n)}'" for n in names)
    raise DataError(
        f"Dataset '{spec.source}' (format {spec.format}) has no column {wanted}; its columns are "
        f"{sorted(row)}. Map yours with 'columns:' in the dataset entry, e.g. columns: {{{names[0]}: your_column}}."
    )


PUBMEDQA_PROMPT = (
    "Answer the biomedical research question using the abstract below. Start with yes, no or "
    "maybe.\n\nAbstract:\n{context}\n\nQuestion: {question}"
)


@register("pubmedqa")
def format_pubmedqa(row: dict[str, Any], spec: DatasetSpec) -> Example:
    question = _column(row, spec, "question", "QUESTION")
    context = _column(row, spec, "context", "CONTEXTS")
    contexts = context["contexts"] if isinstance(context, dict) else context
    label = str(_column(row, spec, "final_decision")).strip().lower()
    if label not in {"yes", "no", "maybe"}:
        raise DataError(f"PubMedQA row {row.get('pubid')}: final_decision {label!r} is not yes/no/maybe.")
    response = label
    if spec.long_answer:
        response = f"{label}. {_column(row, spec, 'long_answer', 'LONG_ANSWER')}"
    return Example(
        prompt="",
        response=response,
        context="\n".join(contexts),
        prompt_template=PUBMEDQA_PROMPT.replace("{question}", str(question).replace("{", "{{").replace("}", "}}")),
        uid=str(row.get("pubid")),
        question=str(question),
    )


@register("medical_o1")
def format_medical_o1(row: dict[str, Any], spec: DatasetSpec) -> Example:
    question = _column(row, spec, "Question")
    thinking = _column(row, spec, "Complex_CoT")
    answer = _column(row, spec, "Response")
    if spec.cot_style == "tags":
        response = f"<think>\n{thinking}\n</think>\n<response>\n{answer}\n</response>"
    else:
        response = f"## Thinking\n\n{thinking}\n\n## Final Response\n\n{answer}"
    return Example(prompt=str(question), response=response)


def mc_options(row: dict[str, Any], spec: DatasetSpec) -> dict[str, str]:
    """The options of a multiple-choice record as {letter: text} (a plain list is lettered A, B, ...)."""
    options = _column(row, spec, "options")
    if isinstance(options, list):
        options = {chr(ord("A") + i): text for i, text in enumerate(options)}
    return options


@register("multiple_choice")
def format_multiple_choice(row: dict[str, Any], spec: DatasetSpec) -> Example:
    question = _column(row, spec, "question")
    options = mc_options(row, spec)
    answer = str(_column(row, spec, "answer_idx")).strip()
    if answer not in options:
        raise DataError(f"Dataset '{spec.source}': answer_idx {answer!r} is not one of the options {sorted(options)}.")
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    prompt = f"{question}\n\n{lines}\n\nAnswer with the letter of the correct option."
    uid = row.get("realidx", row.get("id"))
    return Example(prompt=prompt, response=f"{answer}. {options[answer]}", question=str(question),
                   uid=None if uid is None else str(uid))


@register("instruction")
def format_instruction(row: dict[str, Any], spec: DatasetSpec) -> Example:
    instruction = _column(row, spec, "instruction", "question")
    extra = row.get(spec.columns.get("input", "input"))
    prompt = f"{instruction}\n\n{extra}" if extra else str(instruction)
    return Example(prompt=prompt, response=str(_column(row, spec, "output", "answer", "response")),
                   question=str(instruction))


@register("chat")
def format_chat(row: dict[str, Any], spec: DatasetSpec) -> Example:
    messages = _column(row, spec, "messages", "conversations")
    if not messages or messages[-1].get("role") != "assistant":
        raise DataError(f"Dataset '{spec.source}': each 'messages' list must end with an assistant turn.")
    history = "\n\n".join(m["content"] for m in messages[:-1] if m.get("role") != "system")
    last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), history)
    return Example(prompt=history, response=messages[-1]["content"], question=last_user)


# ---------------------------------------------------------------- selection, held-out items, mixing

PUBMEDQA_DIR = KIT_ROOT / "data" / "pubmedqa"


def pubmedqa_test_ids() -> set[str]:
    """The 500 PMIDs of PubMedQA's official test split: never trained on."""
    return set(json.loads(PUBMEDQA_TEST_FILE.read_text()))


def pubmedqa_folds() -> list[list[str]]:
    return json.loads((PUBMEDQA_DIR / "pqal_split_pmids.json").read_text())["folds"]


FORMAT_SHAPES = {
    "pubmedqa": '{"pubid", "question", "context": {"contexts": [...]} or [...], "final_decision", "long_answer"}',
    "medical_o1": '{"Question", "Complex_CoT", "Response"} (strings)',
    "multiple_choice": '{"question", "options": {"A": ..., "B": ...} or [...], "answer_idx": "A"}',
    "instruction": '{"instruction" or "question", optional "input", "output" or "answer"}',
    "chat": '{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", "content": ...}]}',
}


def format_rows(spec: DatasetSpec, rows: list[dict[str, Any]]) -> list[Example]:
    formatter = FORMATS[spec.format]
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise DataError(f"expected a record (JSON object), got {type(row).__name__}.")
            examples.append(formatter(row, spec))
        except DataError as err:
            raise DataError(f"Record {number} of '{spec.source}': {err}") from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DataError(
                f"Record {number} of '{spec.source}' does not have the shape the {spec.format} format needs "
                f"({type(err).__name__}: {err}). Expected: {FORMAT_SHAPES.get(spec.format, 'see the README')}."
            ) from None
    return examples


def build_examples(spec: DatasetSpec, rows: list[dict[str, Any]], seed: int) -> tuple[list[Example], dict]:
    """Format rows, hold out evaluation items, shuffle (seeded), cap and weight one dataset."""
    examples = format_rows(spec, rows)
    info: dict[str, Any] = {"rows": len(rows)}
    if spec.format == "pubmedqa":
        held_out = pubmedqa_test_ids()
        kept = [ex for ex in examples if ex.uid not in held_out]
        info["held_out_pubmedqa_test"] = len(examples) - len(kept)
        examples = kept
        if spec.cv_fold is not None:
            fold = set(pubmedqa_folds()[spec.cv_fold])
            for ex in examples:
                ex.role = "validation" if ex.uid in fold else "train"
            info["cv_fold_validation"] = sum(ex.role == "validation" for ex in examples)
    if spec.use_for == "validation":
        for ex in examples:
            ex.role = "validation"
    rng = random.Random(seed)
    rng.shuffle(examples)
    if spec.max_samples is not None:
        examples = examples[: spec.max_samples]
    if spec.weight != 1.0:
        examples = _weighted(examples, spec.weight, rng)
    info["used"] = len(examples)
    if not examples:
        raise DataError(f"Dataset '{spec.source}' has no examples left after holding out evaluation items.")
    return examples, info


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


def collect(data: DataSection, seed: int, extra_eval: list[leakage.Item] | None = None) -> list[Collected]:
    """Every training dataset formatted and selected, and the leakage guard passed (no model needed).

    ``extra_eval``: items of the benchmarks this run evaluates on, guarded like data.eval_sets.
    """
    collected = []
    for index, spec in enumerate(data.datasets):
        examples, info = build_examples(spec, load_rows(spec), seed + index)
        collected.append(Collected(f"{index}:{spec.source}", spec, examples, info))
    guard = leakage.check(
        [leakage.Item(c.name, ex.uid, ex.question) for c in collected for ex in c.examples],
        evaluation_items(data) + (extra_eval or []),
        data.allow_eval_overlap,
    )
    for c in collected:
        c.info["leakage_guard"] = guard
    return collected


def evaluation_items(data: DataSection) -> list[leakage.Item]:
    """PubMedQA's official test questions, plus every set listed in data.eval_sets."""
    rows = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    items = [leakage.Item("pubmedqa-test", pmid, rows[pmid]["QUESTION"]) for pmid in sorted(pubmedqa_test_ids())]
    for spec in data.eval_sets:
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


# ---------------------------------------------------------------- chat rendering + tokenization

_PROBE = "MEDQLORA-PROBE-RESPONSE"


def render_prompt(tokenizer: Any, system_prompt: str | None, user: str) -> str:
    """The chat-templated prompt up to and including the assistant header."""
    return tokenizer.apply_chat_template(
        _messages(tokenizer, system_prompt, user), tokenize=False, add_generation_prompt=True
    )


def _messages(tokenizer: Any, system_prompt: str | None, user: str) -> list[dict[str, str]]:
    if not system_prompt:
        return [{"role": "user", "content": user}]
    with_system = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    try:
        tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
        return with_system
    except Exception:  # templates without a system role (e.g. Mistral's) raise a TemplateError
        return [{"role": "user", "content": f"{system_prompt}\n\n{user}"}]


def turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. '<|im_end|>\\n', '<|eot_id|>')."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _PROBE not in text:
        return tokenizer.eos_token or ""
    suffix = text.split(_PROBE, 1)[1]
    return suffix if suffix.strip() else (tokenizer.eos_token or "")


def tokenize_example(
    example: Example, tokenizer: Any, system_prompt: str | None, max_len: int, too_long: str, end: str
) -> tuple[dict[str, list[int]] | None, str]:
    """Token ids and labels (prompt masked) for one example, and what was done to fit max_len."""
    response_ids = tokenizer(example.response + end, add_special_tokens=False)["input_ids"]
    context = example.context
    outcome = "fits"
    for _ in range(4):
        user = example.prompt_template.format(context=context) if context is not None else example.prompt
        prompt_ids = tokenizer(render_prompt(tokenizer, system_prompt, user), add_special_tokens=False)["input_ids"]
        overflow = len(prompt_ids) + len(response_ids) - max_len
        if overflow <= 0:
            break
        if too_long == "drop":
            return None, "dropped"
        if not context:
            break
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        keep = max(0, len(context_ids) - overflow - 8)
        context = tokenizer.decode(context_ids[:keep]) + " ..." if keep else ""
        outcome = "context_truncated"
    else:
        overflow = len(prompt_ids) + len(response_ids) - max_len
    if overflow > 0:
        if len(prompt_ids) >= max_len - 8:
            return None, "dropped"
        response_ids = response_ids[: max_len - len(prompt_ids)]
        outcome = "response_truncated"
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }, outcome


def length_stats(lengths: list[int], max_len: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "over_max_seq_length": sum(length > max_len for length in ordered),
    }


def tokenize_collected(
    collected: list[Collected], data: DataSection, tokenizer: Any, max_len: int, seed: int, micro_batch: int = 1
) -> PreparedData:
    """Render, tokenize and fit every example; split off validation items."""
    end = turn_end(tokenizer)
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for c in collected:
        raw_lengths: list[int] = []
        outcomes: dict[str, int] = {}
        for example in c.examples:
            full, _ = tokenize_example(example, tokenizer, data.system_prompt, 10**9, "truncate", end)
            raw_lengths.append(len(full["input_ids"]))
            tokenized, outcome = tokenize_example(example, tokenizer, data.system_prompt, max_len, data.too_long, end)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if tokenized is not None:
                records.append({**tokenized, "source": c.name, "uid": example.uid, "role": example.role,
                                "question_hash": leakage.question_hash(example.question), "example": example,
                                "format": c.spec.format, "cot_style": c.spec.cot_style})
        stats[c.name] = {**c.info, "tokens_before_fitting": length_stats(raw_lengths, max_len), "fitting": outcomes}
    if not records:
        raise DataError(
            f"No training examples fit model.max_seq_length={max_len}. Raise it, or set data.too_long: truncate."
        )
    random.Random(seed).shuffle(records)
    reserved = [r for r in records if r["role"] == "validation"]
    pool = [r for r in records if r["role"] != "validation"]
    n_val = int(round(len(pool) * data.val_ratio))
    validation, train = reserved + pool[:n_val], pool[n_val:]
    if not train:
        raise DataError("No training examples are left after the validation split; lower data.val_ratio.")
    stats["total"] = {
        "train": len(train),
        "validation": len(validation),
        "train_tokens": sum(len(r["input_ids"]) for r in train),
        "padding_fraction": padding_report([len(r["input_ids"]) for r in train], micro_batch, max_len, seed),
    }
    fingerprints = {c.name: fingerprint(c.spec) for c in collected}
    return PreparedData(train=train, validation=validation, stats=stats, fingerprints=fingerprints)


def prepare(data: DataSection, tokenizer: Any, max_len: int, seed: int, micro_batch: int = 1) -> PreparedData:
    return tokenize_collected(collect(data, seed), data, tokenizer, max_len, seed, micro_batch)


def count_rows(data: DataSection, seed: int) -> dict[str, Any]:
    """Dataset sizes for --dry-run: local sources are read and checked, hub sources are not downloaded."""
    sizes: dict[str, Any] = {}
    local = [spec for spec in data.datasets if resolve_local(spec.source) is not None]
    if len(local) == len(data.datasets):
        return {c.name: c.info for c in collect(data, seed)}
    for index, spec in enumerate(data.datasets):
        sizes[f"{index}:{spec.source}"] = {"rows": "unknown until downloaded", "used": spec.max_samples}
    return sizes
