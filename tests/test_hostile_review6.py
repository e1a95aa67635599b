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
    assert load_config(None, [*GRPO, "grpo.max_completion_length=32"]).grpo.overlong_buffer == 8
    assert load_config(None, [*GRPO, "grpo.max_completion_length=32", "grpo.overlong_buffer=0"]).grpo.overlong_buffer == 0
    assert load_config(None, GRPO).grpo.overlong_buffer == 64
