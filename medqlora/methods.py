"""The rules of each training.method (sft, grpo, dpo, orpo), checked with the rest of the config."""

from __future__ import annotations

from typing import Any

RL_FORMATS = ("multiple_choice", "pubmedqa", "prompt_answer")  # rows with an answer a reward can check
PREFERENCE_FORMATS = ("preference",)
REWARD_OF_FORMAT = {"multiple_choice": "multiple_choice", "pubmedqa": "pubmedqa_label", "prompt_answer": "answer"}
PROMPT_ROOM = 32  # tokens a GRPO prompt keeps at least, beside the completion, within max_seq_length
REPLY_ROOM = 32  # tokens a chosen / rejected reply keeps at least, beside the longest prompt, within max_seq_length


def check_method(cfg: Any) -> None:
    """Raise ValueError (reported with the config's other problems) when the data or the batch does not fit
    training.method."""
    method = cfg.training.method
    if method != "sft":
        _check_no_validation(cfg)
    formats = [(i, spec.format) for i, spec in enumerate(cfg.data.datasets) if spec.use_for == "train"]
    if method == "grpo":
        _check_grpo(cfg, formats)
    elif method in ("dpo", "orpo"):
        _check_preference_method(cfg, method, formats)
    else:
        wrong = [f"data.datasets.{i}" for i, fmt in formats if fmt in PREFERENCE_FORMATS]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: preference rows (prompt / chosen / rejected) train with "
                             "training.method: dpo or orpo, not sft")


def _check_grpo(cfg: Any, formats: list[tuple[int, str]]) -> None:
    """GRPO's rows must have an answer a reward can check, its batch whole groups, and some reward able to rise."""
    wrong = [f"data.datasets.{i} ({fmt})" for i, fmt in formats if fmt not in RL_FORMATS]
    if wrong:
        raise ValueError(f"training.method: grpo learns from prompts with an answer a reward can check: "
                         f"{', '.join(wrong)} has none. Use the formats {', '.join(RL_FORMATS)} (or "
                         "training.method: sft for these rows)")
    g, t = cfg.grpo, cfg.training
    completions = t.micro_batch_size * t.gradient_accumulation_steps
    if completions % g.num_generations:
        raise ValueError(
            f"training.method: grpo: training.micro_batch_size x gradient_accumulation_steps ({t.micro_batch_size}"
            f" x {t.gradient_accumulation_steps} = {completions} completions a step) must be a multiple of "
            f"grpo.num_generations ({g.num_generations}), so that each prompt's group is whole. E.g. --set "
            f"training.micro_batch_size={g.num_generations}")
    if g.max_completion_length > cfg.model.max_seq_length - PROMPT_ROOM:
        raise ValueError(
            f"grpo.max_completion_length ({g.max_completion_length}) leaves no room for the prompt within "
            f"model.max_seq_length ({cfg.model.max_seq_length}): raise model.max_seq_length to at least "
            f"{g.max_completion_length + 256}, or lower grpo.max_completion_length")
    with_options = any(fmt in ("multiple_choice", "pubmedqa") for _, fmt in formats)
    if g.format_style == "answer" and not with_options:
        raise ValueError("grpo.format_style: answer rewards a reply that opens with one of the item's options, and "
                         "prompt_answer rows have none: the reward would score nothing. Set grpo.format_style: "
                         "auto or none (or huatuo / tags to reward a reasoning format)")
    format_scores = g.format_style in ("huatuo", "tags") or (g.format_style != "none" and with_options)
    rising = {REWARD_OF_FORMAT[fmt] for _, fmt in formats} | ({"format"} if format_scores else set())
    if not any(getattr(g.rewards, name) > 0 for name in rising):
        raise ValueError(f"grpo.rewards: every reward that can rise on this data is weighted 0 "
                         f"({', '.join(sorted(rising))}): GRPO would have nothing to learn from")
    if t.packing:
        raise ValueError("training.packing is for sft: GRPO generates its completions, there is nothing to pack")


def _check_preference_method(cfg: Any, method: str, formats: list[tuple[int, str]]) -> None:
    """DPO and ORPO train on preference rows only, unpacked."""
    wrong = [f"data.datasets.{i} ({fmt})" for i, fmt in formats if fmt not in PREFERENCE_FORMATS]
    if wrong:
        raise ValueError(f"training.method: {method} learns from prompt / chosen / rejected rows: {', '.join(wrong)}"
                         " is not in the preference format")
    if cfg.training.packing:
        raise ValueError(f"training.packing is for sft, not training.method: {method}")
    _check_preference(cfg)


def _check_preference(cfg: Any) -> None:
    """DPO / ORPO: the replies keep room beside the prompt, and no setting of the other method is silently unused."""
    p, length = cfg.preference, cfg.model.max_seq_length
    if p.max_prompt_length > length - REPLY_ROOM:
        room = max(0, length - p.max_prompt_length)
        raise ValueError(
            f"preference.max_prompt_length ({p.max_prompt_length}) leaves {room} of model.max_seq_length ({length}) "
            f"tokens for the chosen and rejected replies (at least {REPLY_ROOM} needed; longer prompts would be cut "
            f"or their rows dropped): lower preference.max_prompt_length to at most {max(1, length - REPLY_ROOM)} "
            f"(e.g. {max(1, length // 2)}), or raise model.max_seq_length to at least {p.max_prompt_length + 256}")
    if cfg.training.method == "orpo" and p.loss_type != "sigmoid":
        raise ValueError(f"preference.loss_type: {p.loss_type} is a DPO loss; ORPO has one loss of its own. Remove "
                         "preference.loss_type, or use training.method: dpo")


def _check_no_validation(cfg: Any) -> None:
    """GRPO, DPO and ORPO train on every row and compute no validation loss: a validation set would be unused."""
    method, data = cfg.training.method, cfg.data
    asked = ([f"data.val_ratio {data.val_ratio}"] if data.val_ratio else []) + [
        f"data.datasets.{i}.{key}" for i, d in enumerate(data.datasets)
        for key, on in (("val_first_n", d.val_first_n), ("cv_fold", d.cv_fold is not None),
                        ("use_for: validation", d.use_for == "validation")) if on]
    if cfg.training.eval_steps:
        asked.append(f"training.eval_steps {cfg.training.eval_steps}")
    if asked:
        raise ValueError(f"training.method: {method} computes no validation loss: {', '.join(asked)} would be unused. "
                         "Remove them (benchmarks in eval: still score the run before and after), or use "
                         "training.method: sft")


# The config sections only some methods read: section -> the training.method values that use it.
METHOD_SECTIONS = {"grpo": ("grpo",), "preference": ("dpo", "orpo")}


def unused_method_settings(cfg: Any) -> list[str]:
    """Settings given in the grpo: / preference: section of a method this run does not train with (a config whose
    training.method line was forgotten): one sentence per section, for the plan and the run to say."""
    method, notes = cfg.training.method, []
    for section, methods in METHOD_SECTIONS.items():
        if method in methods:
            continue
        values = getattr(cfg, section)
        defaults = type(values)()
        given = [f"{section}.{name}" for name in sorted(values.model_fields_set)
                 if getattr(values, name) != getattr(defaults, name)]
        if given:
            wanted = " or ".join(methods)
            named = ", ".join(given[:-1]) + f" and {given[-1]}" if len(given) > 1 else given[0]
            notes.append(f"{named} {'is a setting' if len(given) == 1 else 'are settings'} of "
                         f"training.method: {wanted}, and this run trains with {method}: "
                         f"{'it is' if len(given) == 1 else 'they are'} unused. Set training.method: {methods[0]} "
                         f"to train with {'it' if len(given) == 1 else 'them'}, or remove "
                         f"{'it' if len(given) == 1 else 'them'}")
    return notes
