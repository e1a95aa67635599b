"""Hostile and unlucky inputs: two list-valued columns for one field, numbers and signs as GRPO answers, cache
variables that cannot be cache folders, two reasoning formats in one run, a copy of the training file as the
validation set, a full run with nothing to evaluate, an empty benchmark name, and lm-eval settings without
eval.harness."""

import json
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _dry_run(capsys, model: Path, tmp_path: Path, *args: str, **settings: str):
    return run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run", *args, **settings))


def _chat(i: int, user: str, assistant: str, layout: str) -> list[dict]:
    if layout == "messages":
        return [{"role": "user", "content": f"{user} {i}?"}, {"role": "assistant", "content": f"{assistant} {i}."}]
    return [{"from": "human", "value": f"{user} {i}?"}, {"from": "gpt", "value": f"{assistant} {i}."}]


def test_two_different_conversations_in_one_row_are_refused_and_one_conversation_in_both_layouts_is_read(
        tiny_model_dir, tmp_path, capsys):
    differ = [{"messages": _chat(i, "What is drug", "It is a painkiller", "messages"),
               "conversations": _chat(i, "Tell me about toxin", "It is deadly", "sharegpt")} for i in range(12)]
    base = {"data.datasets.0.format": "chat"}
    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **base,
                       **{"data.datasets.0.source": str(_jsonl(tmp_path / "both.jsonl", differ))})
    assert refused.code == 2
    assert_one_message(refused.err, "both.jsonl row 1: columns 'messages' and 'conversations' can each be")
    chosen = _dry_run(capsys, tiny_model_dir, tmp_path, **base, **{
        "data.datasets.0.source": str(tmp_path / "both.jsonl"), "data.datasets.0.columns": "{messages: conversations}"})
    assert chosen.code == 0, chosen.err
    same = [{"messages": _chat(i, "What is drug", "It is a painkiller", "messages"),
             "conversations": _chat(i, "What is drug", "It is a painkiller", "sharegpt")} for i in range(12)]
    ok = _dry_run(capsys, tiny_model_dir, tmp_path, **base,
                  **{"data.datasets.0.source": str(_jsonl(tmp_path / "same.jsonl", same))})
    assert ok.code == 0, ok.err


def test_pubmedqa_context_beside_a_different_contexts_list_is_refused():
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.formats import FORMATS

    spec = DatasetSpec(source="x.jsonl", format="pubmedqa")
    row = {"question": "Q?", "final_decision": "yes", "long_answer": "la", "pubid": "1",
           "context": {"contexts": ["ctx a"], "labels": ["BACKGROUND"]}}
    with pytest.raises(DataError, match="columns 'context' and 'CONTEXTS' can each be"):
        FORMATS["pubmedqa"]({**row, "CONTEXTS": ["other context"]}, spec)
    assert "ctx a" in FORMATS["pubmedqa"]({**row, "CONTEXTS": [" ctx a "]}, spec).context


def test_a_grpo_answer_written_as_a_json_number_is_compared_as_written(tmp_path):
    from medqlora.config import DatasetSpec
    from medqlora.data.sources import _read_jsonl
    from medqlora.formats import FORMATS
    from medqlora.rewards import ANSWER, answer_match

    source = tmp_path / "numbers.jsonl"
    source.write_text("".join(f'{{"prompt": "Dose {i} in mg?", "answer": {written}}}\n'
                              for i, written in enumerate(["1.50", "2.0", "1e3", "0.10", "7"])))
    spec = DatasetSpec(source=str(source), format="prompt_answer")
    answers = [FORMATS["prompt_answer"](row, spec).response for row in _read_jsonl(source)]
    assert answers == ["1.50", "2.0", "1e3", "0.10", "7"]
    assert answer_match(["1.50 mg", "The answer is 2.0"], [ANSWER] * 2, answers[:2]) == [1.0, 1.0]


@pytest.mark.parametrize("answer", ["+", "-", " ? "])
def test_a_grpo_answer_without_a_letter_or_digit_is_refused(answer):
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.formats import FORMATS

    spec = DatasetSpec(source="x.jsonl", format="prompt_answer")
    with pytest.raises(DataError, match="holds no letter or digit: the answer reward"):
        FORMATS["prompt_answer"]({"prompt": "Test result (write + or -)?", "answer": answer}, spec)
    assert FORMATS["prompt_answer"]({"prompt": "Test result?", "answer": "positive"}, spec).response == "positive"


@pytest.mark.parametrize("variable,value,fragment", [
    ("XDG_CACHE_HOME", "{notes}", "XDG_CACHE_HOME: {notes} cannot be a cache folder: it is not a folder"),
    ("HF_HOME", "  ", "HF_HOME is set but blanks only ('  '): the Hugging Face libraries would then keep their cache"),
    ("HF_DATASETS_CACHE", "", "HF_DATASETS_CACHE is set but empty"),
    ("HF_DATASETS_CACHE", "/proc/medqlora-cache", "HF_DATASETS_CACHE: /proc/medqlora-cache cannot be a cache folder: "
                                                  "it cannot be created"),
])
def test_cache_variables_that_cannot_be_the_cache_are_refused_at_the_start(tiny_model_dir, tmp_path, capsys,
                                                                           monkeypatch, variable, value, fragment):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv(variable, value.format(notes=notes))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train"))
    assert result.code == 2
    assert_one_message(result.err, fragment.format(notes=notes))


def test_a_cache_folder_to_be_made_is_accepted_and_not_left_behind(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache" / "datasets"))
    assert run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train")).code == 0
    assert not (tmp_path / "cache").exists()


def _o1_rows(n: int = 8) -> list[dict]:
    return [{"Question": f"A patient with symptom number {i} needs which test?", "Complex_CoT": f"Think about {i}.",
             "Response": f"Test {i}."} for i in range(n)]


def test_two_reasoning_formats_in_one_run_are_refused(tiny_model_dir, tmp_path, capsys):
    first, second = _jsonl(tmp_path / "a.jsonl", _o1_rows()), _jsonl(tmp_path / "b.jsonl", _o1_rows()[::-1])
    def entries(style: str) -> str:
        return (f"[{{source: {first}, format: medical_o1, cot_style: huatuo}}, "
                f"{{source: {second}, format: medical_o1, cot_style: {style}}}]")

    refused = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "full",
                       **{"data.datasets": entries("tags"), "data.val_ratio": "0.25"})
    assert refused.code == 2
    assert_one_message(refused.err, "data.datasets.0 (cot_style: huatuo) and data.datasets.1 (cot_style: tags) teach "
                                    "two reasoning formats in one run")
    same = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "full",
                    **{"data.datasets": entries("huatuo"), "data.val_ratio": "0.25"})
    assert same.code == 0, same.err


def test_a_copy_of_the_training_file_as_the_validation_set_is_refused(tiny_model_dir, tmp_path, capsys):
    rows = [{"instruction": f"What is the usual adult dose of drug number {i}?", "output": f"{i} mg daily."}
            for i in range(12)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    copy = _jsonl(tmp_path / "copy.jsonl", rows)
    other = _jsonl(tmp_path / "other.jsonl", [{**row, "output": row["output"].upper()} for row in rows])

    def entries(validation: Path) -> str:
        return (f"[{{source: {train}, format: instruction}}, "
                f"{{source: {validation}, format: instruction, use_for: validation}}]")

    refused = _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets": entries(copy)})
    assert refused.code == 2
    assert_one_message(refused.err, f"data.datasets.1 (use_for: validation) reads {copy}, a copy of {train} (the same "
                                    "bytes), which data.datasets.0 trains on")
    assert _dry_run(capsys, tiny_model_dir, tmp_path, **{"data.datasets": entries(other)}).code == 0


def test_a_full_run_with_nothing_to_evaluate_says_so_and_plans_no_evaluation_files(tiny_model_dir, tmp_path, capsys):
    nothing = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "full", **{"eval.benchmarks": "[]"})
    assert nothing.code == 0, nothing.err
    assert "warning: --mode full evaluates nothing here: eval.benchmarks is empty" in nothing.err
    plan = json.loads(nothing.out)
    assert plan["evaluation"] == []
    assert "eval_report.md" not in plan["outputs"] and "eval.json" not in plan["outputs"]
    assert "evaluation report" not in plan["processes"]["ranks"][0]["writes"]
    scored = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "full")
    assert scored.code == 0, scored.err
    assert "evaluates nothing" not in scored.err and "eval_report.md" in json.loads(scored.out)["outputs"]


@pytest.mark.parametrize("name", ['""', '"  "', '"\u200b"'])
def test_an_empty_benchmark_name_is_refused(tiny_model_dir, tmp_path, capsys, name):
    result = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "full", **{"eval.benchmarks.0.name": name})
    assert result.code == 2
    assert_one_message(result.err, "eval.benchmarks.0.name")
    assert "the benchmark's name is " in result.err and "Give it a name (e.g. name: pubmedqa)" in result.err


def test_lm_eval_settings_without_eval_harness_are_said_unused(tiny_model_dir, tmp_path, capsys):
    settings = {"eval.lm_eval.tasks": "[medqa]", "eval.lm_eval.max_items": "3", "eval.benchmarks.0.max_items": "2"}
    said = ("eval.lm_eval.max_items and eval.lm_eval.tasks are settings of eval.harness: lm-eval, which is not set: "
            "they are unused")
    for mode in (["--mode", "eval", "--adapter", "none"], ["--mode", "full"]):
        plan = _dry_run(capsys, tiny_model_dir, tmp_path, *mode, **settings)
        assert plan.code == 0, plan.err
        assert any(said in note for note in json.loads(plan.out)["unused"])
    run = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--adapter", "none", **settings))
    assert run.code == 0, run.err
    assert f"warning: {said}" in run.out + run.err
    used = _dry_run(capsys, tiny_model_dir, tmp_path, "--mode", "eval", "--adapter", "none",
                    **{**settings, "eval.harness": "lm-eval", "eval.lm_eval.tasks": "[pubmedqa]"})
    assert used.code == 0, used.err
    assert "unused" not in json.loads(used.out)
