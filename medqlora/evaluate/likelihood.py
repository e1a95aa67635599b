"""eval.method: likelihood: one forward pass per item; the score of an answer is the log-probability of its
first token right after the prompt (its capitalised form counted too: 'yes' or 'Yes'). The highest score wins; a
tie goes to the answer listed first."""

from __future__ import annotations

from typing import Any

from ..config import KitConfig
from ..errors import DataError
from ..generation_batch import batch_size_for
from ..progress import bar
from .items import EvalItem
from .prompts import evaluation_length, prompt_ids


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
    fitted = [prompt_ids(cfg, tokenizer, item, evaluation_length(cfg, model) - 1, reserved=1) for item in items]
    prompts = [ids for ids, _ in fitted]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # batch by length: little padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logprobs_of: dict[int, Any] = {}
    size = batch_size_for(cfg.eval.batch_size, model, max(map(len, prompts), default=1), 1, len(prompts),
                          cfg.training.gpu_memory_gib, what="scoring")
    with bar(len(order), "scoring") as progress:
        for start in range(0, len(order), size):
            batch = order[start : start + size]
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
