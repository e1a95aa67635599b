"""Hostile round 17, leakage guard: an evaluation question in a training text with a paper's reference markers in it
([3], [1,2], <sup>3</sup>, footnote numbers glued to words) or with every blank written out as an escape (\\n)."""

import pytest

from medqlora.leakage import find_overlap, normalize

from .test_hostile_review15_e import QUESTION, _evaluation, _train

MARKED = {
    "bracketed-references": QUESTION.replace("inhibitors", "inhibitors [3]").replace("cancer?", "cancer [1,2]?"),
    "reference-range": QUESTION.replace("risk", "risk [4-6]").replace("women", "women [7\u20139]"),
    "html-superscript-reference": QUESTION.replace("women", "women<sup>3</sup>"),
    "escapes-written-out": QUESTION.replace(" ", "\\n"),
    "tabs-written-out": QUESTION.replace(" ", "\\t"),
}


@pytest.mark.parametrize("kind", sorted(MARKED))
def test_a_question_with_reference_markers_or_written_out_escapes_is_an_exact_copy(kind):
    [overlap] = find_overlap(_train("What is fever?", MARKED[kind]), _evaluation(QUESTION))
    assert (overlap.kind, overlap.train.row) == ("exact", 2)


@pytest.mark.parametrize("marked", [
    QUESTION.replace("inhibitors", "inhibitors2").replace("women", "women1"),  # PDF text: footnotes glued
    QUESTION.replace("women", "women\u00b3"),  # a superscript three, which NFKC makes a digit
])
def test_footnote_numbers_glued_to_words_count_as_misspellings(marked):
    [overlap] = find_overlap(_train(marked), _evaluation(QUESTION))
    assert overlap.kind == "near duplicate" and not overlap.possible
    assert overlap.changes.misspelt and any(change.startswith("'women") for change in overlap.changes.shown)


def test_a_superscript_after_a_unit_is_kept():
    """kg/m<sup>2</sup> is kg/m2, as a question typed without markup writes it; a number in brackets that is no
    reference ([2] after a word of one letter) is still removed, on both sides alike."""
    assert normalize("a BMI over 30 kg/m<sup>2</sup>") == normalize("a BMI over 30 kg/m2") == "a bmi over 30 kg m2"


def test_short_words_with_digits_are_no_footnotes():
    """IL6 / IL8, CD4 / CD8: two questions (the word without the number shorter than a misspelling's), reported as a
    possible near copy only."""
    question = "Is the serum level of il6 raised in children with severe sepsis and shock?"
    [overlap] = find_overlap(_train(question.replace("il6", "il8")), _evaluation(question))
    assert overlap.possible and overlap.changes.shown == ("'il8' for 'il6'",)
