"""Hostile inputs of the fifteenth round, leakage guard: an evaluation question in a training text with its words in
another order (clauses swapped or rearranged, words shuffled), which breaks every 13-word sequence and every stretch
the near-copy alignment holds in order; and questions on the same topic, and the shipped data, that must still pass."""

import json
from pathlib import Path

import pytest

from medqlora.cli import main
from medqlora.config import DatasetSpec
from medqlora.data import format_rows, pubmedqa_test_ids
from medqlora.leakage import Item, find_overlap

from .conftest import SHARED_DATA, assert_one_message, kit_argv
from .test_hostile_review15_e import QUESTION, _evaluation, _jsonl, _train  # QUESTION: PubMedQA test item 18041059
REORDERED = {
    "clauses-swapped": "In postmenopausal women with early breast cancer, do adjuvant aromatase inhibitors increase "
                       "the cardiovascular risk?",
    "three-clauses": "The cardiovascular risk in postmenopausal women with early breast cancer: do adjuvant aromatase "
                     "inhibitors increase it?",
    "words-shuffled": "cancer breast early with women postmenopausal in risk cardiovascular the increase inhibitors "
                      "aromatase adjuvant do",
    "wrapped-over-two-lines": "In postmenopausal women with early breast\ncancer, do adjuvant aromatase inhibitors "
                              "increase\nthe cardiovascular risk?",
    "inside-a-longer-text": "Read this first. In postmenopausal women with early breast cancer do adjuvant aromatase "
                            "inhibitors increase the cardiovascular risk? Answer yes, no or maybe.",
}
VIGNETTE = ("A 45-year-old man presents with three days of fever, productive cough and pleuritic chest pain. Which "
            "organism is the most likely cause?")


# ---------------------------------------------------------------- reordered copies are refused (161)

@pytest.mark.parametrize("kind", sorted(REORDERED))
def test_an_evaluation_question_with_its_words_in_another_order_is_a_near_duplicate(kind):
    [overlap] = find_overlap(_train("What is fever?", REORDERED[kind]), _evaluation(QUESTION))
    assert (overlap.kind, overlap.train.row, overlap.evaluation.uid, overlap.field) == ("near duplicate", 2, "q0",
                                                                                        "instruction")
    assert "field 'instruction' contains, with its words in another order, evaluation 'evalset' item q0" in \
        overlap.describe()


@pytest.mark.parametrize("training, shown", [
    # a two-sentence vignette with its sentences swapped and words moved in each
    ("Which organism is the most likely cause? A 45-year-old man presents with fever, productive cough and "
     "pleuritic chest pain of three days.", "with its words in another order,"),
    # reordered and misspelt: the changes the in-order near-copy check allows
    ("In postmenopausal women with early breast cancer, do adjuvant aromatse inhibitors increase the cardiovascular "
     "risk?", "with its words in another order and one word misspelt ('aromatse' for 'aromatase'),"),
])
def test_reordered_copies_with_the_changes_a_near_copy_may_have_are_found(training, shown):
    [overlap] = find_overlap(_train(training), _evaluation(QUESTION, VIGNETTE))
    assert overlap.kind == "near duplicate" and shown in overlap.describe()


def test_the_reordered_pubmedqa_test_question_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    filler = [{"instruction": f"What is the treatment of condition number {i} in adults?", "output": f"Answer {i}."}
              for i in range(7)]
    data = _jsonl(tmp_path / "mine.jsonl", filler + [{"instruction": REORDERED["clauses-swapped"], "output": "No."}])
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{data}', format: instruction}}]"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, "1 training examples contain evaluation questions (0 exact, 1 near duplicates)")
    assert ("row 8 field 'instruction' contains, with its words in another order, evaluation 'pubmedqa-test' item "
            "18041059") in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- what still passes

@pytest.mark.parametrize("training", [
    # the same population, another drug
    "In postmenopausal women with early breast cancer, does adjuvant tamoxifen increase the cardiovascular risk?",
    # another population: 'men' is no misspelling of 'women'
    "In postmenopausal men with early breast cancer, do adjuvant aromatase inhibitors increase the cardiovascular "
    "risk?",
    # another outcome
    "In postmenopausal women with early breast cancer, do adjuvant aromatase inhibitors increase the risk of "
    "osteoporosis?",
    # a short word changed is another word, not a misspelling ('riks' for 'risk'), in either order
    "In postmenopausal women with early breast cancer, do adjuvant aromatase inhibitors increase the cardiovascular "
    "riks?",
    # the question's words spread over three sentences of a longer text
    "Postmenopausal women with early breast cancer were studied. Adjuvant aromatase inhibitors were given to half. "
    "Did the cardiovascular risk increase?",
])
def test_questions_on_the_same_topic_that_differ_by_a_content_word_pass(training):
    assert find_overlap(_train(training), _evaluation(QUESTION)) == []


def test_a_stretch_across_two_questions_of_one_template_is_no_reordered_copy():
    """Vignettes of one template: the end of one and the start of the next hold every word of a third one, across
    more sentences than it has."""
    first = ("A 66-year-old woman presents with 4 days of fever and cough after a history of rash. Which of the "
             "following is the most likely diagnosis?")
    second = ("A 75-year-old woman presents with 2 days of diarrhea and syncope after a history of dyspnea. Which of "
              "the following is the most likely diagnosis?")
    question = ("A 75-year-old woman presents with 2 days of fever and cough after a history of rash. Which of the "
                "following is the most likely diagnosis?")
    [overlap] = find_overlap(_train(f"{first} {second}"), _evaluation(question))
    # the first vignette with its two figures changed: a possible near copy (reported, not refused), not the other
    assert overlap.possible and overlap.changes.shown == ("'66' for '75'", "'4' for '2'")


def test_increase_for_decrease_is_a_misspelling_in_either_word_order():
    """Decided: 'decrease' for 'increase' is two letters apart, which the in-order check takes for a misspelling; a
    reordered copy is held to the same rule (the two questions share their answer's evidence)."""
    decreased = QUESTION.replace("increase", "decrease")
    reordered = REORDERED["clauses-swapped"].replace("increase", "decrease")
    overlaps = find_overlap(_train(decreased, reordered), _evaluation(QUESTION))
    assert [o.train.row for o in overlaps] == [1, 2]
    assert "with one word misspelt ('decrease' for 'increase')" in overlaps[0].describe()
    assert "with its words in another order and one word misspelt ('decrease' for 'increase')" in \
        overlaps[1].describe()


def test_training_texts_without_a_word_of_the_questions_pass():
    assert find_overlap(_train("zzz yyy", "What is fever?"), _evaluation(QUESTION, VIGNETTE)) == []


def test_exact_matching_only_does_not_look_for_reordered_copies():
    assert find_overlap(_train(REORDERED["clauses-swapped"]), _evaluation(QUESTION), ngram=0) == []


# ---------------------------------------------------------------- the shipped data

def test_the_shipped_pubmedqa_questions_pass_the_reordered_check():
    rows = json.loads(Path("data/pubmedqa/ori_pqal.json").read_text())
    test = sorted(pubmedqa_test_ids())
    evaluation = [Item("pubmedqa-test", p, rows[p]["QUESTION"]) for p in test]
    others = sorted(set(rows) - set(test))
    training = [Item("pubmedqa", p, rows[p]["QUESTION"], (("question", rows[p]["QUESTION"]),
                                                          ("long_answer", rows[p]["LONG_ANSWER"])), i)
                for i, p in enumerate(others)]
    assert find_overlap(training, evaluation) == []


def test_the_shipped_medmcqa_split_holds_its_reordered_copies_in_the_held_out_part():
    """The split was made again with the reordered check: three training rows that were held-out questions in
    another order (or with function words changed) moved to heldout.jsonl."""
    spec = DatasetSpec(source="train.jsonl", format="multiple_choice")
    rows = [json.loads(line) for line in Path("data/medmcqa/train.jsonl").read_text().splitlines()]
    train = [Item("train", str(i), ex.question, ex.guard_texts(), i) for i, ex in enumerate(format_rows(spec, rows))]
    held = [json.loads(line) for line in Path("data/medmcqa/heldout.jsonl").read_text().splitlines()]
    assert (len(train), len(held)) == (2302, 514)
    assert find_overlap(train, [Item("heldout", row["realidx"], row["question"]) for row in held]) == []
    questions = [row["question"] for row in held]
    assert "In carrier base gutta percha the plastic carrier size of 40- 90 are made by?" in questions
    assert "Plastic carrier size of 40-90 in carrier base Gutta percha are made from?" in questions


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared medical data checkout")
def test_the_shared_medical_o1_questions_pass_against_pubmedqa_and_medmcqa():
    rows = json.loads((SHARED_DATA / "medical_o1" / "demo_data.json").read_text())
    items = [Item("o1", None, r["Question"], (("Question", r["Question"]), ("Response", r["Response"])), i)
             for i, r in enumerate(rows, 1)]
    pqal = json.loads((SHARED_DATA / "pubmedqa" / "ori_pqal.json").read_text())
    pubmedqa = [Item("pubmedqa-test", p, pqal[p]["QUESTION"]) for p in sorted(pubmedqa_test_ids())]
    medmcqa = [Item("medmcqa", r["realidx"], r["question"]) for r in map(
        json.loads, (SHARED_DATA / "medmcqa" / "dev_subset.jsonl").read_text().splitlines())]
    assert find_overlap(items, pubmedqa) == []
    assert find_overlap(items, medmcqa) == []
