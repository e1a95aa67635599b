"""eval.harness: lm-eval: lm-evaluation-harness tasks built from local files, run on the kit's loaded model."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from medqlora import distributed, harness
from medqlora.config import BenchmarkSpec, load_config
from medqlora.errors import ConfigError, DataError
from medqlora.evaluate import load_items

from .conftest import assert_one_message, kit_argv, only_run, run_cli, run_kit, run_tiny, tiny_overrides

# requirements-dev.txt installs it; without it only the not-installed refusal can be tested
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason='lm-evaluation-harness is the eval extra: pip install "medqlora[eval]"')

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MMLU_ROWS = [
    ["Which bone is the longest in the human body?", "Femur", "Tibia", "Humerus", "Radius", "A"],
    ["The heart has how many chambers?", "Two", "Three", "Four", "Five", "C"],
    ["Which nerve innervates the diaphragm?", "Vagus", "Phrenic", "Accessory", "Hypoglossal", "B"],
]


def harness_cfg(model_dir: Path, out: Path, *settings: str):
    return load_config(None, tiny_overrides(model_dir, out) + ["eval.harness=lm-eval", *settings])


def mmlu_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    with (folder / "anatomy_test.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(MMLU_ROWS)
    return folder


# ---------------------------------------------------------------- the scores are lm-eval's, computed right


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The sum of the log-probabilities of ``continuation``'s tokens after ``context``, computed with transformers
    alone (lm-eval's definition: the tokens of context + continuation beyond those of the context)."""
    import torch

    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(start, len(whole)))


def prompt_of(task: str, doc: dict) -> str:
    """lm-eval's own prompts for these tasks, written out in Python (not the kit's Jinja templates)."""
    options = "".join(f"{letter}. {text}\n"
                      for letter, text in zip(doc["letters"], doc.get("options", []), strict=False))
    if task == "pubmedqa":
        return f"Abstract: {doc['context']}\nQuestion: {doc['question']}\nAnswer:"
    if task == "medmcqa":
        return f"Question: {doc['question']}\nChoices:\n{options}Answer:"
    return ("The following are multiple choice questions (with answers) about anatomy.\n\n"
            f"{doc['question'].strip()}\n{options}Answer:")


@needs_lm_eval
def test_lm_eval_scores_equal_a_direct_computation(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = harness_cfg(tiny_model_dir, tmp_path / "out", "eval.lm_eval.tasks=[pubmedqa,medmcqa,mmlu_anatomy]",
                      "eval.lm_eval.max_items=4", f"eval.lm_eval.mmlu_dir={mmlu_folder(tmp_path)}")
    tasks = harness.load_tasks(cfg)
    folder = tmp_path / "tasks"
    folder.mkdir()
    harness.write_task_folder(folder, tasks)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    results = harness.run_tasks(cfg, model, tokenizer, folder, tasks)

    assert sorted(results) == ["medmcqa", "mmlu_anatomy", "pubmedqa"]
    for task in tasks:
        docs = [json.loads(line) for line in (folder / f"{task.lm_eval_name}.jsonl").read_text().splitlines()]
        metrics = results[task.name]
        correct = 0
        for doc, scored in zip(docs, metrics["per_item"], strict=True):
            assert scored["uid"] == doc["id"]
            expected = [direct_loglikelihood(model, tokenizer, prompt_of(task.name, doc), " " + choice)
                        for choice in doc["letters"]]
            assert scored["loglikelihoods"] == pytest.approx(expected, abs=2e-3)
            best = expected.index(max(expected))
            assert scored["pred"] == doc["letters"][best]
            correct += best == doc["label"]
        assert metrics["items"] == len(docs) == len(task.items)
        assert metrics["lm_eval_acc"] == metrics["accuracy"] == round(100 * correct / len(docs), 2)
        assert 0 <= metrics["lm_eval_acc_norm"] <= 100 and metrics["items_per_second"] > 0


@needs_lm_eval
def test_tasks_hold_the_kit_scorers_items(tiny_model_dir, tmp_path):
    """Without eval.lm_eval.max_items, a task takes the same seeded sample as the kit's benchmark of its name."""
    cfg = harness_cfg(tiny_model_dir, tmp_path / "out")  # the kit's pubmedqa benchmark: 12 of 500 items
    (task,) = harness.load_tasks(cfg)
    kit_items = load_items(cfg.eval.benchmarks[0], cfg.training.seed)
    assert [i.uid for i in task.items] == [i.uid for i in kit_items] and len(kit_items) == 12
    assert harness.doc_of(task, task.items[0])["question"] == kit_items[0].example.question

    shipped = harness_cfg(tiny_model_dir, tmp_path / "out", "eval.lm_eval.tasks=[medmcqa]")
    (medmcqa,) = harness.load_tasks(shipped)
    heldout = load_items(BenchmarkSpec(name="m", kind="multiple_choice", source="data/medmcqa/heldout.jsonl"), 0)
    assert len(medmcqa.items) == len(heldout) > 500


@needs_lm_eval
def test_mmlu_reads_the_hub_parquet_layout_as_the_csv_one(tiny_model_dir, tmp_path):
    import datasets

    csv_folder = mmlu_folder(tmp_path)
    parquet_folder = tmp_path / "cais-mmlu"
    (parquet_folder / "anatomy").mkdir(parents=True)
    rows = [{"question": r[0], "subject": "anatomy", "choices": r[1:5], "answer": "ABCD".index(r[5])}
            for r in MMLU_ROWS]
    datasets.Dataset.from_list(rows).to_parquet(parquet_folder / "anatomy" / "test-00000-of-00001.parquet")
    docs = []
    for folder in (csv_folder, parquet_folder):
        cfg = harness_cfg(tiny_model_dir, tmp_path / "out", "eval.lm_eval.tasks=[mmlu_anatomy]",
                          f"eval.lm_eval.mmlu_dir={folder}")
        (task,) = harness.load_tasks(cfg)
        docs.append([harness.doc_of(task, item) for item in task.items])
    assert docs[0] == docs[1] and [d["label"] for d in docs[0]] == [0, 2, 1]
    assert docs[0][1]["options"] == ["Two", "Three", "Four", "Five"]


# ---------------------------------------------------------------- end to end: base and adapter, one report, offline


@needs_lm_eval
def test_full_run_reports_lm_eval_for_base_and_adapter_offline(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = run_kit(kit_argv(tiny_model_dir, out, "--mode", "full", **{
        "training.max_steps": "2", "eval.benchmarks.0.max_items": "4", "eval.harness": "lm-eval",
        "eval.lm_eval.tasks": "[pubmedqa,medmcqa]", "eval.lm_eval.max_items": "3"}), env=OFFLINE)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(out)
    report = json.loads((run / "eval.json").read_text())
    for task in ("pubmedqa", "medmcqa"):
        row = report["lm_eval"][task]
        assert row["baseline"]["items"] == row["fine_tuned"]["items"] == 3
        assert not math.isnan(row["baseline"]["lm_eval_acc"]) and not math.isnan(row["fine_tuned"]["lm_eval_acc"])
    markdown = (run / "eval_report.md").read_text()
    assert "## lm-evaluation-harness" in markdown and "| pubmedqa | 3 |" in markdown and "| medmcqa | 3 |" in markdown
    assert "| pubmedqa | 4 | likelihood |" in markdown  # the kit's own scorer, in the same report
    assert (run / "lm_eval_tasks" / "medqlora_pubmedqa.yaml").is_file()
    assert "lm-eval pubmedqa acc" in result.stdout


@needs_lm_eval
def test_mode_eval_scores_the_adapter_and_the_base(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "2",
                                                              "training.learning_rate": "0.01"}) == 0
    run = only_run(out)
    capsys.readouterr()
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "eval", "--adapter", str(run), **{
        "eval.benchmarks.0.max_items": "3", "eval.harness": "lm-eval", "eval.lm_eval.max_items": "2"}))
    assert result.code == 0, result.err[-3000:]
    stdout = result.out
    assert "lm-eval baseline pubmedqa: acc" in stdout and "lm-eval fine-tuned pubmedqa: acc" in stdout
    row = json.loads((run / "eval.json").read_text())["lm_eval"]["pubmedqa"]
    assert row["baseline"]["items"] == row["fine_tuned"]["items"] == 2
    # lm-eval scored the model with the adapter attached: its log-likelihoods are not the base model's
    assert row["baseline"]["per_item"] != row["fine_tuned"]["per_item"]
    # stderr is not a terminal here: lm-eval's own progress bars stay off it, as the kit's do
    assert "%|" not in result.err and "it/s]" not in result.err, result.err[-2000:]


# ---------------------------------------------------------------- refusals: one message, before the model loads


def refused(capsys, tiny_model_dir, tmp_path, fragment: str, *settings: str) -> None:
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--adapter", "none",
                    **{"eval.harness": "lm-eval"})
    for item in settings:
        argv += ["--set", item]
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, fragment)


def test_lm_eval_not_installed_says_how_to_install(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    refused(capsys, tiny_model_dir, tmp_path, 'pip install "medqlora[eval]"')



def test_a_package_named_lm_eval_that_is_not_the_harness_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """An lm_eval without lm_eval.models (another package, or an old release) is refused before any evaluation."""
    import types

    stub = types.ModuleType("lm_eval")
    stub.__file__ = str(tmp_path / "lm_eval" / "__init__.py")
    for name in ("lm_eval.models", "lm_eval.models.huggingface", "lm_eval.tasks"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "lm_eval", stub)
    refused(capsys, tiny_model_dir, tmp_path, "is not it or is too old")

@needs_lm_eval
def test_medqa_without_its_file_is_named(tiny_model_dir, tmp_path, capsys):
    refused(capsys, tiny_model_dir, tmp_path, "lm-eval task medqa needs its data", "eval.lm_eval.tasks=[medqa]")
    refused(capsys, tiny_model_dir, tmp_path, "eval.lm_eval.medqa 'nowhere/medqa.jsonl' is not a file here",
            "eval.lm_eval.tasks=[medqa]", "eval.lm_eval.medqa=nowhere/medqa.jsonl")


@needs_lm_eval
def test_mmlu_without_local_files_is_refused(tiny_model_dir, tmp_path, capsys):
    refused(capsys, tiny_model_dir, tmp_path, "lm-eval task mmlu_anatomy needs MMLU's test files",
            "eval.lm_eval.tasks=[mmlu_medical]")
    refused(capsys, tiny_model_dir, tmp_path, "lm-eval task mmlu_clinical_knowledge: neither",
            "eval.lm_eval.tasks=[mmlu_medical]", f"eval.lm_eval.mmlu_dir={mmlu_folder(tmp_path)}")


@needs_lm_eval
def test_malformed_mmlu_row_is_named(tiny_model_dir, tmp_path, capsys):
    folder = mmlu_folder(tmp_path)
    (folder / "anatomy_test.csv").write_text("a question,only one option,A\n")
    refused(capsys, tiny_model_dir, tmp_path, "anatomy_test.csv:1: expected six columns",
            "eval.lm_eval.tasks=[mmlu_anatomy]", f"eval.lm_eval.mmlu_dir={folder}")


def test_unknown_task_lists_the_tasks(tiny_model_dir, tmp_path, capsys):
    refused(capsys, tiny_model_dir, tmp_path, "unknown task 'pubmed'; the tasks the kit builds from local files are "
            "pubmedqa, medqa, medmcqa, mmlu_medical", "eval.lm_eval.tasks=[pubmed]")
    with pytest.raises(ConfigError, match="harness"):
        load_config(None, ["eval.harness=lm_eval"])


@needs_lm_eval
def test_dry_run_plans_the_tasks_and_makes_their_checks(tiny_model_dir, tmp_path, capsys):
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--adapter", "none", "--dry-run",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[pubmedqa,medmcqa]"})
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err[-3000:]
    does = json.loads(result.out)["does"]
    assert "lm-eval pubmedqa (12 items, lm-evaluation-harness, zero-shot log-likelihood)" in does
    assert "lm-eval medmcqa (512 items" in does
    refusal = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--adapter", "none",
                                       "--dry-run", **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[medqa]"}))
    assert refusal.code == 2
    assert_one_message(refusal.err, "lm-eval task medqa needs its data")


@needs_lm_eval
def test_several_processes_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="runs in one process"):
        harness.load_tasks(harness_cfg(tiny_model_dir, tmp_path / "out"))
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    with pytest.raises(DataError, match="medqa needs its data"):
        harness.load_tasks(harness_cfg(tiny_model_dir, tmp_path / "out", "eval.lm_eval.tasks=[medqa]"))


@needs_lm_eval
def test_comparison_script_scores_the_same_items_both_ways(tiny_model_dir, tmp_path):
    """bench/lm_eval_compare.py on the tiny model (a smoke run: it must not rot; no timing is asserted)."""
    import subprocess

    out = tmp_path / "compare"
    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "lm_eval_compare.py"),
                             "--items", "3", "--set", f"model.name={tiny_model_dir}", "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=900, env={**os.environ, **OFFLINE})
    assert result.returncode == 0, result.stderr[-3000:]
    scorers = json.loads((out / "lm_eval_compare.json").read_text())["benchmarks"]["pubmedqa"]["scorers"]
    assert sorted(scorers) == ["kit", "lm-eval", "lm-eval+chat"]
    assert {r["items"] for r in scorers.values()} == {3}
    assert "| pubmedqa | kit (likelihood) | 3 |" in (out / "lm_eval_compare.md").read_text()
