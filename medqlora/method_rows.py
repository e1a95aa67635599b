"""The rows of the methods after SFT: each example's prompt rendered with the model's chat template and the
system prompt as in SFT and evaluation, fitted to the length it may take, with what GRPO's rewards check (kind,
gold answer, choices) or the preference pair (chosen, rejected)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import data as kit_data
from . import rewards
from .config import KitConfig
from .data import Collected, Example, PreparedData, leakage, length_stats, tokenize_example
from .errors import DataError
from .messages import log
from .secrets import printable

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


@dataclass
class _Tally:
    """What the datasets' rows add up to: the rows kept, the full length of each prompt that did not fit, and
    GRPO's prompt_answer rows (with those whose answer cannot fit a completion)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    shortest: list[int] = field(default_factory=list)
    unreachable: int = 0
    answer_rows: int = 0


def prepare_method_rows(cfg: KitConfig, collected: list[Collected], tokenizer: Any) -> PreparedData:
    """The RL or preference rows of a run: rendered with the model's chat template and the system prompt as in
    SFT and evaluation, fitted to max_seq_length (a GRPO prompt keeps room for grpo.max_completion_length)."""
    method = cfg.training.method
    tally = _Tally()
    end = kit_data.turn_end(tokenizer)
    stats: dict[str, Any] = {c.name: _dataset_rows(cfg, c, tokenizer, end, tally) for c in collected}
    records, shortest = tally.records, tally.shortest
    if not records:
        raise DataError(f"No {method} rows fit: {_prompt_limit(cfg)} (the shortest prompt is {min(shortest, default=0)} "
                        f"tokens with the chat template and system prompt). {_prompt_advice(cfg)}")
    warnings = _prompts_left_out(cfg, len(shortest), len(records) + len(shortest))
    if tally.unreachable:
        warnings.append(_refuse_or_warn_long_answers(cfg, tally.unreachable, tally.answer_rows))
    import random

    random.Random(cfg.training.seed).shuffle(records)
    stats["total"] = {"train": len(records), "validation": 0, "warnings": kit_data.guard_warnings(collected) + warnings,
                      "train_tokens": sum(len(r["input_ids"]) for r in records), "method": method}
    return PreparedData(train=records, validation=[], stats=stats,
                        fingerprints={c.name: kit_data.fingerprint(c.spec) for c in collected})


def _dataset_rows(cfg: KitConfig, c: Collected, tokenizer: Any, end: str, tally: _Tally) -> dict[str, Any]:
    """One dataset's training rows fitted and added to ``tally``; returns the dataset's statistics."""
    method = cfg.training.method
    room = prompt_tokens_allowed(cfg)
    lengths, outcomes, same_pairs = [], {}, []
    for ex in c.examples:
        if ex.role == "validation":
            continue
        prompt_only = Example(prompt=ex.prompt, response="", context=ex.context, prompt_template=ex.prompt_template)
        system = getattr(ex, "system", "") or kit_data.system_prompt_of(cfg.data, c.spec)  # a row's own first
        fitted, outcome = tokenize_example(prompt_only, tokenizer, system, room, cfg.data.too_long, "")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if fitted is None:
            whole, _ = tokenize_example(prompt_only, tokenizer, system, 10**9, "truncate", "")
            tally.shortest.append(len(whole["input_ids"]))
            continue
        ids = fitted["input_ids"]
        record = {"input_ids": ids, "prompt": prompt_text(tokenizer, ids), "source": c.name, "uid": ex.uid,
                  "role": ex.role, "question_hash": leakage.question_hash(ex.question), "example": ex,
                  "format": c.spec.format, "cot_style": c.spec.cot_style}
        if method == "grpo":
            record.update(target(ex, c.spec.format))
            lengths.append(len(ids))
            tally.answer_rows += record["kind"] == rewards.ANSWER
            tally.unreachable += _answer_cannot_fit(cfg, tokenizer, record)
        else:
            pair = _preference_pair(ex, tokenizer, end, cfg.model.max_seq_length - len(ids))
            if pair is None:
                same_pairs.append(ex.row)
                continue
            record.update(chosen=pair[0], rejected=pair[1])
            record["input_ids"] = ids + pair[2]  # the longest row the memory preflight plans for
            lengths.append(len(record["input_ids"]))
        tally.records.append(record)
    if same_pairs:
        _refuse_pairs_cut_alike(cfg, c, same_pairs)
    return {**c.info, "prompt_tokens" if method == "grpo" else "tokens": length_stats(lengths, room),
            "fitting": outcomes}


def prompt_tokens_allowed(cfg: KitConfig) -> int:
    """The tokens a prompt may take: GRPO's leave room for grpo.max_completion_length, DPO's and ORPO's are kept to
    preference.max_prompt_length."""
    if cfg.training.method == "grpo":
        return cfg.model.max_seq_length - cfg.grpo.max_completion_length
    return cfg.preference.max_prompt_length


def _prompt_limit(cfg: KitConfig) -> str:
    if cfg.training.method == "grpo":
        return (f"every prompt is longer than the {prompt_tokens_allowed(cfg)} tokens model.max_seq_length="
                f"{cfg.model.max_seq_length} leaves beside grpo.max_completion_length={cfg.grpo.max_completion_length}")
    return f"every prompt is longer than preference.max_prompt_length={cfg.preference.max_prompt_length}"


def _prompt_advice(cfg: KitConfig) -> str:
    cut = " (data.too_long: drop leaves out the pubmedqa contexts truncate would shorten)" \
        if cfg.data.too_long == "drop" else ""
    if cfg.training.method == "grpo":
        return (f"Raise model.max_seq_length, lower grpo.max_completion_length, or shorten the prompts{cut}.")
    return ("Raise preference.max_prompt_length (model.max_seq_length holds the prompt and the replies together: "
            f"raise it too if it has no room left), or shorten the prompts{cut}.")


def _prompts_left_out(cfg: KitConfig, dropped: int, total: int) -> list[str]:
    """The warning when some rows are left out for a prompt over its limit (a prompt is never cut)."""
    if not dropped:
        return []
    warning = (f"{dropped} of {total} {cfg.training.method} rows were left out: "
               + _prompt_limit(cfg).replace("every prompt is", "their prompts are") + ". " + _prompt_advice(cfg))
    log.warning(warning)
    return [warning]


def _answer_cannot_fit(cfg: KitConfig, tokenizer: Any, record: dict[str, Any]) -> bool:
    """A prompt_answer row whose answer alone takes more tokens than grpo.max_completion_length: a completion is
    cut before it could state the answer, so answer_match never scores it 1."""
    if record["kind"] != rewards.ANSWER:
        return False
    return len(tokenizer(record["answer"], add_special_tokens=False)["input_ids"]) > cfg.grpo.max_completion_length


def _refuse_or_warn_long_answers(cfg: KitConfig, count: int, total: int) -> str:
    said = (f"{count} of {total} prompt_answer rows have an answer longer than grpo.max_completion_length="
            f"{cfg.grpo.max_completion_length} tokens: a completion is cut before it could state it, so the answer "
            "reward (answer_match: a reply that opens with the answer) can never score those rows 1")
    advice = ("Raise grpo.max_completion_length (and model.max_seq_length with it), or give short answers a reward "
              "can check (a drug name, a dose), not whole explanations.")
    if count == total:
        raise DataError(f"{said}: none of them could teach anything. {advice}")
    log.warning(f"{said}. {advice}")
    return f"{said}. {advice}"


def _preference_pair(example: Example, tokenizer: Any, end: str, reply_room: int) -> tuple[str, str, list[int]] | None:
    """(chosen, rejected, the chosen reply's ids), each reply ending with the end-of-turn text; None when the two
    are the same in the reply_room tokens kept after the prompt (DPO and ORPO cut the replies there)."""
    chosen, rejected = example.response + end, getattr(example, "rejected", "") + end
    chosen_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"]
    if chosen_ids[:reply_room] == rejected_ids[:reply_room]:
        return None
    return chosen, rejected, chosen_ids


def _refuse_pairs_cut_alike(cfg: KitConfig, c: Collected, rows: list[int | None]) -> None:
    numbered = sorted(r for r in rows if r is not None)
    first = f"row {numbered[0]}" if numbered else "a row"
    raise DataError(f"{printable(c.spec.source, 200)}: {len(rows)} preference row(s) ({first} first) have chosen and "
                    "rejected replies that differ only after the point where they are cut: model.max_seq_length="
                    f"{cfg.model.max_seq_length} holds the prompt and then as much of each reply as fits, and what is "
                    "kept is the same text in both, so the pair teaches no preference. Raise model.max_seq_length, or "
                    "shorten what the two replies share before they differ.")
