"""Hostile and unlucky inputs of the fifteenth round, leakage guard, adapters and models: an evaluation question in a
training text with its words hyphenated across line breaks (a PDF), in LaTeX markup, or glued together (blanks
removed, or zero-width spaces for blanks); an adapter whose finite weights are so large that B @ A overflows; a
config.json whose vocab_size does not match the embeddings."""

import json
import shutil
from pathlib import Path

import pytest

from medqlora.cli import main
from medqlora.leakage import Item, find_overlap, normalize

from .conftest import assert_one_message, kit_argv, run_cli

QUESTION = ("Do adjuvant aromatase inhibitors increase the cardiovascular risk in postmenopausal women with early "
            "breast cancer?")
DISGUISED = {
    "hyphenated-across-lines": QUESTION.replace("aromatase", "aroma-\ntase").replace("cardiovascular",
                                                                                      "cardio-\n  vascular"),
    "soft-hyphen-at-line-end": QUESTION.replace("postmenopausal", "post\u00ad\nmenopausal"),
    "latex": QUESTION.replace("aromatase inhibitors", "\\textbf{aromatase inhibitors}").replace(
        "breast cancer", "\\emph{\\textit{breast} cancer}").replace("early", "{\\bf early}"),
    "blanks-removed": QUESTION.replace(" ", ""),
    "zero-width-spaces": QUESTION.replace(" ", "\u200b"),
    "glued-inside-a-longer-text": "Case 12. " + QUESTION.replace(" ", "") + " Discuss the evidence.",
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train(*texts: str) -> list[Item]:
    return [Item("0:mine.jsonl", None, text, (("instruction", text),), row) for row, text in enumerate(texts, 1)]


def _evaluation(*questions: str) -> list[Item]:
    return [Item("evalset", f"q{i}", question) for i, question in enumerate(questions)]


# ---------------------------------------------------------------- disguised evaluation questions (57, 59, 62, 65)

@pytest.mark.parametrize("kind", sorted(DISGUISED))
def test_an_evaluation_question_hyphenated_marked_up_or_glued_is_found_exactly(kind):
    [overlap] = find_overlap(_train("What is fever?", DISGUISED[kind]), _evaluation(QUESTION))
    assert (overlap.kind, overlap.train.row, overlap.evaluation.uid) == ("exact", 2, "q0")
    glued = kind in ("blanks-removed", "zero-width-spaces", "glued-inside-a-longer-text")
    assert ("letter for letter (its blanks and punctuation aside)" in overlap.describe()) == glued


@pytest.mark.parametrize("kind", ["hyphenated-across-lines", "zero-width-spaces"])
def test_a_disguised_evaluation_question_is_refused_at_dry_run(kind, tiny_model_dir, tmp_path, capsys):
    filler = [{"instruction": f"What is the treatment of condition number {i} in adults?", "output": f"Answer {i}."}
              for i in range(7)]
    data = _jsonl(tmp_path / "mine.jsonl", filler + [{"instruction": DISGUISED[kind], "output": "Yes."}])
    evalset = _jsonl(tmp_path / "evalset.jsonl", [{"question": QUESTION, "options": {"A": "yes", "B": "no"},
                                                   "answer_idx": "A"}])
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{data}', format: instruction}}]",
        "data.eval_sets": f"[{{source: '{evalset}', format: multiple_choice}}]"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, "1 training examples contain evaluation questions (1 exact, 0 near duplicates)")
    assert "row 8 field 'instruction' contains" in err


@pytest.mark.parametrize("text, words", [
    ("the first-\nline drug", "the firstline drug"),  # joined at a line break only
    ("the first-line drug, 1-\n2 mg, a -\nb", "the first line drug 1 2 mg a b"),  # not between digits or blanks
    ("\\textbf{aromatase} and \\textit[x]{y} \\alpha", "aromatase and y alpha"),
    ("{\\em breast} \\mathrm{mg} \\unknown{kept}", "breast mg unknown kept"),
])
def test_line_breaks_and_latex_markup_are_undone_without_eating_words(text, words):
    assert normalize(text) == words


@pytest.mark.parametrize("training", [
    "Doadjuvantaromatase inhibitors help?",  # glued in part only, short
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a lung disease of miners.",  # a long word, no question
])
def test_glued_text_that_holds_no_long_question_is_not_refused(training):
    assert find_overlap(_train(training), _evaluation(QUESTION, "Is fever common in adults today?")) == []
    # a short question (under 40 letters) is not looked for glued: too likely inside other texts
    assert find_overlap(_train("Case: Isfevercommoninadultstodaywhenthey travel"),
                        _evaluation("Is fever common in adults today?")) == []


# ---------------------------------------------------------------- an adapter whose product overflows (100)

def _scaled_adapter(lora_folder: Path, to: Path, factor: float) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(lora_folder, to)
    weights = to / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: (v + 0.01) * factor for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    return to


def test_an_adapter_whose_finite_weights_overflow_is_refused_naming_it(tiny_model_dir, lora_folder, tmp_path,
                                                                        capsys):
    """Every tensor x1e30: finite weights, B @ A infinite, and the chat answered nothing, exit 0."""
    adapter = _scaled_adapter(lora_folder, tmp_path / "huge", 1e30)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "chat", "--prompt",
                                      "What is fever?", "--adapter", str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {adapter} changes the base model's weights by up to ")
    assert "beyond 65504, the largest 16-bit number" in result.err
    assert "would overflow to infinity" in result.err
    assert "This answer was generated" not in result.out


def test_an_ordinary_adapter_changes_weights_far_below_the_bound(tiny_model_dir, lora_folder, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medqlora.backends.lora import LARGEST_CHANGE, largest_weight_change

    def change(folder: Path) -> tuple[float, str]:
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        return largest_weight_change(PeftModel.from_pretrained(base, str(folder)))

    assert change(lora_folder)[0] == 0.0  # fresh LoRA: B is zeros
    large, where = change(_scaled_adapter(lora_folder, tmp_path / "x100", 100.0))
    assert 1 < large < LARGEST_CHANGE and where.endswith(("q_proj", "v_proj"))


# ---------------------------------------------------------------- config.json's vocab_size (108)

def test_a_config_vocab_size_other_than_the_embeddings_names_the_field(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "cfgvocab"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 100
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "chat", "--prompt", "x", "--adapter",
                                      "none"))
    assert result.code == 2
    assert_one_message(result.err, f"model.name: {model / 'config.json'}: config.json's vocab_size (100) does not "
                                   "match the weights (49152): it describes embed_tokens.weight as [100, 64], but the "
                                   "safetensors files hold it as [49152, 64]. Restore the checkpoint's own "
                                   "config.json (vocab_size 49152).")
    assert "ignore_mismatched_sizes" not in result.err
