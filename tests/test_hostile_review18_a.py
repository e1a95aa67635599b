"""Hostile round 18, run folders: a run's config.yaml named its data by a path relative to the folder the run was
started from, so `--config RUN/config.yaml` from another folder planned another file of that name (the kit's shipped
PubMedQA) without a word."""

import json

import yaml

from medqlora.cli import main

from .conftest import kit_argv


def test_a_runs_config_names_data_given_relative_to_the_working_folder_by_its_absolute_path(tiny_model_dir, tmp_path,
                                                                                            monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data" / "pubmedqa").mkdir(parents=True)
    rows = [{"instruction": f"What treats condition {i}?", "output": f"Drug {i}."} for i in range(7)]
    (project / "data" / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(rows))
    monkeypatch.chdir(project)
    out = tmp_path / "out"
    assert main(kit_argv(tiny_model_dir, out, "--mode", "train", **{
        "data.datasets": "[{source: data/pubmedqa/ori_pqal.json, format: instruction}]", "training.max_steps": "1",
        "output.run_name": "projrun"})) == 0
    config = yaml.safe_load((out / "projrun" / "config.yaml").read_text())
    assert config["data"]["datasets"][0]["source"] == str(project / "data" / "pubmedqa" / "ori_pqal.json")
    manifest = json.loads((out / "projrun" / "manifest.json").read_text())
    assert manifest["trained_settings"]["data.datasets"][0]["source"] == config["data"]["datasets"][0]["source"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["--mode", "train", "--dry-run", "--config", str(out / "projrun" / "config.yaml"),
                 "--set", "output.run_name=again"]) == 0
    plan = capsys.readouterr().out
    assert '"rows": 7,' in plan and '"rows": 1000,' not in plan  # the run's 7 rows, not the shipped PubMedQA


def test_hub_ids_and_the_kits_own_files_stay_as_written(tmp_path, monkeypatch):
    from medqlora.data.sources import anchored

    monkeypatch.chdir(tmp_path)
    assert anchored("data/pubmedqa/ori_pqal.json") == "data/pubmedqa/ori_pqal.json"  # the kit's, not here
    assert anchored("medalpaca/medical_meadow_wikidoc") == "medalpaca/medical_meadow_wikidoc"
    assert anchored("/abs/rows.jsonl") == "/abs/rows.jsonl"
    (tmp_path / "rows.jsonl").write_text("{}\n")
    assert anchored("rows.jsonl") == str(tmp_path / "rows.jsonl")


def test_a_grpo_run_whose_completions_are_all_masked_says_the_adapter_never_changed(tiny_model_dir, tmp_path, capsys):
    """Every completion reached the length limit and mask_truncated_completions masked them all: loss 0, grad_norm 0
    at every step, and the run reported trained without a word."""
    out = tmp_path / "out"
    code = main(["--mode", "train", "--config", "smollm2_grpo_medmcqa", "--output-dir", str(out),
                 "--set", f"model.name={tiny_model_dir}", "--set", "data.datasets.0.max_samples=8",
                 "--set", "training.max_steps=2", "--set", "grpo.max_completion_length=6",
                 "--set", "grpo.overlong_buffer=0", "--set", "grpo.mask_truncated_completions=true",
                 "--set", "output.run_name=masked"])
    said = capsys.readouterr().out
    assert code == 0
    assert "warning: the adapter never changed: every completion ran into grpo.max_completion_length (6 tokens" in said
    metrics = json.loads((out / "masked" / "metrics.json").read_text())["metrics"]
    assert metrics["warning"].startswith("the adapter never changed")


def test_a_run_with_any_gradient_is_not_said_to_be_idle():
    from medqlora.config import load_config
    from medqlora.grpo import never_learned

    cfg = load_config(None, ["training.method=sft"])
    assert never_learned(cfg, [{"loss": 1.0, "grad_norm": 0.0}, {"loss": 0.9, "grad_norm": 0.3}]) is None
    assert never_learned(cfg, [{"train_runtime": 3.0}]) is None  # nothing logged
    assert "0 at each of the 2 logged steps" in never_learned(cfg, [{"grad_norm": 0.0}, {"grad_norm": 0}])


def test_a_grpo_run_whose_groups_all_got_equal_rewards_is_said_so():
    from medqlora.config import load_config
    from medqlora.grpo import never_learned

    cfg = load_config("smollm2_grpo_medmcqa")
    said = never_learned(cfg, [{"grad_norm": 0.0, "frac_reward_zero_std": 1.0}] * 3)
    assert "every group of completions got equal rewards (frac_reward_zero_std 1)" in said


def test_a_terminal_that_is_not_utf8_gets_escapes_not_a_crash(tiny_model_dir, tmp_path):
    """PYTHONIOENCODING=ascii: a run named café ended with an internal UnicodeEncodeError while printing its folder,
    leaving a run folder with run.log only (a chat reply did the same halfway)."""
    from .conftest import run_kit

    out = tmp_path / "out"
    result = run_kit(kit_argv(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "caf\u00e9",
                                                                         "training.max_steps": "1"}),
                     env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "caf\\xe9" in result.stdout and "UnicodeEncodeError" not in result.stdout + result.stderr
    assert json.loads((out / "caf\u00e9" / "manifest.json").read_text())["status"] == "trained"


def test_a_run_of_a_questions_words_written_as_their_initials_is_a_near_copy():
    """PubMedQA test item 22237146 with 'non-small cell lung cancer' written NSCLC passed, not even reported."""
    from medqlora.leakage import Item, find_overlap

    question = ("Can serum be used for analyzing the EGFR mutation status in patients with advanced non-small cell lung "
                "cancer?")
    abbreviated = question.replace("non-small cell lung cancer", "NSCLC")
    [overlap] = find_overlap([Item("0:mine.jsonl", None, abbreviated, (("instruction", abbreviated),), 1)],
                             [Item("pubmedqa-test", "22237146", question)])
    assert not overlap.possible and overlap.changes.shown == ("'nsclc' for 'non small cell lung cancer'",)
    other = "What is the role of chemotherapy in advanced NSCLC patients whose EGFR mutation status is known?"
    assert find_overlap([Item("0:mine.jsonl", None, other, (("instruction", other),), 1)],
                        [Item("pubmedqa-test", "22237146", question)]) == []


def test_the_shipped_medmcqa_split_holds_the_gpcr_question_out_with_its_expanded_copy():
    rows = [json.loads(line) for line in open("data/medmcqa/heldout.jsonl")]
    assert sum("GPCR that does not act" in r["question"] or "G-protein coupled receptor that does not act"
               in r["question"] for r in rows) == 2


def test_the_kits_own_files_stay_relative_when_run_from_the_kits_folder(monkeypatch):
    from medqlora.config import KIT_ROOT
    from medqlora.data.sources import anchored

    monkeypatch.chdir(KIT_ROOT)
    assert anchored("data/pubmedqa/ori_pqal.json") == "data/pubmedqa/ori_pqal.json"  # portable with the kit


def test_run_mode_resume_takes_the_cfg_it_started_with_when_its_data_path_was_anchored(tmp_path, monkeypatch):
    from medqlora import resume
    from medqlora.config import load_config
    from medqlora.data import with_anchored_sources

    (tmp_path / "rows.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    monkeypatch.chdir(tmp_path)
    given = load_config(None, ["data.datasets=[{source: rows.jsonl, format: instruction}]"])
    saved = with_anchored_sources(given)  # what the run's config.yaml holds
    assert saved.data.datasets[0].source == str(tmp_path / "rows.jsonl")
    resume.refuse_other_config(given, run=resume.RunDir(tmp_path / "run"), saved=saved)  # the same run: taken
