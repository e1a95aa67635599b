"""The rows of the methods after SFT: each example's prompt rendered with the model's chat template and the
system prompt as in SFT and evaluation, fitted to the length it may take, with what GRPO's rewards check (kind,
gold answer, choices) or the preference pair (chosen, rejected)."""

from __future__ import annotations

import json
from typing import Any

from . import data as kit_data
from . import rewards
from .config import KitConfig
from .data import Collected, Example, PreparedData, leakage, length_stats, tokenize_example
from .errors import DataError

KIND_OF_FORMAT = {"multiple_choice": rewards.MULTIPLE_CHOICE, "pubmedqa": rewards.PUBMEDQA,
                  "prompt_answer": rewards.ANSWER}


def target(example: Example, fmt: str) -> dict[str, Any]:
    """What a reward checks for one example: its kind, gold answer, choices and option texts."""
    kind = KIND_OF_FORMAT[fmt]
    if kind == rewards.MULTIPLE_CHOICE:
        options = {name.removeprefix("options."): text for name, text in example.texts if name.startswith("options.")}
        gold = example.response.split(".", 1)[0]  # "C. the option's text", as the evaluation reads it
        return {"kind": kind, "answer": gold, "choices": sorted(options), "option_texts": json.dumps(options)}
    if kind == rewards.PUBMEDQA:
        return {"kind": kind, "answer": example.answer_texts[0][1], "choices": ["yes", "no", "maybe"],
                "option_texts": "{}"}
    return {"kind": kind, "answer": example.response, "choices": [], "option_texts": "{}"}


def prompt_text(tokenizer: Any, ids: list[int]) -> str:
    """The prompt as text for TRL, which tokenizes it again: without the BOS token when the tokenizer adds one
    itself (the chat template writes it too, and a prompt would otherwise start with two)."""
    text = tokenizer.decode(ids)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


def prepare_method_rows(cfg: KitConfig, collected: list[Collected], tokenizer: Any) -> PreparedData:
    """The RL or preference rows of a run: rendered with the model's chat template and the system prompt as in
    SFT and evaluation, fitted to max_seq_length (a GRPO prompt keeps room for grpo.max_completion_length)."""
    method = cfg.training.method
    room = cfg.model.max_seq_length - (cfg.grpo.max_completion_length if method == "grpo" else 0)
    end = kit_data.turn_end(tokenizer)
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for c in collected:
        lengths, outcomes = [], {}
        for ex in c.examples:
            if ex.role == "validation":
                continue
            prompt_only = Example(prompt=ex.prompt, response="", context=ex.context, prompt_template=ex.prompt_template)
            system = getattr(ex, "system", "") or kit_data.system_prompt_of(cfg.data, c.spec)  # a row's own first
            fitted, outcome = tokenize_example(prompt_only, tokenizer, system,
                                               room if method == "grpo" else cfg.preference.max_prompt_length,
                                               cfg.data.too_long, "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if fitted is None:
                continue
            ids = fitted["input_ids"]
            record = {"input_ids": ids, "prompt": prompt_text(tokenizer, ids), "source": c.name, "uid": ex.uid,
                      "role": ex.role, "question_hash": leakage.question_hash(ex.question), "example": ex,
                      "format": c.spec.format, "cot_style": c.spec.cot_style}
            if method == "grpo":
                record.update(target(ex, c.spec.format))
                lengths.append(len(ids))
            else:
                record.update(chosen=ex.response + end, rejected=getattr(ex, "rejected", "") + end)
                chosen_ids = tokenizer(record["chosen"], add_special_tokens=False)["input_ids"]
                record["input_ids"] = ids + chosen_ids  # the longest row the memory preflight plans for
                lengths.append(len(record["input_ids"]))
            records.append(record)
        stats[c.name] = {**c.info, "prompt_tokens" if method == "grpo" else "tokens": length_stats(lengths, room),
                         "fitting": outcomes}
    if not records:
        raise DataError(f"No {method} rows fit model.max_seq_length={cfg.model.max_seq_length}"
                        + (f" beside grpo.max_completion_length={cfg.grpo.max_completion_length}" if method == "grpo"
                           else "") + ". Raise model.max_seq_length, or set data.too_long: truncate.")
    import random

    random.Random(cfg.training.seed).shuffle(records)
    stats["total"] = {"train": len(records), "validation": 0, "warnings": [],
                      "train_tokens": sum(len(r["input_ids"]) for r in records), "method": method}
    return PreparedData(train=records, validation=[], stats=stats,
                        fingerprints={c.name: kit_data.fingerprint(c.spec) for c in collected})
