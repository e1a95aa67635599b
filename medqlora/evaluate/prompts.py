"""An item's prompt as the model sees it: rendered as its training format was, and fitted to the evaluation
length (eval.max_length, else the model's context), its context shortened where needed."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import KitConfig
from ..data import Example, apply_template, dataset_of_format, system_prompt_of, tokenize_example
from ..errors import DataError
from ..secrets import printable
from .items import EvalItem, cot_style_of


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


def prompt_ids(cfg: KitConfig, tokenizer: Any, item: EvalItem, limit: int,
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


def check_item_texts(cfg: KitConfig, tokenizer: Any, items_by_bench: dict[str, list[EvalItem]]) -> None:
    """The config's prompt texts and every benchmark item's prompt fields hold no control token of the tokenizer as
    text (each would end its turn inside the prompt): refused, naming the benchmark, the item and the field."""
    from ..data.control_tokens import prompt_fields, prompt_settings, refuse_control_text

    refuse_control_text(tokenizer, [*prompt_settings(cfg.data), *(
        (f"Benchmark '{printable(name, 80)}' item {printable(item.uid, 60)}: field '{printable(field, 60)}'", text)
        for name, items in items_by_bench.items() for item in items for field, text in prompt_fields(item.example))])


def check_prompts_fit(cfg: KitConfig, tokenizer: Any, items_by_bench: dict[str, list[EvalItem]]) -> None:
    """Before a model loads (and at --dry-run): every evaluation prompt fits eval.max_length, its context
    shortened where it has one, or the run is refused with the item, as scoring would refuse it later."""
    check_item_texts(cfg, tokenizer, items_by_bench)
    if cfg.eval.max_length is None or tokenizer is None:
        return  # the model's context length is known once it loads
    for name, items in items_by_bench.items():
        generated = cot_style_of(cfg, name) is not None or cfg.eval.method == "generate"
        reserved = cfg.eval.max_new_tokens if generated else 1
        for item in items:
            prompt_ids(cfg, tokenizer, item, cfg.eval.max_length - reserved, reserved=reserved)
