"""Answering the sample medical queries with a (fine-tuned) model; every answer carries a disclaimer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from .backends import stop_token_ids
from .config import KIT_ROOT, KitConfig
from .data import render_prompt
from .distributed import shared_map
from .errors import ConfigError


def load_queries(path_text: str) -> list[dict[str, str]]:
    path = Path(path_text)
    if not path.is_file():
        path = KIT_ROOT / path_text
    if not path.is_file():
        raise ConfigError(f"generation.queries_file: {path_text} not found.")
    items = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(items, dict):
        items = items.get("queries")
    if not isinstance(items, list) or not all(isinstance(q, dict) and "question" in q for q in items):
        raise ConfigError(f"{path}: expected a list of {{id, question}} entries under 'queries:'.")
    return [{"id": str(q.get("id", i)), "question": str(q["question"])} for i, q in enumerate(items)]


def with_disclaimer(text: str, disclaimer: str) -> str:
    text = text.strip()
    if disclaimer and not text.endswith(disclaimer):
        text = f"{text}\n\n*{disclaimer}*"
    return text


def generate_texts(cfg: KitConfig, model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """Replies to already chat-templated prompts, in order (left-padded batches)."""
    return [text for text, _ in _generate(cfg, model, tokenizer, prompts, max_new_tokens, batch_size)]


def _generate(cfg: KitConfig, model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
              batch_size: int) -> list[tuple[str, int]]:
    import torch

    g = cfg.generation
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p} if g.temperature > 0 else {
        "do_sample": False}
    tokenizer.padding_side = "left"
    out: list[tuple[str, int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            with torch.inference_mode():
                output = model.generate(**encoded, max_new_tokens=max_new_tokens,
                                        repetition_penalty=g.repetition_penalty, eos_token_id=stops,
                                        pad_token_id=tokenizer.pad_token_id, **sampling)
            for tokens in output[:, encoded["input_ids"].shape[1] :]:
                n = int(sum(1 for t in tokens.tolist() if t not in stops and t != tokenizer.pad_token_id))
                out.append((tokenizer.decode(tokens, skip_special_tokens=True), n))
    finally:
        tokenizer.padding_side = "right"
    return out


def answer(cfg: KitConfig, model: Any, tokenizer: Any, questions: list[dict[str, str]]) -> list[dict[str, Any]]:
    g = cfg.generation
    prompts = [render_prompt(tokenizer, cfg.data.system_prompt, q["question"]) for q in questions]
    began = time.perf_counter()
    replies = shared_map(lambda part: _generate(cfg, model, tokenizer, part, g.max_new_tokens, g.batch_size), prompts)
    seconds = round(time.perf_counter() - began, 2)
    return [{**q, "response": with_disclaimer(text, g.disclaimer), "new_tokens": n, "seconds_all_queries": seconds}
            for q, (text, n) in zip(questions, replies, strict=True)]


def to_markdown(results: list[dict[str, Any]], title: str) -> str:
    parts = [f"# {title}\n"]
    for r in results:
        parts.append(f"## {r['id']}\n\n**Question:** {r['question']}\n\n**Answer:**\n\n{r['response']}\n")
    return "\n".join(parts)


def to_jsonl(results: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
