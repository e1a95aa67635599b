"""Hostile round 16, leakage guard: an evaluation question in a training text with its blanks moved in ways no rule of
the markup clean-up names (a word broken across lines without a hyphen, letters spaced out), or inside Markdown links
whose addresses add words."""

import pytest

from medqlora.leakage import find_overlap, normalize

from .test_hostile_review15_e import QUESTION, _evaluation, _train

MOVED_BLANKS = {
    "one-word-broken-without-hyphen": QUESTION.replace("cardiovascular", "cardio\nvascular"),
    "two-words-broken-without-hyphen": QUESTION.replace("aromatase", "aroma\ntase").replace("cardiovascular",
                                                                                             "cardio\nvascular"),
    "letter-spaced": "   ".join(" ".join(word) for word in QUESTION.split()),
    "blank-inside-every-long-word": " ".join(w[:3] + " " + w[3:] if len(w) > 6 else w for w in QUESTION.split()),
    "partly-glued-inside-a-longer-text": "Notes: " + QUESTION.replace("adjuvant aromatase", "adjuvantaromatase")
                                         .replace("breast cancer", "breastcancer") + " See the review.",
    "punctuation-between-letters": QUESTION.replace("aromatase", "a.r.o.m.a.t.a.s.e"),
}
MARKDOWN = {
    "inline-link-absolute-url": QUESTION.replace(
        "aromatase inhibitors", "[aromatase inhibitors](https://en.wikipedia.org/wiki/Aromatase_inhibitor)"),
    "reference-link": QUESTION.replace("aromatase inhibitors", "[aromatase inhibitors][1]")
                      + "\n\n[1]: https://example.org/ai \"Aromatase inhibitors\"",
    "image-and-title": QUESTION.replace("breast cancer", "![breast cancer](https://x.org/b.png \"breast tumour\")"),
}


@pytest.mark.parametrize("kind", sorted(MOVED_BLANKS))
def test_an_evaluation_question_with_its_blanks_moved_is_found_letter_for_letter(kind):
    [overlap] = find_overlap(_train("What is fever?", MOVED_BLANKS[kind]), _evaluation(QUESTION))
    assert (overlap.kind, overlap.train.row, overlap.evaluation.uid) == ("exact", 2, "q0")
    assert "letter for letter (its blanks and punctuation aside)" in overlap.describe()


@pytest.mark.parametrize("kind", sorted(MARKDOWN))
def test_an_evaluation_question_inside_markdown_links_is_found_exactly(kind):
    [overlap] = find_overlap(_train(MARKDOWN[kind]), _evaluation(QUESTION))
    assert (overlap.kind, overlap.share) == ("exact", 1.0)


@pytest.mark.parametrize("training", [
    # one letter other than the question's: another question (type 1 for type 2), not a copy
    QUESTION.replace("early", "late").replace(" ", ""),
    "Do adjuvant aromatase inhibitors increase the cardiovascular risk in postmenopausal men with early breast cancer?",
    # the question's first words and last words, glued, with others between them
    "Doadjuvantaromataseinhibitors lower bone density in postmenopausalwomenwithearlybreastcancer?",
])
def test_letters_other_than_the_questions_are_not_a_copy(training):
    # "men" for "women": one other word, a possible near copy (reported, not refused); never a letter-for-letter one
    assert all(o.possible and not o.glued for o in find_overlap(_train(training), _evaluation(QUESTION)))


def test_a_run_of_letters_many_questions_start_with_does_not_hide_a_copy():
    """Thirty questions that start alike ("Which of the following is the most likely..."): the keys they share are
    not indexed, the copy is found by the keys after them."""
    stems = [f"Which of the following is the most likely diagnosis of patient number {i} with fever and rash"
             for i in range(30)]
    glued = stems[17].replace(" ", "")
    [overlap] = find_overlap(_train("Case: " + glued + " today."), _evaluation(*stems))
    assert overlap.evaluation.uid == "q17" and overlap.glued


@pytest.mark.parametrize("text, expected", [
    ("see [the trial](https://x.org/a_(b)) now", "see the trial now"),
    ("a [b] c [d]: e", "a b c d e"),  # brackets that are no link stay words
    ("[1]: https://example.org/ai\nkept line", "kept line"),
])
def test_markdown_link_addresses_are_removed_and_their_text_kept(text, expected):
    assert normalize(text) == expected
