"""Scoring checked against hand-computed cases, a fake model whose logits are set per item, and an
independent unbatched re-implementation on a real (tiny) model."""

import json

import pytest
import torch

from medqlora import backends
from medqlora import evaluate as evaluation
from medqlora.config import BenchmarkSpec, load_config
from medqlora.evaluate import (
    prompt_ids,
    evaluation_length,
    answer_token_ids,
    check_not_trained_on,
    classification_metrics,
    evaluate,
    extract_answer,
    load_items,
)
from medqlora.errors import DataError

from .conftest import tiny_overrides


class FakeModel(torch.nn.Module):
    """Returns, at the last position, the logits chosen for the prompt it is given."""

    def __init__(self, vocab: int, logits_by_prompt: dict[tuple, torch.Tensor]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.table = vocab, logits_by_prompt

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0):
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            rows.append(self.table[tuple(ids[mask.bool()].tolist())])
        return type("Out", (), {"logits": torch.stack(rows)[:, None, :]})()


@pytest.fixture(scope="module")
def pubmedqa_items():
    return load_items(BenchmarkSpec(name="pubmedqa", kind="pubmedqa", max_items=4), seed=0)


def fake_for(cfg, tokenizer, items, wanted: list[dict[str, float]]):
    vocab = len(tokenizer)
    table = {}
    for item, scores in zip(items, wanted, strict=True):
        logits = torch.full((vocab,), -20.0)
        for form, value in scores.items():
            logits[tokenizer(form, add_special_tokens=False)["input_ids"][0]] = value
        table[tuple(prompt_ids(cfg, tokenizer, item, cfg.model.max_seq_length - 1)[0])] = logits
    return FakeModel(vocab, table)


def test_likelihood_scores_known_answers_ties_and_capitalised_forms(smol_tokenizer, pubmedqa_items):
    cfg = load_config(None, ["eval.batch_size=3"])
    items = pubmedqa_items
    for item, gold in zip(items, ["yes", "no", "maybe", "yes"], strict=True):
        item.gold = gold
    wanted = [
        {"yes": 5.0, "no": 1.0},  # yes: right
        {"No": 6.0, "yes": 2.0},  # capitalised No carries the answer: right
        {"yes": 3.0, "no": 3.0},  # tie between yes and no: the first listed (yes) wins: wrong
        {"maybe": 4.0, "Maybe": 4.0, "yes": 4.5},  # maybe's two forms (logsumexp 4.69) beat yes 4.5: wrong
    ]
    model = fake_for(cfg, smol_tokenizer, items, wanted)
    result = evaluate(cfg, model, smol_tokenizer, {"pubmedqa": items})["pubmedqa"]
    assert [r["pred"] for r in result["per_item"]] == ["yes", "no", "yes", "maybe"]
    assert result["accuracy"] == 50.0
    assert result["predicted"] == {"yes": 2, "no": 1, "maybe": 1}
    # F1 = 2tp / (2tp + fp + fn): yes 2/(2+1+1) = 0.5, no 2/2 = 1, maybe 0 -> macro 50.0
    assert result["macro_f1"] == 50.0


def test_metrics_by_hand():
    m = classification_metrics(["yes", "yes", "no", "maybe"], ["yes", None, "no", "no"], ["yes", "no", "maybe"])
    assert (m["accuracy"], m["unparsed"], m["accuracy_of_parsed"]) == (50.0, 1, 66.67)
    # yes: tp1 fn1 -> 2/3; no: tp1 fp1 -> 2/3; maybe: 0
    assert m["macro_f1"] == 44.44


def test_all_yes_scores_the_majority_rate_and_shows_it():
    gold = ["yes"] * 276 + ["no"] * 169 + ["maybe"] * 55
    m = classification_metrics(gold, ["yes"] * 500, ["yes", "no", "maybe"])
    assert m["accuracy"] == 55.2 and m["predicted"] == {"yes": 500, "no": 0, "maybe": 0}


def test_batched_scores_match_an_independent_unbatched_scorer(tiny_model_dir, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path) + ["eval.batch_size=3"])
    runtime = backends.detect(cfg)
    model, tokenizer = backends.load_for_inference(cfg, runtime, None)
    items = load_items(BenchmarkSpec(name="pubmedqa", kind="pubmedqa", max_items=7), seed=1)
    ours = evaluate(cfg, model, tokenizer, {"p": items})["p"]["per_item"]
    groups = answer_token_ids(tokenizer, items[0].choices)
    for item, scored in zip(items, ours, strict=True):
        ids = torch.tensor([prompt_ids(cfg, tokenizer, item, evaluation_length(cfg, model) - 1)[0]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
        independent = [torch.logsumexp(logprobs[g], dim=0).item() for g in groups]
        assert scored["scores"] == pytest.approx(independent, abs=1e-3)


@pytest.mark.parametrize("reply, choices, expected", [
    ("## Thinking\n\nMaybe A, maybe B.\n\n## Final Response\n\nThe answer is C.", list("ABCD"), "C"),
    ("<think>A or B</think>\n<response>B. Folate deficiency</response>", list("ABCD"), "B"),
    ("The correct answer is (D) because ...", list("ABCD"), "D"),
    ("A patient like this needs option B.", list("ABCD"), "B"),
    ("Either A. or B. could be right.", list("ABCD"), None),
    ("It is iron deficiency.", list("ABCD"), "C"),
    ("yes. Statins reduce events.", ["yes", "no", "maybe"], "yes"),
    ("There is no evidence either way.", ["yes", "no", "maybe"], None),
    ("The answer is maybe; the answer is no.", ["yes", "no", "maybe"], None),
    ("", ["yes", "no", "maybe"], None),
    ("The answer is a benign tumour.", list("ABCD"), None),  # the article "a", not option A
    ("the answer is a.", list("ABCD"), "A"),
    ("The answer is b", list("ABCD"), "B"),
])
def test_answer_extraction(reply, choices, expected):
    options = {"A": "Carrier", "B": "Folate deficiency", "C": "Iron deficiency", "D": "Parvovirus B19"}
    assert extract_answer(reply, choices, options if choices[0] == "A" else None) == expected


def test_multiple_choice_items_from_shipped_medmcqa():
    items = load_items(BenchmarkSpec(name="medmcqa", kind="multiple_choice", source="data/medmcqa/dev_subset.jsonl",
                                     max_items=20), seed=0)
    assert len(items) == 20 and all(i.gold in "ABCD" and i.choices == list("ABCD") for i in items)
    assert "\nA. " in items[0].example.prompt and items[0].uid


def test_evaluation_refuses_items_the_adapter_trained_on(tmp_path, pubmedqa_items):
    from medqlora.leakage import question_hash

    trained = tmp_path / "training_items.jsonl"
    trained.write_text(json.dumps({"question_sha1_16": question_hash(pubmedqa_items[0].example.question)}) + "\n")
    with pytest.raises(DataError, match="1 items were trained on by this adapter"):
        check_not_trained_on({"pubmedqa": pubmedqa_items}, trained)


# ---------------------------------------------------------------- chain of thought and perplexity

from medqlora.evaluate import cot_metrics, rouge_l, split_cot  # noqa: E402


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" and "the cat lay on a mat" = the cat on mat (4): P = 4/6, R = 4/6
    assert rouge_l("the cat sat on the mat", "The cat lay on a mat.") == pytest.approx(4 / 6)
    assert rouge_l("", "anything") == 0.0 and rouge_l("same words", "same words") == 1.0


def test_cot_format_compliance_and_reasoning_length():
    replies = [
        "## Thinking\n\nfirst second third\n\n## Final Response\n\nIron deficiency.",
        "## Final Response\n\nIron deficiency.",  # no reasoning: not compliant
        "Iron deficiency.",
        "## Thinking\n\none two three four five",  # cut off before the final response: not compliant
    ]
    reference = "## Thinking\n\nwhy\n\n## Final Response\n\nIron deficiency."
    m = cot_metrics(replies, [reference] * 4, "huatuo")
    assert m["format_compliance"] == 25.0 and m["started_reasoning"] == 50.0
    assert m["mean_reasoning_words"] == 4.0  # (3 + 5) / 2
    assert m["rouge_l"] == 75.0  # the final response (or the whole reply) matches in three of four
    assert split_cot("<think>a b</think>\n<response>c</response>", "tags") == ("a b", "c")
    assert cot_metrics(["<think>a</think> no response"], ["<response>x</response>"], "tags")["format_compliance"] == 0


def test_full_mode_on_medical_o1_reports_cot_and_perplexity(tiny_model_dir, tmp_path):
    from medqlora.cli import main

    rows = tmp_path / "o1.jsonl"
    rows.write_text("".join(json.dumps({"Question": f"Patient {i} has anaemia. Cause?", "Complex_CoT": "Think.",
                                        "Response": "Iron deficiency."}) + "\n" for i in range(12)))
    argv = ["--mode", "full"]
    for item in tiny_overrides(tiny_model_dir, tmp_path / "out", **{
            "data.datasets": f"[{{source: {rows}, format: medical_o1}}]", "data.val_ratio": "0.25",
            "eval.benchmarks": "[]", "eval.max_new_tokens": "12", "output.run_name": "o1"}):
        argv += ["--set", item]
    assert main(argv) == 0
    run = tmp_path / "out" / "o1"
    report = json.loads((run / "eval.json").read_text())
    cot = report["benchmarks"]["medical-o1 validation:huatuo"]
    assert cot["baseline"]["items"] == cot["fine_tuned"]["items"] == 3
    assert 0 <= cot["fine_tuned"]["format_compliance"] <= 100
    assert report["perplexity"]["before"] > 1 and report["perplexity"]["after"] > 1
    text = (run / "eval_report.md").read_text()
    assert "## Chain-of-thought format" in text and "## Held-out perplexity" in text


def test_summary_flags_a_model_that_gives_one_answer_to_nearly_every_item():
    from medqlora.report import eval_report_markdown, summary_row

    labels = ["yes", "no", "maybe"]
    gold = ["yes"] * 55 + ["no"] * 34 + ["maybe"] * 11
    base = evaluation.classification_metrics(gold, ["no"] * 37 + ["yes"] * 33 + ["maybe"] * 30, labels)
    tuned = evaluation.classification_metrics(gold, ["yes"] * 54 + ["no"] * 1 + ["yes"] * 41 + ["no"] * 4, labels)
    assert tuned["majority_label"] == "yes" and tuned["majority_rate"] == 55.0
    assert tuned["predicted"]["yes"] == 95 and tuned["accuracy"] == 54.0
    line = summary_row("pubmedqa", {"baseline": base, "fine_tuned": tuned})
    assert line.startswith(f"pubmedqa accuracy {base['accuracy']} -> 54.0, macro-F1 {base['macro_f1']} -> "
                           f"{tuned['macro_f1']} (always 'yes': 55.0)")
    assert "WARNING: the fine-tuned model answers 'yes' to 95% of pubmedqa's items" in line
    assert "54.0% is below always answering 'yes' (55.0%)" in line
    assert "baseline model" not in line  # the baseline spreads its answers
    for m in (base, tuned):
        m.update(method="likelihood", items_per_second=10.0)
    report = eval_report_markdown(evaluation.side_by_side({"pubmedqa": base}, {"pubmedqa": tuned}), "t")
    assert "**warning**: the fine-tuned model answers 'yes' to 95%" in report
    assert "always answering the most common gold label ('yes'): 55.0% on these items" in report


def test_summary_has_no_warning_for_spread_answers():
    from medqlora.report import summary_row

    labels = ["A", "B", "C", "D"]
    gold = ["A", "B", "C", "D"] * 25
    tuned = evaluation.classification_metrics(gold, ["A"] * 90 + ["B"] * 10, labels)
    assert evaluation.one_answer_warning("m", "fine_tuned", tuned) is None  # exactly 90% is not flagged
    line = summary_row("m", {"baseline": None, "fine_tuned": tuned})
    assert "WARNING" not in line and line.startswith("m accuracy - -> 25.0, macro-F1 - -> ")


def _long_abstract_items(count: int):
    """PubMedQA test items, the longest abstracts first."""
    items = load_items(BenchmarkSpec(name="pubmedqa", kind="pubmedqa"), seed=0)
    return sorted(items, key=lambda item: -len(item.example.context or ""))[:count]


def test_evaluation_is_not_limited_by_the_training_length(tiny_model_dir, tmp_path, smol_tokenizer):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, **{"model.max_seq_length": "64"}))
    runtime = backends.detect(cfg)
    model, tokenizer = backends.load_for_inference(cfg, runtime, None)
    items = _long_abstract_items(3)
    assert evaluation_length(cfg, model) == 4096  # the tiny model's context, not max_seq_length 64
    result = evaluate(cfg, model, tokenizer, {"p": items})["p"]
    assert result["items"] == 3 and result["shortened"] == 0
    whole = [prompt_ids(cfg, tokenizer, item, 10**6)[0] for item in items]
    assert min(len(ids) for ids in whole) > 64

    shortened = load_config(None, tiny_overrides(tiny_model_dir, tmp_path) + ["eval.max_length=200"])
    result = evaluate(shortened, model, tokenizer, {"p": items})["p"]
    assert result["shortened"] == 3 and all(r["shortened"] for r in result["per_item"])
    for item, full in zip(items, whole, strict=True):
        ids, was_shortened = prompt_ids(shortened, tokenizer, item, 199)
        assert was_shortened and len(ids) <= 199
        assert ids[-20:] == full[-20:]  # only the context shrinks: the question and the answer cue stay


def test_an_item_too_long_even_without_its_context_is_refused_with_the_setting_to_change(tiny_model_dir, tmp_path,
                                                                                      smol_tokenizer):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path) + ["eval.max_length=40"])
    item = _long_abstract_items(1)[0]
    item.example.prompt = "Is " + "very " * 200 + "long question?"
    with pytest.raises(DataError, match=r"its prompt is \d+ tokens even with its context shortened, more than the 39 "
                       r"evaluation allows \(eval.max_length"):
        prompt_ids(cfg, smol_tokenizer, item, 39)


def test_a_model_loaded_for_a_sequence_length_caps_the_evaluation_length(tmp_path):
    cfg = load_config(None, [])
    model = type("Loaded", (), {"config": type("C", (), {"max_position_embeddings": 8192})(), "max_seq_length": 512})()
    assert evaluation_length(cfg, model) == 512  # Unsloth refuses longer inputs than it was loaded for
    assert evaluation_length(load_config(None, ["eval.max_length=300"]), model) == 300
    model.max_seq_length = None
    assert evaluation_length(cfg, model) == 8192
