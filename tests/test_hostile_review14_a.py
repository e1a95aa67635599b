"""Hostile and unlucky inputs of the fourteenth round, leakage guard and data folders: an evaluation question in the
markup of a scraped page (HTML tags, URL percent-encoding), a question of 13 to 25 words with a word misspelt or
changed in its middle (which breaks every 13-word sequence holding it), and a training folder holding a held-out split
spelt `holdout` or `hold_out`."""

import hashlib
import json
from pathlib import Path

import pytest

from medqlora.cli import main
from medqlora.config import DatasetSpec
from medqlora.data import format_rows
from medqlora.errors import DataError
from medqlora.leakage_text import question_hash
from medqlora.leakage import Item, check, find_overlap, normalize

from .conftest import assert_one_message, kit_argv

QUESTION_13 = "Which enzyme deficiency causes the lysosomal storage disorder seen in patient group alpha?"
VIGNETTE_20 = ("A 45-year-old man presents with progressive weakness of both legs and a history of recent diarrhea; "
               "which diagnosis fits best?")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _filler(n: int) -> list[dict]:
    return [{"instruction": f"What is the treatment of condition number {i} in adults?", "output": f"Answer {i}."}
            for i in range(n)]


def _mcq(question: str) -> dict:
    return {"question": question, "options": {"A": "hexosaminidase", "B": "glucocerebrosidase"}, "answer_idx": "B"}


def _train(*texts: str) -> list[Item]:
    return [Item("0:mine.jsonl", None, text, (("instruction", text),), row) for row, text in enumerate(texts, 1)]


def _evaluation(*questions: str) -> list[Item]:
    return [Item("evalset", f"q{i}", question) for i, question in enumerate(questions)]


# ---------------------------------------------------------------- markup of scraped pages (23, 28)

MARKED_UP = {
    "html-tags": "<p>Which <b>enzyme</b> deficiency causes the lysosomal storage disorder seen in patient group "
                 "alpha?</p>",
    "html-attributes-and-breaks": '<div class="q"><span style="x">Which enzyme deficiency</span><br/>causes the '
                                  "lysosomal storage disorder <!-- cut -->seen in patient group alpha?</div>",
    "html-escaped-tags": "&lt;p&gt;Which &lt;i&gt;enzyme&lt;/i&gt; deficiency causes the lysosomal storage disorder "
                         "seen in patient group alpha?&lt;/p&gt;",
    "percent-encoded": "Which%20enzyme%20deficiency%20causes%20the%20lysosomal%20storage%20disorder%20seen%20in"
                       "%20patient%20group%20alpha%3F",
    "percent-encoded-tags": "%3Cp%3EWhich+enzyme+deficiency+causes+the+lysosomal+storage+disorder+seen+in+patient"
                            "+group+alpha%3F%3C%2Fp%3E",
}


def test_an_evaluation_question_in_html_markup_is_refused_at_dry_run(tiny_model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "lk_htmltag.jsonl", _filler(20) + [{"instruction": MARKED_UP["html-tags"],
                                                                  "output": "B. glucocerebrosidase"}])
    evalset = _jsonl(tmp_path / "evalset.jsonl", [_mcq(QUESTION_13)])
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{data}', format: instruction}}]",
        "data.eval_sets": f"[{{source: '{evalset}', format: multiple_choice}}]"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, "1 training examples contain evaluation questions (1 exact, 0 near duplicates)")
    assert f"row 21 field 'instruction' contains evaluation '{evalset}' item" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("kind", sorted(MARKED_UP))
def test_an_evaluation_question_in_any_markup_of_a_scraped_page_is_found_exactly(kind):
    [overlap] = find_overlap(_train("What is fever?", MARKED_UP[kind]), _evaluation(QUESTION_13))
    assert (overlap.kind, overlap.train.row, overlap.evaluation.uid) == ("exact", 2, "q0")
    # the same markup on the evaluation side is undone too
    [overlap] = find_overlap(_train(QUESTION_13), _evaluation(MARKED_UP[kind]))
    assert overlap.kind == "exact"


@pytest.mark.parametrize("text, words", [
    ("Patients with<or =5 metastatic sites vs with>5 lesions", "patients with or 5 metastatic sites vs with 5 lesions"),
    ("p<0.05 and <p = 0.1> in a <b and", "p 0 05 and p 0 1 in a b and"),  # prose, not tags
    ("H<sub>2</sub>O and CO<sub>2</sub>", "h2o and co2"),  # inline tags join the letters they split
    ("reduced by 50%41 and 10%", "reduced by 50 41 and 10"),  # %41 is no encoded 'A': an encoder leaves letters
    ("caf%C3%A9 au lait spots", "cafe au lait spots"),
])
def test_markup_is_undone_without_eating_prose(text, words):
    assert normalize(text) == words


def test_the_shipped_questions_read_as_before_so_recorded_question_hashes_still_match():
    texts = [row["QUESTION"] for row in json.loads(Path("data/pubmedqa/ori_pqal.json").read_text()).values()]
    texts += [row["question"] for row in map(json.loads, Path("data/medmcqa/heldout.jsonl").read_text().splitlines())]
    marked = [text for text in texts if "<" in text or "%" in text or "&" in text]
    assert marked  # p<0.05, 10%, ... are there, and read as plain prose
    plain = {text: " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) for text in marked
             if text.isascii()}
    assert all(question_hash(text) == hashlib.sha1(words.encode()).hexdigest()[:16] for text, words in plain.items())


# ---------------------------------------------------------------- a word changed in the middle (29, 30)

@pytest.mark.parametrize("evaluation, training, shown", [
    (QUESTION_13, QUESTION_13.replace("lysosomal", "lysosomol"), "one word misspelt ('lysosomol' for 'lysosomal')"),
    (VIGNETTE_20, VIGNETTE_20.replace("weakness", "weaknes"), "one word misspelt ('weaknes' for 'weakness')"),
    (VIGNETTE_20, VIGNETTE_20.replace("weakness", "weaknes").replace("history", "histroy"),
     "two words misspelt ('weaknes' for 'weakness', 'histroy' for 'history')"),
    (VIGNETTE_20, VIGNETTE_20.replace("both legs", "both arms"), "one word changed ('arms' for 'legs')"),
    (VIGNETTE_20, VIGNETTE_20.replace("both legs", "both lower legs"), "one word changed ('lower' added)"),
    (VIGNETTE_20, "Case: " + VIGNETTE_20.replace("progressive", "progresive") + " Explain.",
     "one word misspelt ('progresive' for 'progressive')"),
])
def test_a_question_with_a_word_misspelt_or_changed_in_its_middle_is_refused(evaluation, training, shown):
    with pytest.raises(DataError) as err:
        check(_train("What is fever?", training), _evaluation(evaluation), allow=False)
    message = str(err.value)
    assert "1 training examples contain evaluation questions (0 exact, 1 near duplicates)" in message
    assert f"training '0:mine.jsonl' row 2 field 'instruction' contains, with {shown}, evaluation 'evalset' item q0" \
        in message, message


@pytest.mark.parametrize("evaluation, training", [
    # two questions on one topic, two words apart
    ("Which of the following is the most common cause of community-acquired pneumonia in adults?",
     "Which of the following is the most common cause of community-acquired meningitis in children?"),
    # a 13-word question with one other word (not a misspelling) in its middle
    (QUESTION_13, QUESTION_13.replace("lysosomal", "glycogen")),
    # a 20-word vignette with two other findings
    (VIGNETTE_20, VIGNETTE_20.replace("weakness", "numbness").replace("diarrhea", "vaccination")),
    # medical words one letter apart are not misspellings of short words
    ("Is there a connection between type 1 diabetes and sublingual varices in adults?",
     "Is there a connection between type 2 diabetes and sublingual varices in adults?"),
])
def test_two_different_questions_on_the_same_topic_are_not_refused_but_reported(evaluation, training):
    """One or two other words: another question, or the same one reworded; the guard cannot tell, so it warns (and
    refuses only with data.possible_near_copies: refuse)."""
    result = check(_train(training), _evaluation(evaluation), allow=False)
    assert result["possible_near_copies"] == 1
    assert "1 training examples hold an evaluation question with one or two words replaced by other words" in result["warning"]
    assert "set data.possible_near_copies: refuse" in result["warning"]
    with pytest.raises(DataError, match="possible near copies .* data.possible_near_copies is refuse"):
        check(_train(training), _evaluation(evaluation), allow=False, possible="refuse")


def test_the_shipped_medmcqa_split_passes_the_guard_that_made_it():
    spec = DatasetSpec(source="train.jsonl", format="multiple_choice")
    rows = [json.loads(line) for line in Path("data/medmcqa/train.jsonl").read_text().splitlines()]
    train = [Item("train", str(i), ex.question, ex.guard_texts(), i) for i, ex in enumerate(format_rows(spec, rows))]
    held = [json.loads(line) for line in Path("data/medmcqa/heldout.jsonl").read_text().splitlines()]
    assert find_overlap(train, [Item("heldout", row["realidx"], row["question"]) for row in held]) == []
    # a possible near copy of a held-out stem ('structure' added) is held out with it
    assert sum("is not removed in radical neck dissection" in row["question"] for row in held) == 2
    # the near copy the alignment found (one word left out of a 30-word question) is in the held-out part
    copies = [row for row in held if "retroperitoneal mass. Peripheral smear findings were normal" in row["question"]]
    assert len(copies) == 2


# ---------------------------------------------------------------- held-out files in a training folder (111, 116)

def _rows(n: int, tag: str) -> str:
    return "".join(json.dumps({"instruction": f"{tag} question {i}?", "output": f"{tag} answer {i}."}) + "\n"
                   for i in range(n))


def _dry_run_folder(tiny_model_dir, tmp_path, folder: Path) -> int:
    return main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{folder}', format: instruction}}]"}))


@pytest.mark.parametrize("held_out", ["holdout.jsonl", "hold_out.jsonl", "Hold-Out.jsonl", "held_out_set.jsonl",
                                      "medqa_test.jsonl", "valSet.jsonl", "evaluation2.jsonl", "holdouts/part.jsonl",
                                      "my data/testing split.jsonl"])
def test_a_training_folder_holding_a_held_out_split_by_any_spelling_is_refused(tiny_model_dir, tmp_path, capsys,
                                                                              held_out):
    folder = tmp_path / "splits"
    (folder / held_out).parent.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text(_rows(5, "train"))
    (folder / held_out).write_text(_rows(3, "held-out"))
    assert _dry_run_folder(tiny_model_dir, tmp_path, folder) == 2
    assert_one_message(capsys.readouterr().err, f"holds files named as a held-out split ({held_out})")


def test_a_training_folder_whose_names_only_contain_those_letters_is_read_whole(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("train.jsonl", "latest_notes.jsonl", "device_faq.jsonl", "intervals.jsonl", "household.jsonl",
                 "evaluator_guide.jsonl", "protest-00001.jsonl"):
        (folder / name).write_text(_rows(2, name))
    assert _dry_run_folder(tiny_model_dir, tmp_path, folder) == 0, capsys.readouterr().err
