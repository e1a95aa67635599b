"""The GRPO rewards on crafted replies: each named function, the shared answer extraction, and the weights."""

import json

import pytest

from medqlora import evaluate, rewards
from medqlora.config import load_config

MC = {"kind": ["multiple_choice"], "answer": ["C"], "choices": [["A", "B", "C", "D"]],
      "option_texts": [json.dumps({"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Insulin"})]}


def mc(reply: str) -> float | None:
    return rewards.multiple_choice([reply], **MC)[0]


@pytest.mark.parametrize("reply, expected", [
    ("The answer is C", 1.0),
    ("## Thinking\nVitamin K antagonist.\n\n## Final Response\n\nC. Warfarin", 1.0),
    ("<think>hmm</think>\n<response>(C)</response>", 1.0),
    ("Warfarin is the drug.", 1.0),  # one option's text named: as the generate evaluation reads it
    ("The answer is B", 0.0),
    ("A or C", 0.0),  # two answers: unparsed, as in the evaluation
    ("I do not know", 0.0),
])
def test_multiple_choice_reward_is_the_generate_evaluations_verdict(reply, expected):
    assert mc(reply) == expected
    parsed = evaluate.extract_answer(reply, MC["choices"][0], json.loads(MC["option_texts"][0]))
    assert (parsed == "C") == (expected == 1.0)  # one implementation: the evaluation says the same


def test_answer_rewards_skip_rows_of_another_kind():
    rows = {"kind": ["pubmedqa", "multiple_choice"], "answer": ["yes", "A"], "choices": [["yes", "no", "maybe"],
                                                                                         ["A", "B"]]}
    assert rewards.multiple_choice(["yes", "A"], option_texts=["{}", "{}"], **rows) == [None, 1.0]
    assert rewards.pubmedqa_label(["yes", "A"], **rows) == [1.0, None]


@pytest.mark.parametrize("reply, expected", [
    ("yes. The abstract shows a benefit.", 1.0),
    ("## Thinking\nno obvious harm\n\n## Final Response\nYes, it helps.", 1.0),
    ("no", 0.0),
    ("There is no evidence either way, so maybe.", 0.0),  # prose: no guessing, as in the evaluation
])
def test_pubmedqa_label_reward(reply, expected):
    assert rewards.pubmedqa_label([reply], kind=["pubmedqa"], answer=["yes"]) == [expected]


@pytest.mark.parametrize("reply, expected", [
    ("## Final Response\nHypokalemia, from the diuretic.", 1.0),
    ("The answer is hypokalemia", 1.0),
    ("hyperkalemia", 0.0),
    ("## Final Response\nIt is not hypokalemia", 0.0),
])
def test_answer_match_for_prompt_answer_rows(reply, expected):
    assert rewards.answer_match([reply], kind=["answer"], answer=["Hypokalemia"]) == [expected]


@pytest.mark.parametrize("style, reply, expected", [
    ("huatuo", "## Thinking\n\nreasons\n\n## Final Response\n\nC", 1.0),
    ("huatuo", "## Thinking\n\nreasons only", 0.25),
    ("huatuo", "## Final Response\n\nC\n\n## Thinking\nlate", 0.5),  # both, out of order
    ("huatuo", "## Thinking\n\n## Final Response\n\nC", 0.75),  # empty reasoning
    ("huatuo", "C", 0.0),
    ("tags", "<think>\nreasons\n</think>\n<response>\nC\n</response>", 1.0),
    ("tags", "<response>C</response>", 0.25),
    ("tags", "## Thinking\nx\n## Final Response\nC", 0.0),  # the other style earns nothing
])
def test_format_reward_is_graded(style, reply, expected):
    reward = rewards.format_reward(style)
    assert reward.__name__ == f"format_{style}"
    assert reward([reply]) == [expected]


def test_overlong_penalty_is_soft_over_the_buffer():
    reward = rewards.overlong_penalty(100, 20)
    ids = [[0] * n for n in (10, 80, 90, 99, 100)]
    assert reward(["x"] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -0.95, -1.0]
    assert rewards.overlong_score(99, 100, 0) == 0.0 and rewards.overlong_score(100, 100, 0) == -1.0


def test_build_picks_the_rewards_of_the_run_with_their_weights():
    cfg = load_config(None, ["training.method=grpo", "grpo.rewards.format=0.25", "grpo.rewards.pubmedqa_label=0"])
    funcs, weights = rewards.build(cfg.grpo, {"multiple_choice", "pubmedqa"}, "tags")
    assert [f.__name__ for f in funcs] == ["multiple_choice", "format_tags", "overlong"]
    assert weights == [1.0, 0.25, 1.0]
    funcs, _ = rewards.build(cfg.grpo, {"answer"}, None)
    assert [f.__name__ for f in funcs] == ["answer_match", "overlong"]


@pytest.mark.parametrize("reply, expected", [
    ("C. Warfarin, a vitamin K antagonist.", 1.0),
    ("(C) Warfarin", 1.0),
    ("The answer is C", 0.5),  # one answer, but not opening the reply
    ("B. Heparin", 1.0),  # the format, whatever the answer: correctness is multiple_choice's reward
    ("It could be A or C", 0.0),
    ("No idea", 0.0),
])
def test_answer_format_reward(reply, expected):
    reward = rewards.format_reward("answer")
    assert reward([reply], choices=MC["choices"], option_texts=MC["option_texts"]) == [expected]


def test_answer_format_reward_reads_pubmedqa_labels_and_skips_free_answers():
    reward = rewards.format_reward("answer")
    assert reward(["yes. It helps.", "There is no proof, so yes"], choices=[["yes", "no", "maybe"]] * 2,
                  option_texts=["{}", "{}"]) == [1.0, 0.0]
    assert reward(["Hypokalemia"], choices=[[]], option_texts=["{}"]) == [None]
