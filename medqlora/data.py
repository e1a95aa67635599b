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


@register("multiple_choice")
def format_multiple_choice(row: dict[str, Any], spec: DatasetSpec) -> Example:
    question = _column(row, spec, "question")
    options = _column(row, spec, "options")
    if isinstance(options, list):
        options = {chr(ord("A") + i): text for i, text in enumerate(options)}
    answer = str(_column(row, spec, "answer_idx")).strip()
    if answer not in options:
        raise DataError(f"Dataset '{spec.source}': answer_idx {answer!r} is not one of the options {sorted(options)}.")
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    prompt = f"{question}\n\n{lines}\n\nAnswer with the letter of the correct option."
    return Example(prompt=prompt, response=f"{answer}. {options[answer]}")


@register("instruction")
def format_instruction(row: dict[str, Any], spec: DatasetSpec) -> Example:
    instruction = _column(row, spec, "instruction", "question")
    extra = row.get(spec.columns.get("input", "input"))
    prompt = f"{instruction}\n\n{extra}" if extra else str(instruction)
    return Example(prompt=prompt, response=str(_column(row, spec, "output", "answer", "response")))


@register("chat")
def format_chat(row: dict[str, Any], spec: DatasetSpec) -> Example:
    messages = _column(row, spec, "messages", "conversations")
    if not messages or messages[-1].get("role") != "assistant":
        raise DataError(f"Dataset '{spec.source}': each 'messages' list must end with an assistant turn.")
    history = "\n\n".join(m["content"] for m in messages[:-1] if m.get("role") != "system")
    return Example(prompt=history, response=messages[-1]["content"])


# ---------------------------------------------------------------- leakage guard


def pubmedqa_test_ids() -> set[str]:
    """The 500 PMIDs of PubMedQA's official test split: never trained on."""
    return set(json.loads(PUBMEDQA_TEST_FILE.read_text()))


def build_examples(spec: DatasetSpec, rows: list[dict[str, Any]], seed: int) -> tuple[list[Example], dict]:
    formatter = FORMATS[spec.format]
    examples = [formatter(row, spec) for row in rows]
    info: dict[str, Any] = {"rows": len(rows)}
    if spec.format == "pubmedqa":
        held_out = pubmedqa_test_ids()
        kept = [ex for ex in examples if ex.uid not in held_out]
        info["held_out_pubmedqa_test"] = len(examples) - len(kept)
        examples = kept
    random.Random(seed).shuffle(examples)
    if spec.max_samples is not None:
        examples = examples[: spec.max_samples]
    info["used"] = len(examples)
    return examples, info


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


def prepare(
    data: DataSection, tokenizer: Any, max_len: int, seed: int, rows_by_spec: list[list[dict]] | None = None
) -> PreparedData:
    """Load, format, hold out evaluation items, tokenize and split every dataset of the config."""
    end = turn_end(tokenizer)
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    fingerprints: dict[str, str] = {}
    for index, spec in enumerate(data.datasets):
        rows = rows_by_spec[index] if rows_by_spec is not None else load_rows(spec)
        examples, info = build_examples(spec, rows, seed)
        name = f"{index}:{spec.source}"
        raw_lengths: list[int] = []
        outcomes: dict[str, int] = {}
        for example in examples:
            full, _ = tokenize_example(example, tokenizer, data.system_prompt, 10**9, "truncate", end)
            raw_lengths.append(len(full["input_ids"]))
            tokenized, outcome = tokenize_example(example, tokenizer, data.system_prompt, max_len, data.too_long, end)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if tokenized is not None:
                tokenized["source"] = index
                tokenized["uid"] = example.uid
                records.append(tokenized)
        stats[name] = {**info, "tokens_before_fitting": length_stats(raw_lengths, max_len), "fitting": outcomes}
        fingerprints[name] = fingerprint(spec)
    if not records:
        raise DataError("No training examples are left after formatting and fitting to max_seq_length.")
    random.Random(seed).shuffle(records)
    n_val = int(round(len(records) * data.val_ratio))
    validation, train = records[:n_val], records[n_val:]
    stats["total"] = {"train": len(train), "validation": len(validation)}
    return PreparedData(train=train, validation=validation, stats=stats, fingerprints=fingerprints)


def count_rows(data: DataSection, seed: int) -> dict[str, Any]:
    """Dataset sizes for --dry-run: local sources are read (cheap), hub sources are not downloaded."""
    sizes: dict[str, Any] = {}
    for index, spec in enumerate(data.datasets):
        name = f"{index}:{spec.source}"
        if resolve_local(spec.source) is None:
            sizes[name] = {"rows": "unknown until downloaded", "used": spec.max_samples}
            continue
        _, info = build_examples(spec, load_rows(spec), seed)
        sizes[name] = info
    return sizes
