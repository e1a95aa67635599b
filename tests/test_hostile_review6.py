"""Inputs an independent hostile review found handled badly, each pinned by the behaviour that fixed it."""

import pytest

from medqlora.config import load_config
from medqlora.errors import ConfigError

GRPO = ["training.method=grpo", "data.datasets=[{source: data/medmcqa/train.jsonl, format: multiple_choice}]",
        "data.eval_sets=[]"]


def test_an_overlong_buffer_as_long_as_the_completion_is_refused_and_the_default_follows_short_completions():
    """A buffer not below the completion length would punish every completion for its length."""
    with pytest.raises(ConfigError, match=r"overlong_buffer \(40\) is not below max_completion_length \(32\).*e\.g\. 8"):
        load_config(None, [*GRPO, "grpo.max_completion_length=32", "grpo.overlong_buffer=40"])
    assert load_config(None, [*GRPO, "grpo.max_completion_length=32"]).grpo.overlong_tokens() == 8
    assert load_config(None, [*GRPO, "grpo.max_completion_length=32", "grpo.overlong_buffer=0"]).grpo.overlong_tokens() == 0
    assert load_config(None, GRPO).grpo.overlong_tokens() == 64


PROMPT_ANSWER = ["training.method=grpo", "data.eval_sets=[]"]


def _prompt_answer_rows(tmp_path):
    import json

    rows = tmp_path / "pa.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Dose {i} of drug X?", "answer": f"{i} mg"}) + "\n"
                            for i in range(8)))
    return f"data.datasets=[{{source: {rows}, format: prompt_answer}}]"


def test_the_answer_format_reward_is_not_given_to_prompt_answer_rows_which_have_no_options(tmp_path):
    """The answer format scores a reply opening with an option: on prompt_answer rows it scored nothing (None each
    step, and transformers' warnings), so auto leaves it out and an explicit answer style is refused."""
    from medqlora import grpo, rewards

    cfg = load_config(None, [*PROMPT_ANSWER, _prompt_answer_rows(tmp_path)])
    assert grpo.format_style(cfg) is None
    funcs, _ = rewards.build(cfg.grpo, {rewards.ANSWER}, grpo.format_style(cfg))
    assert [f.__name__ for f in funcs] == ["answer_match", "overlong"]
    with pytest.raises(ConfigError, match="format_style: answer rewards a reply that opens with one of the item's"):
        load_config(None, [*PROMPT_ANSWER, _prompt_answer_rows(tmp_path), "grpo.format_style=answer"])
    assert grpo.format_style(load_config(None, GRPO)) == "answer"  # multiple-choice rows keep it
    tags = load_config(None, [*PROMPT_ANSWER, _prompt_answer_rows(tmp_path), "grpo.format_style=tags"])
    assert grpo.format_style(tags) == "tags"
