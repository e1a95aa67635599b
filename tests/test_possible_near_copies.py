"""Near copies of an evaluation question with words replaced, added or misspelt (overlap_near.py): misspellings are
refused (three in a 16-word question; one in a 6-word one), one or two other words are a *possible* near copy, reported
in a warning (the guard cannot tell a reworded copy from another question on the topic) and refused with
data.possible_near_copies: refuse."""

import json
from pathlib import Path

import pytest

from medqlora.cli import main
from medqlora.errors import DataError
from medqlora.leakage import check, find_overlap

from .conftest import assert_one_message, kit_argv
from .test_hostile_review15_e import QUESTION, _evaluation, _train

# PubMedQA test question 18041059 (16 words), which every run's guard holds
REWORDED = {
    "one-word-replaced": QUESTION.replace("risk", "hazard"),
    "two-words-added": QUESTION.replace("risk in", "risk, if any, in"),
    "one-word-left-out": QUESTION.replace("adjuvant ", ""),
}


def test_three_misspelt_words_in_a_16_word_question_are_refused():
    misspelt = (QUESTION.replace("aromatase", "aromatse").replace("cardiovascular", "cardiovasculr")
                .replace("postmenopausal", "postmenapausal"))
    with pytest.raises(DataError) as err:
        check(_train("What is fever?", misspelt), _evaluation(QUESTION), allow=False)
    assert "contains, with 3 words misspelt ('aromatse' for 'aromatase', 'cardiovasculr' for 'cardiovascular', " \
           "'postmenapausal' for 'postmenopausal')" in str(err.value)


def test_four_misspelt_words_in_a_16_word_question_are_beyond_the_check():
    """At most three changed words are looked for (one in five of a 15-19-word question)."""
    misspelt = (QUESTION.replace("aromatase", "aromatse").replace("cardiovascular", "cardiovasculr")
                .replace("postmenopausal", "postmenapausal").replace("inhibitors", "inhibitrs"))
    assert find_overlap(_train(misspelt), _evaluation(QUESTION)) == []


def test_a_misspelt_word_in_a_six_word_question_is_refused():
    """The shipped MedMCQA dev set asks "Palatine process began to fuse at" and "Palatine process begins to fuse
    at:": both are held out."""
    [overlap] = find_overlap(_train("Palatine process begins to fuse at:"), _evaluation("Palatine process began to fuse at"))
    assert not overlap.possible
    assert "with one word misspelt ('begins' for 'began')" in overlap.describe()


@pytest.mark.parametrize("kind", sorted(REWORDED))
def test_a_reworded_question_is_reported_as_a_possible_near_copy(kind):
    result = check(_train("What is fever?", REWORDED[kind]), _evaluation(QUESTION), allow=False)
    assert result["overlapping_training_items"] == 0 and result["possible_near_copies"] == 1
    [recorded] = result["possible"]
    assert (recorded["row"], recorded["evaluation_uid"], recorded["field"]) == (2, "q0", "instruction")
    assert "training '0:mine.jsonl' row 2 field 'instruction' contains, with " in result["warning"]
    with pytest.raises(DataError) as err:
        check(_train("What is fever?", REWORDED[kind]), _evaluation(QUESTION), allow=False, possible="refuse")
    assert "1 training examples contain evaluation questions (0 exact, 1 near duplicates)" in str(err.value)


def test_three_other_words_are_no_possible_near_copy():
    other = QUESTION.replace("risk", "hazard").replace("early", "late").replace("women", "men")
    assert find_overlap(_train(other), _evaluation(QUESTION)) == []


def test_one_other_word_in_a_seven_word_question_is_not_reported():
    """Decided: under 8 words one other word makes another question too often (the shipped MedMCQA set asks "Which of
    the following is microaerophilic" and, in training, four questions with another last word)."""
    assert find_overlap(_train("Is anorectal endosonography useful in dyschesia?"),
                        _evaluation("Is anorectal endosonography valuable in dyschesia?")) == []


def _instruction_data(path: Path, question: str) -> Path:
    rows = [{"instruction": f"What is the usual dose of drug number {i} in adults?", "output": "no"} for i in range(20)]
    rows.append({"instruction": question, "output": "yes"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_run_on_a_possible_near_copy_trains_and_says_so(tiny_model_dir, tmp_path, capsys):
    data = _instruction_data(tmp_path / "reworded.jsonl", REWORDED["one-word-replaced"])
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **{
        "data.datasets": f"[{{source: '{data}', format: instruction}}]", "training.max_steps": "1"}))
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: 1 training examples hold an evaluation question with one or two words replaced by other words" in out
    assert "row 21 field 'instruction' contains, with one word changed ('hazard' for 'risk'), evaluation " \
           "'pubmedqa-test' item 18041059" in out
    [run] = (tmp_path / "out").iterdir()
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["total"]["warnings"][0].startswith("1 training examples hold an evaluation question")
    assert next(iter(stats.values()))["leakage_guard"]["possible"][0]["evaluation_uid"] == "18041059"
    assert "hold an evaluation question with one or two words replaced by other words" in (run / "run.log").read_text()


def test_possible_near_copies_refuse_stops_the_dry_run(tiny_model_dir, tmp_path, capsys):
    data = _instruction_data(tmp_path / "reworded.jsonl", REWORDED["two-words-added"])
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{data}', format: instruction}}]", "data.possible_near_copies": "refuse"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, "contains, with two words changed ('if any' added)")
    assert "data.possible_near_copies is refuse: set it to warn if they are different questions" in err


def test_possible_near_copies_takes_warn_or_refuse_only(tiny_model_dir, tmp_path, capsys):
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.possible_near_copies": "ignore"}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, "data.possible_near_copies")
