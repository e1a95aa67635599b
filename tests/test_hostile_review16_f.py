"""Hostile round 16, a blank preference prompt and duplicate benchmark items: a DPO row whose prompt is only blanks
was called missing; a multiple-choice benchmark holding each question twice scored and weighted each copy, and one
holding a question twice with two answers scored one of them wrong whatever the model answered."""

import json

import pytest

from medqlora import data
from medqlora.config import BenchmarkSpec, DatasetSpec
from medqlora.errors import DataError
from medqlora.evaluate import duplicates_of, load_items

from .conftest import assert_one_message, kit_argv, only_run, run_cli


def _jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _preference(tmp_path, *rows: dict):
    spec = DatasetSpec(source=str(_jsonl(tmp_path / "pref.jsonl", list(rows))), format="preference")
    return data.format_rows(spec, data.load_rows(spec))


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


GOOD_PAIR = {"prompt": "First-line drug for type 2 diabetes?", "chosen": "Metformin.", "rejected": "Insulin always."}


def test_a_preference_prompt_of_blanks_is_called_blank_not_missing(tiny_model_dir, tmp_path, capsys):
    rows = [{**GOOD_PAIR, "prompt": f"Question {i}: first-line drug for type 2 diabetes?"} for i in range(19)]
    source = _jsonl(tmp_path / "pref.jsonl", rows + [{**GOOD_PAIR, "prompt": "   "}])
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "training.method": "dpo", "preference.max_prompt_length": "128",
        "data.datasets": f"[{{source: '{source}', format: preference}}]"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, f"{source} row 20: no prompt: field 'prompt' is only whitespace ('   ') and "
                                   "'chosen' holds no user message: the replies would answer no question. Fill it in "
                                   "or leave the row out.")
    assert "is missing" not in result.err


@pytest.mark.parametrize("row, said", [
    ({**GOOD_PAIR, "prompt": ""}, "no prompt: field 'prompt' is empty and 'chosen' holds no user message"),
    ({**GOOD_PAIR, "prompt": "\u200b\u2060"},
     "no prompt: field 'prompt' is only invisible characters (\\u200b\\u2060)"),
    ({"chosen": "Metformin.", "rejected": "Insulin."}, "no prompt: field 'prompt' is missing and 'chosen' holds no "
                                                       "user message"),
    ({**GOOD_PAIR, "prompt": [{"role": "system", "content": "Be brief."}]},
     "no prompt: field 'prompt' holds no user message and 'chosen' holds no user message"),
    ({**GOOD_PAIR, "prompt": [_user(" \n ")]}, "field 'prompt[0].content' is only whitespace (' \\n '), expected the "
                                               "question the response answers"),
    ({**GOOD_PAIR, "prompt": "  ", "question": "Dose?"}, "no prompt: field 'prompt' is only whitespace ('  ') and "
                                                         "'chosen' holds no user message: the replies would answer no "
                                                         "question. Fill it in or leave the row out. The row holds "
                                                         "'question': if that is the question, map it"),
])
def test_a_preference_row_without_a_question_says_how_the_prompt_is_empty(tmp_path, row, said):
    with pytest.raises(DataError) as caught:
        _preference(tmp_path, GOOD_PAIR, row)
    assert str(caught.value).startswith(f"{tmp_path / 'pref.jsonl'} row 2: {said}")


@pytest.mark.parametrize("row, said", [
    ({**GOOD_PAIR, "chosen": " \t"}, "field 'chosen' is only whitespace (' \\t'), expected the response to learn."),
    ({**GOOD_PAIR, "rejected": ""}, "field 'rejected' is empty, expected the reply to prefer less."),
    ({"chosen": [_user("  "), _assistant("Metformin.")], "rejected": [_user("Drug?"), _assistant("Insulin.")]},
     "field 'chosen[0].content' is only whitespace ('  '), expected the question the response answers"),
    ({"chosen": [_user("Drug?"), _assistant("Metformin.")], "rejected": [_user("Drug?"), _assistant("\u200b")]},
     "field 'rejected[1].content' is only invisible characters (\\u200b), expected the reply to prefer less."),
    ({"chosen": [_user("Drug?"), _assistant(""), _user("And?"), _assistant("Metformin.")], "rejected": "Insulin."},
     "field 'chosen[1].content' is empty, expected the response to learn."),
])
def test_blank_chosen_and_rejected_turns_are_named_as_blank(tmp_path, row, said):
    with pytest.raises(DataError) as caught:
        _preference(tmp_path, GOOD_PAIR, row)
    assert str(caught.value).startswith(f"{tmp_path / 'pref.jsonl'} row 2: {said}")


def test_a_blank_prompt_beside_a_conversation_asks_the_conversations_question(tmp_path):
    conversation = {"prompt": " ", "chosen": [_user("Drug for type 2 diabetes?"), _assistant("Metformin.")],
                    "rejected": [_user("Drug for type 2 diabetes?"), _assistant("Insulin always.")]}
    pair = _preference(tmp_path, GOOD_PAIR, conversation)[1]
    assert (pair.prompt, pair.response, pair.rejected) == ("Drug for type 2 diabetes?", "Metformin.", "Insulin always.")


# ---------------------------------------------------------------- duplicate benchmark items

QUESTIONS = [("Which vitamin deficiency causes scurvy?", "C"), ("Which organ makes insulin?", "B"),
             ("Which nerve is cut in carpal tunnel release? (none)", "A"), ("Where is the humerus?", "D"),
             ("Which drug reverses opioids?", "B")]


def _item(question: str, answer: str, **extra) -> dict:
    return {"question": question, "options": {"A": "liver", "B": "pancreas", "C": "vitamin C", "D": "arm"},
            "answer_idx": answer, **extra}


def _bench_argv(tiny_model_dir, tmp_path, bench, *args: str) -> list[str]:
    return kit_argv(tiny_model_dir, tmp_path / "out", *args, **{
        "eval.benchmarks": f"[{{name: mine, kind: multiple_choice, source: '{bench}'}}]"})


def test_duplicate_benchmark_items_are_scored_once_and_said_in_plan_and_report(tiny_model_dir, tmp_path, capsys):
    rows = [_item(q, a, id=f"q{i}") for i, (q, a) in enumerate(QUESTIONS)]
    # the same items again, case and blanks aside
    rows += [_item(q.upper() + "  ", a, id=f"again{i}") for i, (q, a) in enumerate(QUESTIONS)]
    bench = _jsonl(tmp_path / "mc_dup.jsonl", rows)
    plan = run_cli(capsys, _bench_argv(tiny_model_dir, tmp_path, bench, "--mode", "eval", "--adapter", "none",
                                       "--dry-run"))
    assert plan.code == 0, plan.err
    assert "mine (multiple_choice, 5 items (5 duplicate items scored once), likelihood)" in plan.out
    done = run_cli(capsys, _bench_argv(tiny_model_dir, tmp_path, bench, "--mode", "eval", "--adapter", "none"))
    assert done.code == 0, done.err
    assert "on 5 items (5 duplicate items scored once) (likelihood" in done.out
    run = only_run(tmp_path / "out")
    scored = json.loads((run / "eval.json").read_text())["benchmarks"]["mine"]["baseline"]
    assert (scored["items"], scored["duplicates"], sum(scored["gold"].values())) == (5, 5, 5)
    assert [item["uid"] for item in scored["per_item"]] == ["q0", "q1", "q2", "q3", "q4"]  # each with its first row
    report = (run / "eval_report.md").read_text()
    assert "| mine | 5 | likelihood |" in report and "- 5 duplicate items scored once" in report


def test_the_same_options_in_another_order_are_another_item(tiny_model_dir, tmp_path, capsys):
    reordered = {"question": QUESTIONS[0][0], "options": {"A": "vitamin C", "B": "pancreas", "C": "liver", "D": "arm"},
                 "answer_idx": "A"}
    bench = _jsonl(tmp_path / "mc.jsonl", [_item(q, a) for q, a in QUESTIONS] + [reordered])
    plan = run_cli(capsys, _bench_argv(tiny_model_dir, tmp_path, bench, "--mode", "eval", "--adapter", "none",
                                       "--dry-run"))
    assert plan.code == 0, plan.err
    assert "mine (multiple_choice, 6 items, likelihood)" in plan.out and "duplicate" not in plan.out


def test_a_question_twice_with_two_answers_is_left_out_naming_both_rows(tiny_model_dir, tmp_path, capsys):
    rows = [_item(q, a) for q, a in QUESTIONS] + [_item("which vitamin deficiency causes SCURVY", "A", id="x7")]
    bench = _jsonl(tmp_path / "mc_contra.jsonl", rows)
    for mode in (["--mode", "eval", "--adapter", "none", "--dry-run"], ["--mode", "full", "--dry-run"]):
        result = run_cli(capsys, _bench_argv(tiny_model_dir, tmp_path, bench, *mode))
        assert result.code == 0, result.err
        said = result.out + result.err  # the warning: on stderr beside the plan's JSON, on stdout in a run
        assert (f"warning: Benchmark 'mine': {bench} row 1 and {bench} row 6 (id x7) hold the same question with the "
                "same options but different answers (C vs A): the benchmark contradicts itself, so one of them would "
                "be scored wrong whatever the model answers; 2 rows left out, 4 items scored.") in said
        assert "mine (multiple_choice, 4 items, likelihood)" in result.out


def test_a_benchmark_of_nothing_but_contradictions_is_refused(tiny_model_dir, tmp_path, capsys):
    bench = _jsonl(tmp_path / "mc_contra.jsonl", [_item(QUESTIONS[0][0], "C"), _item(QUESTIONS[0][0], "A"),
                                                  _item(QUESTIONS[0][0], "B")])
    result = run_cli(capsys, _bench_argv(tiny_model_dir, tmp_path, bench, "--mode", "eval", "--adapter", "none",
                                         "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, f"Benchmark 'mine': {bench} row 1 and {bench} row 2 and {bench} row 3 hold the "
                                    "same question with the same options but different answers (C vs A vs B): the "
                                    "benchmark contradicts itself, and no item is left to score.")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_shipped_medmcqa_sets_score_each_question_once():
    dev = load_items(BenchmarkSpec(name="medmcqa", kind="multiple_choice", source="data/medmcqa/dev_subset.jsonl"), 0)
    assert (len(dev), duplicates_of(dev)) == (2806, 8)  # 2816 rows: 8 repeats, and one question given two answers
    assert {"ee904a2e-7494-46ef-b976-22be596ed44f", "f4ea9cd2-e0a7-41e2-ab75-fe54a8bee24e"}.isdisjoint(
        item.uid for item in dev)


# ---------------------------------------------------------------- duplicate PubMedQA and chain-of-thought items

def _pubmedqa_row(pubid: str, question: str, decision: str) -> dict:
    return {"pubid": pubid, "question": question, "context": {"contexts": [f"An abstract about {question}"]},
            "final_decision": decision, "long_answer": "Because."}


def test_a_pubmedqa_test_question_given_twice_is_scored_once(tmp_path, capsys):
    first, second = sorted(data.pubmedqa_test_ids())[:2]
    rows = [_pubmedqa_row(first, "Does aspirin help?", "yes"), _pubmedqa_row(second, "Is rest enough?", "no"),
            _pubmedqa_row(first, "does ASPIRIN help", "yes")]  # the first row again, case and punctuation aside
    items = load_items(BenchmarkSpec(name="p", kind="pubmedqa", source=str(_jsonl(tmp_path / "p.jsonl", rows))), 0)
    assert [(item.uid, item.copies) for item in items] == [(first, 2), (second, 1)]
    assert duplicates_of(items) == 1


def test_a_pubmedqa_test_question_given_two_answers_is_left_out_naming_both_rows(tmp_path, capsys):
    first, second = sorted(data.pubmedqa_test_ids())[:2]
    bench = _jsonl(tmp_path / "p.jsonl", [_pubmedqa_row(first, "Does aspirin help?", "yes"),
                                          _pubmedqa_row(second, "Is rest enough?", "no"),
                                          _pubmedqa_row(first, "Does aspirin help?", "maybe")])
    items = load_items(BenchmarkSpec(name="p", kind="pubmedqa", source=str(bench)), 0)
    assert [item.uid for item in items] == [second]
    assert (f"{bench} row 1 (id {first}) and {bench} row 3 (id {first}) hold the same question but different answers "
            "(yes vs maybe)") in capsys.readouterr().out


def test_a_chain_of_thought_question_given_twice_is_scored_once_whatever_its_references_say(tmp_path):
    rows = [{"Question": "Why does a fever rise?", "Complex_CoT": "Pyrogens.", "Response": "Prostaglandin E2."},
            {"Question": "What lowers a fever?", "Complex_CoT": "Drugs.", "Response": "Paracetamol."},
            {"Question": "Why does a FEVER rise", "Complex_CoT": "Set point.", "Response": "The hypothalamus."}]
    items = load_items(BenchmarkSpec(name="c", kind="cot", source=str(_jsonl(tmp_path / "c.jsonl", rows))), 0)
    assert [(item.gold.endswith("Prostaglandin E2."), item.copies) for item in items] == [(True, 2), (False, 1)]
