"""The leakage guard compares forms of words (leakage_text.compared): an evaluation question asked again with its
plurals, possessives, forms of be/do/have and articles changed, or with digits for look-alike letters inside its words,
is the same question; a question on another topic or with another number is not."""

import pytest

from medqlora.errors import DataError
from medqlora.leakage import check, find_overlap
from medqlora.leakage_text import compared, normalize

from .test_hostile_review15_e import _evaluation, _train

# PubMedQA-style questions (the guard holds the 500 PubMedQA test questions in every run)
ASKED = "Does the patient's statin therapy reduce the risk of stroke in a woman with atrial fibrillation?"
INFLECTED = {
    "plurals-possessive-auxiliary": "Do the patients' statin therapies reduce the risks of stroke in the women "
                                    "with atrial fibrillation?",
    "is-are-and-articles": "Does a patient's statin therapy reduce the risk of stroke in the woman with atrial "
                           "fibrillation?",
    "digit-look-alikes": "D0es the pat1ent's stat1n therapy reduce the r1sk of str0ke in a w0man with atr1al "
                         "f1brillati0n?",
    # a digit after the letters of a word counts in a short word or one with digits inside (not "condition5")
    "digits-at-word-ends": "Do3s th3 pati3nt's 5tatin th3rapy r3duc3 th3 risk 0f str0k3 in a woman with atr1a1 "
                           "fibri11ation?",
    # a long word ending in digits for letters: read as letters where that makes a word of the questions
    "digits-ending-long-words": "Do3s th3 patient5' statin therapie5 reduc3 th3 risk5 of strok3 in a woman with "
                                "atrial fibrillation?",
}


@pytest.mark.parametrize("kind", sorted(INFLECTED))
def test_a_question_asked_in_other_forms_of_its_words_is_refused(kind):
    with pytest.raises(DataError) as err:
        check(_train("What is fever?", INFLECTED[kind]), _evaluation(ASKED), allow=False)
    message = str(err.value)
    assert "1 training examples contain evaluation questions (1 exact, 0 near duplicates)" in message
    assert "row 2 field 'instruction' contains, in other forms of its words (a plural, 'are' for 'is'" in message


def test_a_question_in_other_forms_with_its_article_left_out_is_refused_and_a_word_left_out_reported():
    """Four inflections and one article left out: the same question (an article added or left out is no change),
    refused as an exact copy; with a word of its own left out as well ('atrial'), a possible near copy (a warning),
    refused with data.possible_near_copies: refuse."""
    reworded = "Do the patients' statin therapies reduce the risks of stroke in women with atrial fibrillation?"
    [overlap] = find_overlap(_train(reworded), _evaluation(ASKED))
    assert overlap.kind == "exact" and "an article changed or left out" in overlap.describe()
    shorter = reworded.replace("atrial ", "")
    [overlap] = find_overlap(_train(shorter), _evaluation(ASKED))
    assert overlap.possible and "with one word changed ('atrial' left out)" in overlap.describe()
    result = check(_train(shorter), _evaluation(ASKED), allow=False)
    assert result["possible_near_copies"] == 1
    with pytest.raises(DataError, match="near duplicates"):
        check(_train(shorter), _evaluation(ASKED), allow=False, possible="refuse")


ASSAY = ("Is the affinity column-mediated immunoassay method suitable as an alternative to the microparticle enzyme "
         "immunoassay method as a blood tacrolimus assay?")


@pytest.mark.parametrize("reworded", [
    ASSAY.replace(" an ", " ").replace(" a ", " "),  # only a/an dropped, every 'the' kept
    ASSAY.replace(" a ", " "),
    ASSAY.replace("an alternative", "alternatives"),
    "Are the affinity column-mediated immunoassay methods suitable as alternatives to the microparticle enzyme "
    "immunoassay methods as blood tacrolimus assays?",
], ids=["a-and-an-dropped", "a-dropped", "plural-for-article-and-noun", "plural-throughout"])
def test_articles_dropped_or_a_plural_for_an_article_and_noun_leave_the_question_the_same(reworded):
    """Only a/an dropped, or 'as alternatives' for 'as an alternative' and the like: passed with at most a warning
    (two words left out made a possible near copy); an article added or left out is no change now."""
    [overlap] = find_overlap(_train(reworded), _evaluation(ASSAY))
    assert not overlap.possible, overlap.describe()  # refused (all its words, or most of its 13-word sequences)
    with pytest.raises(DataError, match="1 training examples contain evaluation questions"):
        check(_train(reworded), _evaluation(ASSAY), allow=False)


def test_changed_words_are_shown_as_the_texts_write_them():
    question = ("A 45-year-old man presents with progressive weakness of both legs and a history of recent diarrhea; "
                "which diagnosis fits best?")
    [overlap] = find_overlap(_train(question.replace("legs", "arms").replace("a history", "the history")),
                             _evaluation(question))
    assert "one word changed ('arms' for 'legs')" in overlap.describe()


@pytest.mark.parametrize("other", [
    ASKED.replace("woman", "man"),
    ASKED.replace("stroke", "bleeding"),
    "Does the patient's statin therapy reduce the risk of stroke in a woman with type 2 diabetes?",
])
def test_another_question_on_the_topic_is_not_an_exact_copy(other):
    found = find_overlap(_train(other), _evaluation(ASKED))
    assert all(o.kind != "exact" for o in found)


def test_codes_with_digits_keep_their_digits_apart():
    """H1N1 and H5N1, CYP3A4 and CYP2D6, COVID-19 and B12 stay different words: a digit for a letter becomes that
    letter the same way on both sides; a footnote number that no letter looks like stays."""
    assert compared("H1N1 H5N1 CYP3A4 CYP2D6 covid19 inhibitors23 b12") == \
        ["hini", "hsni", "cypeaa", "cyp2d6", "covid19", "inhibitor23", "b12"]
    # a label's number after a long word stays a number: "condition5" is not "conditions", "grade3" not "gradee"
    assert compared("condition5 grade3 str0k3 th3 I5 5tatin") == ["condition5", "grade3", "stroke", "the", "be", "statin"]
    found = find_overlap(_train("Is oseltamivir effective against H5N1 influenza in children under five years?"),
                         _evaluation("Is oseltamivir effective against H1N1 influenza in children under five years?"))
    assert all(o.kind != "exact" for o in found)


def test_a_label_number_the_question_shares_stays_a_number():
    """A training word read with its end digits as letters only where that makes a word of the questions: a short
    question on "condition5" is matched by "condition5", not by "conditions" (another label); "grade3" by itself."""
    short = "Is condition5 treatable?"
    assert [o.kind for o in find_overlap(_train("Is condition5 treatable?"), _evaluation(short))] == ["exact"]
    assert find_overlap(_train("Are conditions treatable?"), _evaluation(short)) == []
    assert [o.kind for o in find_overlap(_train("Is strok3 treatable?"), _evaluation("Is stroke treatable?"))] == \
        ["exact"]
    assert find_overlap(_train("Is grade3 treatable?"), _evaluation("Is grade treatable?")) == []


def test_only_the_guard_compares_forms():
    """normalize (scoring of answers, GRPO rewards) keeps every word as written: the answer 'A' stays."""
    assert normalize("A") == "a" and normalize("Are the studies done?") == "are the studies done"
    assert compared("Are the studies done?") == ["be", "the", "study", "do"]


SCRIPTS = {"cherokee": (("\u13a0", "\u13ff"), ("\uab70", "\uabbf")), "lisu": (("\ua4d0", "\ua4ff"),)}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_question_in_look_alike_letters_of_other_scripts_is_refused(script):
    """Cherokee (Ꭺ Ᏼ Ꮯ) and Lisu (ꓮ ꓐ ꓚ) letters look like Latin ones and NFKC leaves them: Unicode's confusables
    make them Latin for the guard."""
    from medqlora.confusable_letters import LOOK_ALIKES

    drawn = {letter: char for letter, chars in LOOK_ALIKES.items() for char in chars
             if any(low <= char <= high for low, high in SCRIPTS[script])}
    fancy = "".join(drawn.get(c, c) for c in ASKED.lower())
    assert sum(c != d for c, d in zip(fancy, ASKED.lower())) > 40 and normalize(fancy) == normalize(ASKED)
    with pytest.raises(DataError, match="1 exact"):
        check(_train("What is fever?", fancy), _evaluation(ASKED), allow=False)
