"""Benchmarks: PubMedQA (official test split) and multiple choice, scored by answer likelihood or by
parsing a generated reply, with the same prompts the kit trains on.

likelihood: one forward pass per item; the score of an answer is the log-probability of its first
token right after the prompt (its capitalised form counted too: 'yes' or 'Yes'). The highest score
wins; a tie goes to the answer listed first.
generate: greedy decoding, then the answer is extracted from the reply (see ``extract_answer``);
replies with no answer, or with several different ones, are counted as unparsed (and wrong).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import BenchmarkSpec, DatasetSpec, KitConfig
from .data import (Example, apply_template, dataset_of_format, format_rows, load_rows, mc_options, pubmedqa_test_ids,
                   resolve_local, system_prompt_of, tokenize_example)
from .distributed import shared_map
from .errors import DataError
from .progress import bar
from .secrets import printable

PUBMEDQA_LABELS = ["yes", "no", "maybe"]
REFERENCES: dict[str, list[tuple[str, float]]] = {
    "pubmedqa": [
        ("majority class (always 'yes')", 55.2),
        ("BioBERT (Jin et al. 2019)", 68.1),
        ("single human annotator (Jin et al. 2019)", 78.0),
        ("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper, Table 1)", 75.2),
        ("HuatuoGPT-o1-8B (HuatuoGPT-o1 paper, Table 1)", 79.2),
    ],
    "medqa": [("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper)", 58.7), ("HuatuoGPT-o1-8B", 72.6)],
    "medmcqa": [("Llama-3.1-8B-Instruct (HuatuoGPT-o1 paper)", 56.0), ("HuatuoGPT-o1-8B", 60.4)],
}


@dataclass
class EvalItem:
    uid: str
    example: Example  # the prompt, exactly as in training
    gold: str
    choices: list[str]
    option_texts: dict[str, str] = field(default_factory=dict)
    format: str = ""  # the data format of its prompt: a training dataset of that format lends its prompt settings


# ---------------------------------------------------------------- items


def load_items(bench: BenchmarkSpec, seed: int) -> list[EvalItem]:
    items = ITEM_LOADERS[bench.kind](bench)
    if bench.max_items is not None and bench.max_items < len(items):
        items = random.Random(seed).sample(items, bench.max_items)
    return items


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
    items = []
    for example in format_rows(spec, load_rows(spec)):  # every row checked, bad ones named by file and row
        if example.uid in test_ids:
            items.append(EvalItem(example.uid, example, example.response, PUBMEDQA_LABELS, format="pubmedqa"))
    if not items:
        raise DataError(f"Benchmark '{bench.name}': no PubMedQA official test questions found in {source}.")
    return sorted(items, key=lambda item: item.uid)


def _multiple_choice_items(bench: BenchmarkSpec) -> list[EvalItem]:
    if bench.source is None:
        raise DataError(f"Benchmark '{bench.name}': multiple_choice needs a source (hub id or .jsonl file).")
    spec = DatasetSpec(source=bench.source, format="multiple_choice", subset=bench.subset, split=_split(bench),
                       columns=bench.columns)
    rows = load_rows(spec)
    items = []
    for number, (row, example) in enumerate(zip(rows, format_rows(spec, rows), strict=True), start=1):
        options = mc_options(row, spec)  # checked by format_rows already
        letter = example.response.split(".", 1)[0]
        items.append(EvalItem(example.uid or str(number), example, letter, sorted(options), dict(options),
                              format="multiple_choice"))
    return items


# ---------------------------------------------------------------- likelihood scoring


def answer_token_ids(tokenizer: Any, choices: list[str]) -> list[list[int]]:
    """For each answer, the first token of each surface form ('yes', 'Yes')."""
    ids = []
    for choice in choices:
        forms = dict.fromkeys([choice, choice.capitalize(), choice.upper()])
        ids.append(sorted({tokenizer(form, add_special_tokens=False)["input_ids"][0] for form in forms}))
    flat = [i for group in ids for i in group]
    if len(flat) != len(set(flat)):
        raise DataError(f"Answers {choices} share a first token with this tokenizer; use method: generate.")
    return ids


def score_likelihood(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem]) -> list[dict[str, Any]]:
    fitted = [_prompt_ids(cfg, tokenizer, item, evaluation_length(cfg, model) - 1, reserved=1) for item in items]
    prompts = [ids for ids, _ in fitted]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # batch by length: little padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logprobs_of: dict[int, Any] = {}
    with bar(len(order), "scoring") as progress:
        for start in range(0, len(order), cfg.eval.batch_size):
            batch = order[start : start + cfg.eval.batch_size]
            logprobs_of.update(zip(batch, _last_logprobs(model, [prompts[i] for i in batch], pad), strict=True))
            progress.update(len(batch))
    groups_cache: dict[tuple, list[list[int]]] = {}
    results = []
    for i, item in enumerate(items):
        groups = groups_cache.setdefault(tuple(item.choices), answer_token_ids(tokenizer, item.choices))
        scores = [logprobs_of[i][group].logsumexp(dim=0).item() for group in groups]
        results.append({"pred": item.choices[_argmax(scores)], "scores": [round(s, 4) for s in scores],
                        "shortened": fitted[i][1]})
    return results


def _last_logprobs(model: Any, prompts: list[list[int]], pad: int) -> Any:
    """Log-probabilities of the next token after each prompt (one batch, left-padded, on the CPU)."""
    import torch

    width = max(len(p) for p in prompts)
    # left padding, with position ids that ignore it, so the last position is every prompt's end
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = _last_logits(model, ids.to(device), mask.to(device), positions.to(device))
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _argmax(scores: list[float]) -> int:
    best = max(scores)
    return scores.index(best)  # ties: the answer listed first


def _last_logits(model: Any, ids: Any, mask: Any, positions: Any) -> Any:
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    except TypeError:  # models whose forward has no logits_to_keep
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1, :]


def evaluation_length(cfg: KitConfig, model: Any) -> int:
    """Tokens an evaluation prompt may use: eval.max_length, else the model's context length (training's
    max_seq_length does not limit evaluation)."""
    if cfg.eval.max_length is not None:
        length = cfg.eval.max_length
    else:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        length = context if isinstance(context, int) and context > 0 else cfg.model.max_seq_length
    # Unsloth's models take no input longer than the max_seq_length they were loaded with (a mismatch error)
    loaded = getattr(model, "max_seq_length", None)
    return min(length, loaded) if isinstance(loaded, int) and loaded > 0 else length


def item_prompt(cfg: KitConfig, item: EvalItem) -> tuple[str | None, Example]:
    """(system prompt, prompt-only example) of an item, as the training dataset of its format was rendered
    (its prompt_template and system prompt), else as the format renders it with data.system_prompt."""
    spec = dataset_of_format(cfg.data, item.format)
    example = item.example
    if spec is not None and spec.prompt_template is not None and example.fields:
        example = apply_template(dataclasses.replace(example), spec.prompt_template)
    prompt_only = Example(prompt=example.prompt, response="", context=example.context,
                          prompt_template=example.prompt_template)
    return system_prompt_of(cfg.data, spec), prompt_only


def _prompt_ids(cfg: KitConfig, tokenizer: Any, item: EvalItem, limit: int,
                reserved: int = 0) -> tuple[list[int], bool]:
    """The item's prompt ids, its context shortened when the prompt is longer than ``limit``; and whether it was.
    ``reserved``: the tokens of the evaluation length kept for the answer (named in the message)."""
    system_prompt, prompt_only = item_prompt(cfg, item)
    fitted, outcome = tokenize_example(prompt_only, tokenizer, system_prompt, limit, "truncate", "")
    if fitted is None:
        whole, _ = tokenize_example(prompt_only, tokenizer, system_prompt, 10**9, "truncate", "")
        raise DataError(f"Evaluation item {printable(item.uid)}: its prompt is {len(whole['input_ids'])} tokens even "
                        f"with its context shortened, more than the {limit} evaluation allows (eval.max_length "
                        f"{limit + reserved}, by default the model's context length, less {reserved} kept for the "
                        f"answer{': eval.max_new_tokens' if cfg.eval.method == 'generate' else ''}). "
                        "Raise eval.max_length if the model takes longer inputs, or leave the item out.")
    return fitted["input_ids"], outcome == "context_truncated"


def check_prompts_fit(cfg: KitConfig, tokenizer: Any, items_by_bench: dict[str, list[EvalItem]]) -> None:
    """Before a model loads (and at --dry-run): every evaluation prompt fits eval.max_length, its context
    shortened where it has one, or the run is refused with the item, as scoring would refuse it later."""
    if cfg.eval.max_length is None or tokenizer is None:
        return  # the model's context length is known once it loads
    for name, items in items_by_bench.items():
        generated = cot_style_of(cfg, name) is not None or cfg.eval.method == "generate"
        reserved = cfg.eval.max_new_tokens if generated else 1
        for item in items:
            _prompt_ids(cfg, tokenizer, item, cfg.eval.max_length - reserved, reserved=reserved)


# ---------------------------------------------------------------- generation scoring

_FINAL = [re.compile(r"##\s*Final Response\s*(.*)", re.S | re.I), re.compile(r"<response>(.*?)(</response>|$)", re.S)]
_LETTER = re.compile(r"(?:\(([A-E])\)|\*\*([A-E])\*\*|(?:option|choice)\s+([A-E])\b|(?:^|\s)([A-E])[.):](?=\s|$))")
_STATED = re.compile(r"(?:the\s+)?(?:correct\s+|final\s+)?answer\s+is\s*:?\s*\(?\**([A-Za-z]+)\b", re.I)


def extract_answer(text: str, choices: list[str], option_texts: dict[str, str] | None = None) -> str | None:
    """The answer a reply gives, or None when it gives none or several different ones.

    Looks in the final-response section when there is one (HuatuoGPT-o1 '## Final Response' or
    <response> tags), then for 'the answer is X', then for the reply opening with an answer, then for
    exactly one answer (or exactly one option's text) mentioned as a word.
    """
    section = text
    for pattern in _FINAL:
        match = pattern.search(text)
        if match:
            section = match.group(1)
            break
    lookup = {c.lower(): c for c in choices}
    stated = {lookup[m.lower()] for m in _STATED.findall(section) if m.lower() in lookup}
    if len(stated) == 1:
        return stated.pop()
    if stated:
        return None
    words = len(choices[0]) > 1
    opening = (re.match(r"\W*([A-Za-z]+)\b", section) if words
               else re.match(r"[\s*(]*([A-E])(?:[.):*]|\s*$)", section))
    if opening and opening.group(1).lower() in lookup:
        return lookup[opening.group(1).lower()]
    if words:
        return None  # yes/no/maybe also occur in prose ("there is no evidence"): no guessing
    letters = {g for groups in _LETTER.findall(section) for g in groups if g} & set(choices)
    if len(letters) == 1:
        return letters.pop()
    if option_texts and not letters:
        hits = [letter for letter, option in option_texts.items() if option and option.lower() in section.lower()]
        if len(hits) == 1:
            return hits[0]
    return None


def _replies(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem]) -> list[tuple[str, bool]]:
    """Greedy (or configured) replies to the items' prompts, and whether each prompt's context was shortened to
    leave room for eval.max_new_tokens within the evaluation length."""
    from .generate import generate_texts

    limit = evaluation_length(cfg, model) - cfg.eval.max_new_tokens
    fitted = [_prompt_ids(cfg, tokenizer, item, limit, reserved=cfg.eval.max_new_tokens) for item in items]
    replies = generate_texts(cfg, model, tokenizer, [tokenizer.decode(ids) for ids, _ in fitted],
                             cfg.eval.max_new_tokens, cfg.eval.batch_size)
    return [(reply, shortened) for reply, (_, shortened) in zip(replies, fitted, strict=True)]


def _speed(n: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 2), "items_per_second": round(n / max(seconds, 1e-9), 2)}


def score_generate(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem]) -> list[dict[str, Any]]:
    replies = _replies(cfg, model, tokenizer, items)
    return [{"pred": extract_answer(reply, item.choices, item.option_texts), "reply": reply, "shortened": shortened}
            for item, (reply, shortened) in zip(items, replies, strict=True)]


# ---------------------------------------------------------------- metrics and report


def classification_metrics(gold: list[str], pred: list[str | None], labels: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 (as PubMedQA's evaluation.py: per-label F1, 0 where undefined, averaged)."""
    n = len(gold)
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    unparsed = sum(p is None for p in pred)
    correct = sum(g == p for g, p in zip(gold, pred, strict=True))
    gold_counts = {label: sum(g == label for g in gold) for label in labels}
    majority = max(labels, key=lambda label: gold_counts[label])
    return {
        "items": n,
        "accuracy": round(100 * correct / n, 2) if n else math.nan,
        "macro_f1": round(100 * sum(f1s) / len(f1s), 2),
        "unparsed": unparsed,
        "accuracy_of_parsed": round(100 * correct / (n - unparsed), 2) if n - unparsed else math.nan,
        "predicted": {label: sum(p == label for p in pred) for label in labels},
        "gold": gold_counts,
        "majority_label": majority,
        "majority_rate": round(100 * gold_counts[majority] / n, 2) if n else math.nan,
    }


ONE_ANSWER_SHARE = 0.9  # a model that gives one answer to more items than this is flagged in the summary


def one_answer_warning(name: str, stage: str, metrics: dict[str, Any]) -> str | None:
    """A sentence when the model gives one answer to more than 90% of the items, with how its accuracy compares to
    always giving the most common gold answer; None otherwise."""
    predicted = metrics.get("predicted") or {}
    if not predicted or not metrics.get("items") or "majority_rate" not in metrics:
        return None
    label, count = max(predicted.items(), key=lambda kv: kv[1])
    share = count / metrics["items"]
    if share <= ONE_ANSWER_SHARE:
        return None
    accuracy, majority = metrics["accuracy"], metrics["majority_rate"]
    compared = "below" if accuracy < majority else "the same as" if accuracy == majority else "above"
    return (f"the {stage.replace('_', '-')} model answers '{label}' to {100 * share:.0f}% of {name}'s items; its "
            f"accuracy {metrics['accuracy']:.1f}% is {compared} always answering '{metrics['majority_label']}' "
            f"({metrics['majority_rate']:.1f}%): read macro-F1 ({metrics['macro_f1']:.1f}) beside accuracy")


def evaluate(cfg: KitConfig, model: Any, tokenizer: Any, items_by_bench: dict[str, list[EvalItem]]) -> dict:
    """Score every benchmark with the configured method; returns {benchmark: metrics}."""
    results = {}
    score = score_likelihood if cfg.eval.method == "likelihood" else score_generate
    for name, items in items_by_bench.items():
        style = cot_style_of(cfg, name)
        if style is not None:
            results[name] = score_cot(cfg, model, tokenizer, items, style)
            continue
        began = time.perf_counter()
        scored = shared_map(lambda part: score(cfg, model, tokenizer, part), items)
        seconds = time.perf_counter() - began
        metrics = classification_metrics([i.gold for i in items], [s["pred"] for s in scored], items[0].choices)
        metrics.update(method=cfg.eval.method, **_speed(len(items), seconds),
                       shortened=sum(bool(s.get("shortened")) for s in scored),
                       per_item=[{"uid": i.uid, "gold": i.gold, **s} for i, s in zip(items, scored, strict=True)])
        results[name] = metrics
    return results


def cot_style_of(cfg: KitConfig, name: str) -> str | None:
    """The CoT style when benchmark ``name`` is a chain-of-thought one (configured, or the run's own)."""
    for bench in cfg.eval.benchmarks:
        if bench.name == name:
            return bench.cot_style if bench.kind == "cot" else None
    if name.startswith(COT_VALIDATION):
        return name.rsplit(":", 1)[1]
    return None


COT_VALIDATION = "medical-o1 validation"


def load_benchmarks(cfg: KitConfig) -> dict[str, list[EvalItem]]:
    return {bench.name: load_items(bench, cfg.training.seed) for bench in cfg.eval.benchmarks}


def check_not_trained_on(items_by_bench: dict[str, list[EvalItem]], training_items: Path, required: bool = False
                         ) -> None:
    """Refuse to evaluate an adapter on items its run trained on: the questions in its training_items.jsonl
    (normalised as the leakage guard does: case, punctuation, accents and invisible characters ignored),
    and the evaluation questions its data_stats.json says the run was allowed to train on
    (data.allow_eval_overlap: exact copies and near duplicates inside longer texts). ``required``: the adapter is in
    a run folder of the kit, which writes the file before training; without it the check cannot be made."""
    from .leakage import flagged_hashes, legacy_question_hash, question_hash
    from .secrets import printable

    if not training_items.is_file():
        if required:
            raise DataError(f"{printable(training_items)} is missing: the run writes it before training, and without "
                            "it what this adapter was trained on cannot be checked, so its scores could be inflated by "
                            "items it learned. Restore the file from the run folder's backup, or evaluate another run.")
        return
    trained: set[str] = set()
    for number, line in enumerate(training_items.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            trained.add(str(record["question_sha1_16"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{training_items}:{number}: not a record of training_items.jsonl (the file is damaged), "
                            "so what this adapter was trained on cannot be checked. Evaluate a run whose "
                            "training_items.jsonl is intact.") from None
    stats_file = training_items.parent / "data_stats.json"
    if stats_file.is_file():
        try:
            trained |= flagged_hashes(json.loads(stats_file.read_text(encoding="utf-8")))
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


def merge(baseline: dict | None, fine_tuned: dict | None) -> dict[str, dict[str, Any]]:
    names = list((fine_tuned or baseline or {}).keys())
    return {n: {"baseline": (baseline or {}).get(n), "fine_tuned": (fine_tuned or {}).get(n)} for n in names}


# ---------------------------------------------------------------- chain-of-thought formats

def split_cot(text: str, style: str) -> tuple[str | None, str | None]:
    """(reasoning, final response) of a reply in the given style; None for a missing part."""
    if style == "tags":
        thinking = re.search(r"<think>(.*?)(?:</think>|$)", text, re.S)
        final = re.search(r"<response>(.*?)</response>", text, re.S)
    else:
        thinking = re.search(r"## Thinking\s*(.*?)\s*(?:## Final Response|$)", text, re.S)
        final = re.search(r"## Final Response\s*(.*)", text, re.S)
    return (thinking.group(1).strip() if thinking else None, final.group(1).strip() if final else None)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def cot_metrics(replies: list[str], references: list[str], style: str) -> dict[str, Any]:
    """Format compliance (both parts present), replies that at least open the reasoning part, mean reasoning
    length in words (of those), ROUGE-L of the final response (of the whole reply where it has none)."""
    parts = [split_cot(r, style) for r in replies]
    closed = [style != "tags" or "</think>" in r for r in replies]
    compliant = [t is not None and f is not None and c for (t, f), c in zip(parts, closed, strict=True)]
    reasoning = [len(t.split()) for t, _ in parts if t is not None]
    rouge = [rouge_l(f if f is not None else r, split_cot(ref, style)[1] or ref)
             for (_, f), r, ref in zip(parts, replies, references, strict=True)]
    n = len(replies)
    return {
        "items": n,
        "started_reasoning": round(100 * len(reasoning) / n, 2) if n else math.nan,
        "format_compliance": round(100 * sum(compliant) / n, 2) if n else math.nan,
        "mean_reasoning_words": round(sum(reasoning) / len(reasoning), 1) if reasoning else 0.0,
        "rouge_l": round(100 * sum(rouge) / n, 2) if n else math.nan,
    }


def cot_items_from(examples: list[Example], limit: int) -> list[EvalItem]:
    return [EvalItem(ex.uid or str(i), ex, ex.response, [], format="medical_o1") for i, ex in enumerate(examples[:limit])]


def _cot_items(bench: BenchmarkSpec) -> list[EvalItem]:
    if bench.source is None:
        raise DataError(f"Benchmark '{bench.name}': cot needs a source of medical-o1 rows (Question, Complex_CoT, Response).")
    spec = DatasetSpec(source=bench.source, format="medical_o1", subset=bench.subset, split=_split(bench),
                       cot_style=bench.cot_style, columns=bench.columns)
    return cot_items_from(format_rows(spec, load_rows(spec)), 10**9)


# How each benchmark kind of formats.BENCHMARK_KINDS reads its items (tests/test_formats.py checks both agree).
ITEM_LOADERS: dict[str, Callable[[BenchmarkSpec], list[EvalItem]]] = {
    "pubmedqa": _pubmedqa_items, "multiple_choice": _multiple_choice_items, "cot": _cot_items}


def score_cot(cfg: KitConfig, model: Any, tokenizer: Any, items: list[EvalItem], style: str) -> dict[str, Any]:
    began = time.perf_counter()
    answered = shared_map(lambda part: _replies(cfg, model, tokenizer, part), items)
    replies = [reply for reply, _ in answered]
    metrics = cot_metrics(replies, [i.gold for i in items], style)
    metrics.update(method="generate", style=style, **_speed(len(items), time.perf_counter() - began),
                   shortened=sum(shortened for _, shortened in answered),
                   per_item=[{"uid": i.uid, "reply": r} for i, r in zip(items, replies, strict=True)])
    return metrics
