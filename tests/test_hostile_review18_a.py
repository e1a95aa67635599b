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
