"""Examples -> token ids: each one rendered with the model's own chat template and every prompt token's label
set to -100, so only the response is learned (``tokenize_example``; a chat row learns each assistant turn);
length statistics and the refusals when nothing fits max_seq_length; ``prepare``, the whole way from config
to ``PreparedData``, and ``count_rows`` for a dry run.

    python -c "from medqlora.data import render_prompt"   # rendering is importable without a model
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..config import DataSection
from .. import leakage
from ..errors import DataError
from ..messages import log
from ..rows import Example
from ..secrets import printable
from ..system_turn import system_kept, with_system
from .examples import Collected, collect, guard_warnings, padding_report, system_prompt_of
from .sources import fingerprint

IGNORE_INDEX = -100


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)



# ---------------------------------------------------------------- chat rendering + tokenization

_PROBE = "MEDQLORA-PROBE-RESPONSE"


def render_prompt(tokenizer: Any, system_prompt: str | None, user: str) -> str:
    """The chat-templated prompt up to and including the assistant header."""
    return tokenizer.apply_chat_template(
        _messages(tokenizer, system_prompt, user), tokenize=False, add_generation_prompt=True
    )


def _messages(tokenizer: Any, system_prompt: str | None, user: str) -> list[dict[str, str]]:
    return with_system(tokenizer, system_prompt, [{"role": "user", "content": user}])


def turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. '<|im_end|>\\n', '<|eot_id|>')."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _PROBE not in text:
        return tokenizer.eos_token or ""
    suffix = text.split(_PROBE, 1)[1]
    return suffix if suffix.strip() else (tokenizer.eos_token or "")


def chat_turn_messages(tokenizer: Any, system_prompt: str | None,
                       turns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """A chat row as messages: its own system turn, else ``system_prompt``; folded into the first user turn for
    templates without a system role (as single-turn prompts are: system_turn.with_system)."""
    messages = [{"role": role, "content": content} for role, content in turns]
    messages = messages[:1] + _later_system_turns_folded(tokenizer, messages[1:])
    if messages[0]["role"] != "system":
        return with_system(tokenizer, system_prompt, messages)
    if not messages[0]["content"].strip():  # an empty system turn of its own, rendered as the row gives it
        return messages
    return with_system(tokenizer, messages[0]["content"], messages[1:])


def _later_system_turns_folded(tokenizer: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """System turns in the middle of a conversation, for a template without a system role (Mistral's raises on
    one): each folded into the start of the message after it, as a leading one is folded into the first. One after
    the last message is left out: nothing after it is learned."""
    if not any(m["role"] == "system" for m in messages) or system_kept(tokenizer, _PROBE):
        return messages
    folded: list[dict[str, str]] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending += [message["content"]] if message["content"].strip() else []
            continue
        if pending:
            message = {"role": message["role"], "content": "\n\n".join([*pending, message["content"]])}
            pending = []
        folded.append(message)
    return folded


def _chat_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """The conversation's text in pieces, (text, learned): each assistant reply to a user turn with its turn end is
    learned, everything between is not. None when the template does not render a conversation as the concatenation of
    its prefixes (one that rewrites earlier replies, say): then only the last reply is learned."""
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or not any(m["role"] == "user" for m in messages[:k]):
            continue  # an assistant turn that opens the conversation (a greeting) is context, not learned
        prefix = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        reply = whole[len(prefix):]  # the reply as the template writes it, with its turn end
        if not prefix.startswith(rendered) or not whole.startswith(prefix) or message["content"] not in reply:
            return None
        pieces += [(prefix[len(rendered):], False), (reply, True)]
        rendered = prefix + reply
    return pieces


def _tokenize_chat(example: Example, tokenizer: Any, system_prompt: str | None, max_len: int, too_long: str,
                   end: str) -> tuple[dict[str, list[int]] | None, str]:
    """Every assistant turn learned, every other token masked; cut at max_len (or dropped) when longer."""
    messages = chat_turn_messages(tokenizer, system_prompt, example.turns)
    pieces = _chat_pieces(tokenizer, messages)
    outcome = "fits"
    if pieces is None:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        pieces, outcome = [(prompt, False), (messages[-1]["content"] + end, True)], "last_turn_only"
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in pieces:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if learned else [IGNORE_INDEX] * len(part)
    if len(ids) > max_len:
        if too_long == "drop" or all(label == IGNORE_INDEX for label in labels[:max_len]):
            return None, "dropped"
        ids, labels, outcome = ids[:max_len], labels[:max_len], "response_truncated"
    return {"input_ids": ids, "labels": labels}, outcome


def tokenize_example(
    example: Example, tokenizer: Any, system_prompt: str | None, max_len: int, too_long: str, end: str
) -> tuple[dict[str, list[int]] | None, str]:
    """Token ids and labels (prompt masked) for one example, and what was done to fit max_len."""
    if example.turns:
        return _tokenize_chat(example, tokenizer, system_prompt, max_len, too_long, end)
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
        stats[c.name] = _tokenize_dataset(c, data, tokenizer, max_len, end, records)
    if not records:
        _refuse_nothing_fits(data, max_len, stats, tokenizer)
    random.Random(seed).shuffle(records)
    validation, train = _split_validation(records, data.val_ratio)
    if not train:
        refuse_no_training_examples(data, max_len, collected)
    cut, dropped, warnings = _fitting_warnings(collected, data, max_len, stats)
    stats["total"] = {
        "answers_truncated": cut,
        "prompts_too_long": dropped if data.too_long == "truncate" else 0,
        "warnings": guard_warnings(collected) + warnings,
        "train": len(train),
        "validation": len(validation),
        "train_tokens": sum(len(r["input_ids"]) for r in train),
        "padding_fraction": padding_report([len(r["input_ids"]) for r in train], micro_batch, max_len, seed),
    }
    fingerprints = {c.name: fingerprint(c.spec) for c in collected}
    return PreparedData(train=train, validation=validation, stats=stats, fingerprints=fingerprints)


def _split_validation(records: list[dict[str, Any]], ratio: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The validation records (those held out by their dataset, and data.val_ratio of the distinct training
    examples, ``records`` being shuffled) and the training records. The copies a weighted dataset makes of one
    example stay together: a validation item is never also trained on, and is scored once."""
    copies: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["role"] != "validation":
            copies.setdefault(id(record["example"]), []).append(record)
    held = list(copies.values())[:val_ratio_rows(len(copies), ratio)]
    held_out = {id(group[0]["example"]) for group in held}
    validation = [r for r in records if r["role"] == "validation"] + [group[0] for group in held]
    return validation, [r for r in records if r["role"] != "validation" and id(r["example"]) not in held_out]


def _tokenize_dataset(c: Collected, data: DataSection, tokenizer: Any, max_len: int, end: str,
                      records: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset's examples rendered, tokenized and fitted into ``records``; its statistics."""
    raw_lengths: list[int] = []
    outcomes: dict[str, int] = {}
    system_prompt = system_prompt_of(data, c.spec)
    for example in c.examples:
        try:
            full, _ = tokenize_example(example, tokenizer, system_prompt, 10**9, "truncate", end)
        except Exception as err:  # jinja2's TemplateError, raised by the template itself
            if (refused := _template_refused(err, c, example)) is None:
                raise
            raise refused from None
        raw_lengths.append(len(full["input_ids"]))
        tokenized, outcome = tokenize_example(example, tokenizer, system_prompt, max_len, data.too_long, end)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if tokenized is not None:
            records.append({**tokenized, "source": c.name, "uid": example.uid, "role": example.role,
                            "question_hash": leakage.question_hash(example.question), "example": example,
                            "format": c.spec.format, "cot_style": c.spec.cot_style})
    return {**c.info, "tokens_before_fitting": length_stats(raw_lengths, max_len), "fitting": outcomes}


def _template_refused(err: Exception, c: Collected, example: Example) -> DataError | None:
    """A chat template that raises on a row (Mistral's and Llama 2's: 'Conversation roles must alternate
    user/assistant/...'), in the kit's words with the row; any other error as it was."""
    from jinja2.exceptions import TemplateError

    if not isinstance(err, TemplateError):
        return None
    return DataError(
        f"{printable(c.spec.source, 200)} row {example.row or '?'}: the model's chat template refuses this row "
        f"({printable(str(err), 200)}). Make its turns follow the template's rule (two user turns in a row merged "
        "into one; the conversation opened by a user turn, after any system turn), or leave the row out; or set "
        "model.chat_template to one that takes it (chatml).")


def _fitting_warnings(collected: list[Collected], data: DataSection, max_len: int,
                      stats: dict[str, Any]) -> tuple[int, int, list[str]]:
    """Answers cut and prompts left out to fit model.max_seq_length, and the warnings that say so (logged too)."""
    cut = sum(stats[c.name]["fitting"].get("response_truncated", 0) for c in collected)
    warnings = []
    if cut:
        warnings.append(f"{cut} of {sum(len(c.examples) for c in collected)} answers were cut to fit "
                        f"model.max_seq_length={max_len} (data.too_long: truncate): the model learns them "
                        "unfinished. Raise model.max_seq_length, or set data.too_long: drop to leave those examples "
                        "out.")
        log.warning(warnings[-1])
    dropped = sum(stats[c.name]["fitting"].get("dropped", 0) for c in collected)
    if dropped and data.too_long == "truncate":
        warnings.append(f"{dropped} of {sum(len(c.examples) for c in collected)} examples were left out: the prompt "
                        f"alone (with the chat template and system prompt) does not fit model.max_seq_length="
                        f"{max_len}, so no answer could be kept even cut (data.too_long: truncate shortens only "
                        "answers and pubmedqa contexts). Raise model.max_seq_length, or shorten those prompts.")
        log.warning(warnings[-1])
    return cut, dropped, warnings


LONG_SYSTEM_PROMPT = 1024  # tokens: a system prompt is a few sentences


def _refuse_nothing_fits(data: DataSection, max_len: int, stats: dict[str, Any], tokenizer: Any = None) -> None:
    """No example fits max_len: with drop, truncating would keep some; with truncate, every prompt alone is
    too long (the answer cannot be cut to make room), so only a longer max_seq_length helps, or a shorter system
    prompt where that is what fills the length."""
    shortest = min((s["tokens_before_fitting"].get("min", 0) for s in stats.values()
                    if s["tokens_before_fitting"].get("count")), default=0)
    system = len(tokenizer(data.system_prompt, add_special_tokens=False)["input_ids"]) \
        if tokenizer is not None and data.system_prompt else 0
    if system >= max(max_len // 2, LONG_SYSTEM_PROMPT):  # in every prompt: a longer length is not the fix
        raise DataError(f"No training example fits model.max_seq_length={max_len}: data.system_prompt alone is "
                        f"{system} tokens, and it goes into every prompt (the shortest example is {shortest} tokens). "
                        "Shorten data.system_prompt (a system prompt is a few sentences), or raise "
                        "model.max_seq_length if the model's context allows.")
    if data.too_long == "drop":
        raise DataError(f"No training examples fit model.max_seq_length={max_len} (the shortest is {shortest} "
                        "tokens). Raise it, or set data.too_long: truncate.")
    raise DataError(f"No training example fits model.max_seq_length={max_len}, even cut (data.too_long: truncate): "
                    f"each prompt alone, with the chat template and system prompt, leaves no room for an answer (the "
                    f"shortest example is {shortest} tokens). Raise model.max_seq_length.")


def val_ratio_rows(pool: int, ratio: float) -> int:
    """The rows data.val_ratio holds out of ``pool`` training rows; a ratio that rounds to none is refused, as the
    plan would promise a validation loss the run never computes."""
    held = int(round(pool * ratio))
    if ratio and not held:
        least = (math.floor(50 / pool) + 1) / 100 if pool else 1.0  # pool * least > 0.5: rounds to a row
        fix = (f"Raise it to at least {least} (it holds out {int(round(pool * least))} of them)" if least < 0.5 else
               f"{pool} row(s) are too few to hold any out at a ratio under 0.5: give the validation rows as a "
               "dataset of their own with use_for: validation")
        raise DataError(f"data.val_ratio {ratio} of {pool} training row(s) rounds to 0 rows: there would be no "
                        f"validation set and no validation loss. {fix}, or set data.val_ratio: 0 to train without "
                        "one.")
    return held


def refuse_no_training_examples(data: DataSection, max_len: int, collected: list[Collected]) -> None:
    """Nothing left to train on once validation items are set apart (val_ratio < 0.5 always leaves some, so the
    datasets for validation are the cause)."""
    if all(c.spec.use_for == "validation" for c in collected):
        raise DataError("No training examples: every dataset has use_for: validation. Give at least one dataset "
                        "use_for: train (the default).")
    raise DataError(f"No training examples: the datasets with use_for: train have none that fit model.max_seq_length="
                    f"{max_len} and are not held out for validation (cv_fold). Check those datasets, or raise "
                    "model.max_seq_length.")


def prepare(data: DataSection, tokenizer: Any, max_len: int, seed: int, micro_batch: int = 1) -> PreparedData:
    return tokenize_collected(collect(data, seed), data, tokenizer, max_len, seed, micro_batch)


def count_rows(data: DataSection, seed: int, extra_eval: list[leakage.Item] | None = None,
               collected: list[Collected] | None = None) -> dict[str, Any]:
    """Dataset sizes for --dry-run: local sources are read and every row checked as a run would (the leakage
    guard included); a path that does not exist is refused; hub sources are not downloaded."""
    if collected is None:
        collected = collect(data, seed, extra_eval, local_only=True)
    checked = {c.name: c.info for c in collected}
    sizes: dict[str, Any] = {}
    for index, spec in enumerate(data.datasets):
        name = f"{index}:{spec.source}"
        sizes[name] = checked.get(name, {"rows": "unknown until downloaded", "used": spec.max_samples})
    return sizes
