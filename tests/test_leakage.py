"""The leakage guard: evaluation questions are found in every text of a training prompt, exactly (after
normalisation) or as near duplicates (word n-gram overlap), fast, and without flagging real data."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqlora.config import DatasetSpec
from medqlora.data import pubmedqa_test_ids
from medqlora.errors import DataError
from medqlora.leakage import Item, check, find_overlap, legacy_question_hash, normalize, question_hash

from .conftest import SHARED_DATA

PQAL = json.loads(open("data/pubmedqa/ori_pqal.json").read())
TEST_IDS = sorted(pubmedqa_test_ids())
PUBMEDQA_TEST = [Item("pubmedqa-test", pmid, PQAL[pmid]["QUESTION"]) for pmid in TEST_IDS]


def longest_test_question() -> Item:
    return max(PUBMEDQA_TEST, key=lambda item: len(item.question.split()))


def train(*texts: str, row: int = 1) -> Item:
    return Item("0:mine.jsonl", None, texts[0], tuple((f"field{i}", t) for i, t in enumerate(texts)), row)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("variant", [
    "IS ASPIRIN USEFUL AFTER A MYOCARDIAL INFARCTION?",  # case
    "is aspirin useful — after a myocardial infarction!!",  # punctuation
    "is\u200b aspirin\u200c use\u200dful after\u2060 a myo\ufeffcardial infarction",  # zero-width, joiners, BOM
    "is aspirin use\u00adful after a myocardial infarction",  # soft hyphen (Cf)
    "ｉｓ ａｓｐｉｒｉｎ ｕｓｅｆｕｌ after a myocardial infarction",  # full-width (NFKC)
    "is aspirin useful after a myocardial inf\u0430rction".replace("\u0430", "a"),  # control: plain
    "is aspírin usefúl after a myocardial infarction",  # accents (combining marks dropped)
    "is a\u0301spirin useful after a myocardial infarction",  # a combining accent on its own
    "is\taspirin\nuseful   after a\u00a0myocardial\u2028infarction",  # any whitespace
    "is aspirin useful after a myocardial inf\u0000arction".replace("\u0000", ""),
    "іѕ аѕріrіn uѕеful аftеr а mуосаrdіаl іnfаrсtіоn",  # Cyrillic look-alikes
    "ІЅ АЅРІRІN USЕFUL AFTЕR А MYОСАRDІАL ІNFАRСTІОN",  # Cyrillic capitals
    "is aspirin useful after a myοcardial infarcτiοn",  # Greek omicron and tau
    "ΙS ΑSΡΙRΙΝ USΕFUL ΑFΤΕR Α ΜΥΟCΑRDΙΑL ΙΝFΑRCΤΙΟΝ",  # Greek capitals
    "is&nbsp;aspirin useful&#32;after a myocardial infarction&#63;",  # HTML entities
    "is&amp;nbsp;aspirin useful &amp; after a myocardial infarction&quot;",  # escaped twice
])
def test_normalisation_ignores_case_punctuation_and_invisible_characters(variant):
    assert normalize(variant) == "is aspirin useful after a myocardial infarction"
    assert question_hash(variant) == question_hash("Is aspirin useful after a myocardial infarction?")


def test_normalisation_folds_compatibility_forms_and_case():
    assert normalize("Straße ﬁbrosis Ⅳ x²") == "strasse fibrosis iv x2"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_the_ascii_fast_path_agrees_with_the_full_unicode_path(text):
    # a zero-width space forces the Unicode path and is then removed
    assert normalize(text) == normalize(text + "\u200b") == normalize("\u200b" + text)


def test_hashes_of_ascii_questions_match_earlier_runs():
    question = PQAL[TEST_IDS[0]]["QUESTION"]
    assert question.isascii() and question_hash(question) == legacy_question_hash(question)


# ---------------------------------------------------------------- where a question hides


def test_an_evaluation_question_is_found_in_any_field_of_a_training_prompt():
    question = PUBMEDQA_TEST[3]
    items = [
        train("Summarise the abstract.", f"Background text. {question.question} More text."),  # inside 'input'
        train("Hello", "Hi, how can I help?", question.question.lower(), "Sure."),  # an earlier chat turn
        train(question.question.replace(" ", "\u200b ")),  # behind zero-width characters
    ]
    overlaps = find_overlap(items, PUBMEDQA_TEST)
    assert [(o.train.row, o.kind, o.evaluation.uid) for o in overlaps] == [(1, "exact", question.uid)] * 3
    assert [o.field for o in overlaps] == ["field1", "field2", "field0"]


def test_a_lightly_paraphrased_question_is_a_near_duplicate():
    question = longest_test_question()
    words = question.question.rstrip("?").split()
    paraphrase = " ".join(words[:-1]) + " in adults?"  # the last word changed, a few added
    [overlap] = find_overlap([train("Please answer: " + paraphrase)], PUBMEDQA_TEST)
    assert overlap.kind == "near duplicate" and overlap.evaluation.uid == question.uid
    assert overlap.n == 13 and overlap.matched == overlap.ngrams - 1
    with pytest.raises(DataError) as err:
        check([train("Please answer: " + paraphrase)], PUBMEDQA_TEST, allow=False)
    message = str(err.value)
    assert "1 training examples contain evaluation questions (0 exact, 1 near duplicates)" in message
    assert f"shares {overlap.matched} of the {overlap.ngrams} 13-word sequences" in message
    assert f"evaluation 'pubmedqa-test' item {question.uid}" in message and "allow_eval_overlap: true" in message
    # exact matching only (near_duplicate_ngram: 0) lets it through; the exact copy is still caught
    assert find_overlap([train(paraphrase)], PUBMEDQA_TEST, ngram=0) == []
    assert len(find_overlap([train(question.question)], PUBMEDQA_TEST, ngram=0)) == 1


def test_the_threshold_is_the_share_of_the_questions_ngrams():
    question = next(q for q in PUBMEDQA_TEST if len(normalize(q.question).split()) == 14)
    first_13 = " ".join(normalize(question.question).split()[:13])  # 1 of its 2 13-grams
    assert len(find_overlap([train(first_13)], [question], 13, 0.5)) == 1
    [left_out] = find_overlap([train(first_13)], [question], 13, 0.6)  # under the threshold: its last word left
    assert left_out.possible and left_out.kind == "near duplicate"  # out makes a possible near copy only
    assert len(find_overlap([train(first_13)], [question], 7, 0.6)) == 1  # 7 of its 8 7-grams


def test_short_questions_match_only_a_whole_field():
    evaluation = [Item("mine", "q1", "Is aspirin safe?")]
    assert find_overlap([train("Is aspirin safe? Discuss its use in pregnancy, with the evidence.")], evaluation) == []
    [overlap] = find_overlap([train("Context here.", "is ASPIRIN safe")], evaluation)
    assert (overlap.kind, overlap.field) == ("exact", "field1")


def test_each_training_example_is_reported_once_with_its_best_match():
    question = PUBMEDQA_TEST[0]
    both = [Item("pubmedqa-test", question.uid, question.question), Item("pubmedqa", question.uid, question.question)]
    overlaps = find_overlap([train(question.question, question.question)], both)
    assert len(overlaps) == 1 and overlaps[0].evaluation.dataset == "pubmedqa-test"
    result = check([train(question.question)], both, allow=True)
    assert result["evaluation_items_checked"] == 1 and result["overlaps"][0]["evaluation_question_sha1_16"] == \
        question_hash(question.question)


def test_text_from_the_data_is_printed_escaped():
    nasty = "Is \x1b[31mred\x1b[0m text\nuseful in a message about five words?"
    with pytest.raises(DataError) as err:
        check([train(nasty)], [Item("mine\n", "id\r1", nasty)], allow=False)
    message = str(err.value)
    assert "\x1b" not in message and "\\x1b" in message and "\r" not in message
    assert message.count("\n") == 2  # the header line, one listed item, the fix


# ---------------------------------------------------------------- real data: no false positives


def pubmedqa_training_items(pmids) -> list[Item]:
    """PubMedQA rows as the kit trains on them: question, every abstract paragraph, and the long answer."""
    return [Item("pubmedqa", p, PQAL[p]["QUESTION"], (("question", PQAL[p]["QUESTION"]),)
                 + tuple(("context", c) for c in PQAL[p]["CONTEXTS"]) + (("long_answer", PQAL[p]["LONG_ANSWER"]),))
            for p in pmids]


def guarded_evaluation_items() -> list[Item]:
    """What the kit guards: PubMedQA's test questions, abstracts (each paragraph and whole) and long answers."""
    from medqlora.config import DataSection
    from medqlora.data import evaluation_items

    return evaluation_items(DataSection(datasets=[DatasetSpec(source="x.jsonl", format="instruction")]))


def kit_training_items(rows: list[dict], fmt: str, **spec) -> list[Item]:
    """Rows formatted as the kit trains on them, with the texts the guard compares (responses included)."""
    from medqlora.data import Collected, format_rows, guard_items

    spec = DatasetSpec(source="x.jsonl", format=fmt, **spec)
    return guard_items([Collected("0:x.jsonl", spec, format_rows(spec, rows), {})])


def test_pubmedqa_training_questions_are_not_flagged_against_its_test_questions():
    others = sorted(set(PQAL) - set(TEST_IDS))
    assert len(others) == 500
    assert find_overlap(pubmedqa_training_items(others), PUBMEDQA_TEST) == []
    # even with much shorter n-grams
    assert find_overlap(pubmedqa_training_items(others), PUBMEDQA_TEST, ngram=5) == []
    # and the guard does find the test rows themselves
    assert len(find_overlap(pubmedqa_training_items(TEST_IDS), PUBMEDQA_TEST)) == 500


@pytest.mark.slow
def test_pubmedqa_training_rows_are_not_flagged_against_its_test_abstracts_and_long_answers():
    guarded = guarded_evaluation_items()
    assert {item.part for item in guarded} >= {None, "abstract", "abstract paragraph 1", "long answer"}
    others = [{"pubid": p, **PQAL[p]} for p in sorted(set(PQAL) - set(TEST_IDS))]
    assert find_overlap(kit_training_items(others, "pubmedqa"), guarded) == []
    # the test rows under other ids (no PMID hold-out) are all found, by their question, abstract or long answer
    test_rows = [{**PQAL[p], "pubid": f"copy-{p}", "QUESTION": "Reworded?"} for p in TEST_IDS]
    overlaps = find_overlap(kit_training_items(test_rows, "pubmedqa"), guarded)
    assert len(overlaps) == 500 and all(o.kind == "exact" and o.evaluation.part for o in overlaps)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared medical data checkout")
def test_medical_o1_rows_are_not_flagged_against_pubmedqa_or_medmcqa():
    rows = json.loads((SHARED_DATA / "medical_o1" / "demo_data.json").read_text())
    items = [Item("o1", None, r["Question"], (("Question", r["Question"]), ("Complex_CoT", r["Complex_CoT"]),
                                             ("Response", r["Response"])), i) for i, r in enumerate(rows, 1)]
    medmcqa = [json.loads(line) for line in (SHARED_DATA / "medmcqa" / "dev_subset.jsonl").read_text().splitlines()]
    medmcqa_items = [Item("medmcqa", r["realidx"], r["question"]) for r in medmcqa]
    assert find_overlap(items, PUBMEDQA_TEST) == []
    assert find_overlap(items, medmcqa_items) == []
    for style in ("huatuo", "tags"):  # as the kit formats them, abstracts and long answers guarded too
        assert find_overlap(kit_training_items(rows, "medical_o1", cot_style=style), guarded_evaluation_items()) == []
    assert find_overlap(pubmedqa_training_items(sorted(PQAL)), medmcqa_items) == []


@pytest.mark.slow
def test_a_thousand_questions_against_a_hundred_thousand_rows_take_seconds():
    vocabulary = " ".join(PQAL[p]["LONG_ANSWER"] for p in sorted(PQAL)).split()
    rng = random.Random(0)
    evaluation = PUBMEDQA_TEST + [Item("mine", str(i), " ".join(rng.choices(vocabulary, k=rng.randint(5, 30))))
                                  for i in range(500)]
    rows = [train(" ".join(rng.choices(vocabulary, k=30)), " ".join(rng.choices(vocabulary, k=30)), row=i)
            for i in range(100_000)]
    planted = PUBMEDQA_TEST[7]
    rows[54_321] = train("Answer this.", f"Some words first. {planted.question}", row=54_321)
    overlaps = find_overlap(rows, evaluation)  # its time: bench/leakage_speed.py
    assert any(o.train.row == 54_321 and o.evaluation.uid == planted.uid and o.kind == "exact" for o in overlaps)


@pytest.mark.slow
def test_the_guarded_abstracts_and_long_answers_keep_it_fast():
    """The kit's evaluation texts (500 questions, their abstracts and long answers: about 3,200 texts) plus 500
    questions against 100,000 instruction rows, each with its joined prompt and its output (160 words a row)."""
    from medqlora.data import Example

    vocabulary = " ".join(PQAL[p]["LONG_ANSWER"] for p in sorted(PQAL)).split()
    rng = random.Random(0)
    evaluation = guarded_evaluation_items() + [Item("mine", str(i), " ".join(rng.choices(vocabulary, k=30)))
                                               for i in range(500)]
    rows = [Item("0:mine.jsonl", None, "", Example(
        prompt="", response=" ".join(rng.choices(vocabulary, k=40)),
        texts=(("instruction", " ".join(rng.choices(vocabulary, k=30))),
               ("input", " ".join(rng.choices(vocabulary, k=30))))).guard_texts(), i) for i in range(100_000)]
    abstract = next(e for e in evaluation if e.part == "abstract" and e.uid == TEST_IDS[9])
    rows[4_321] = Item("0:mine.jsonl", None, "", (("input", "Notes. " + abstract.question),), 4_321)
    overlaps = find_overlap(rows, evaluation)  # its time: bench/leakage_speed.py
    assert [(o.train.row, o.evaluation.uid, o.evaluation.part) for o in overlaps] == [(4_321, TEST_IDS[9], "abstract")]


# ---------------------------------------------------------------- evaluating an adapter later


@pytest.fixture
def pubmedqa_eval_items():
    from medqlora.config import BenchmarkSpec
    from medqlora.evaluate import load_items

    return load_items(BenchmarkSpec(name="pubmedqa", kind="pubmedqa"), seed=0)


def test_evaluation_refuses_items_trained_on_under_the_same_normalisation(tmp_path, pubmedqa_eval_items):
    from medqlora.evaluate import check_not_trained_on

    item = pubmedqa_eval_items[0]
    variant = "\u200b" + item.example.question.upper().replace(" ", "  ") + "!!"
    trained = tmp_path / "training_items.jsonl"
    trained.write_text(json.dumps({"question_sha1_16": question_hash(variant)}) + "\n")
    with pytest.raises(DataError, match="1 items were trained on by this adapter"):
        check_not_trained_on({"pubmedqa": pubmedqa_eval_items}, trained)


def test_evaluation_refuses_items_a_run_was_allowed_to_train_on(tmp_path, pubmedqa_eval_items):
    """A question hidden in an input field of a run with data.allow_eval_overlap: true is in data_stats.json."""
    from medqlora.evaluate import check_not_trained_on

    item = pubmedqa_eval_items[1]
    trained = tmp_path / "training_items.jsonl"
    trained.write_text(json.dumps({"question_sha1_16": question_hash("Summarise the abstract.")}) + "\n")
    check_not_trained_on({"pubmedqa": pubmedqa_eval_items}, trained)  # nothing recorded yet: accepted
    guard = check([train("Summarise the abstract.", f"Text. {item.example.question} Text.")],
                  [Item("pubmedqa", item.uid, item.example.question)], allow=True)
    (tmp_path / "data_stats.json").write_text(json.dumps({"0:mine.jsonl": {"leakage_guard": guard}}))
    with pytest.raises(DataError, match=f"1 items were trained on by this adapter \\(e.g. \\['{item.uid}'\\]\\)"):
        check_not_trained_on({"pubmedqa": pubmedqa_eval_items}, trained)


def test_a_damaged_training_items_file_is_reported(tmp_path, pubmedqa_eval_items):
    from medqlora.evaluate import check_not_trained_on

    trained = tmp_path / "training_items.jsonl"
    trained.write_text('{"question_sha1_16": "abc"}\n{"truncated\n')
    with pytest.raises(DataError, match="training_items.jsonl:2: not a record"):
        check_not_trained_on({"pubmedqa": pubmedqa_eval_items}, trained)


@pytest.mark.slow
def test_the_guard_settings_reach_the_guard(tmp_path):
    from medqlora.config import DataSection
    from medqlora.data import collect

    question = longest_test_question().question
    paraphrase = " ".join(question.rstrip("?").split()[:-1]) + " in adults?"
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"instruction": "Answer.", "input": paraphrase, "output": "yes"}) + "\n")
    data = DataSection(datasets=[DatasetSpec(source=str(own), format="instruction")])
    with pytest.raises(DataError, match="field 'input' shares"):
        collect(data, seed=0)
    [exact_only] = collect(data.model_copy(update={"near_duplicate_ngram": 0}), seed=0)
    assert exact_only.info["leakage_guard"]["overlapping_training_items"] == 0
    [allowed] = collect(data.model_copy(update={"allow_eval_overlap": True}), seed=0)
    assert allowed.info["leakage_guard"]["near_duplicates"] == 1
