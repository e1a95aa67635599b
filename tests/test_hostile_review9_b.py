"""Hostile and unlucky inputs around the adapters of a kit run: a checkpoint or an exported adapter of a run keeps
that run's record of what it was trained on and the reasoning format it learnt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides
from .test_adapters import make_adapter


def _kit_run(folder: Path, model: Path, *overrides: str, status: str = "interrupted") -> Path:
    """A run folder of the kit as a run killed after a checkpoint leaves it, with what it trained on recorded."""
    from medqlora.config import load_config

    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kit_version": "0.1.0", "status": status}))
    cfg = load_config(None, tiny_overrides(model, folder.parent, **dict(item.split("=", 1) for item in overrides)))
    (folder / "config.yaml").write_text(cfg.to_yaml())
    (folder / "training_items.jsonl").write_text("")
    return folder


def _trained_on_first_eval_item(run: Path) -> None:
    from medqlora import evaluate
    from medqlora.config import load_config
    from medqlora.leakage import question_hash

    items = next(iter(evaluate.load_benchmarks(load_config(run / "config.yaml")).values()))
    record = {"source": "0:pqtest.jsonl", "uid": "r1", "question_sha1_16": question_hash(items[0].example.question)}
    (run / "training_items.jsonl").write_text(json.dumps(record) + "\n")


@pytest.mark.parametrize("copy", ["checkpoints/checkpoint-2", "export/adapter", "export-20261201-091708/adapter"])
def test_a_checkpoint_or_export_of_a_run_is_refused_on_items_the_run_trained_on(tiny_model_dir, tmp_path, capsys,
                                                                                copy):
    run = _kit_run(tmp_path / "out" / "leak", tiny_model_dir)
    _trained_on_first_eval_item(run)
    adapter = make_adapter(run / copy, str(tiny_model_dir))
    refused = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval",
                                       "--no-baseline", "--adapter", str(adapter)))
    assert refused.code == 2
    assert_one_message(refused.err, "1 items were trained on by this adapter")


def test_a_checkpoint_of_a_run_without_its_training_record_is_refused(tiny_model_dir, tmp_path, capsys):
    run = _kit_run(tmp_path / "out" / "leak", tiny_model_dir)
    (run / "training_items.jsonl").unlink()
    adapter = make_adapter(run / "checkpoints" / "checkpoint-2", str(tiny_model_dir))
    refused = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval",
                                       "--no-baseline", "--adapter", str(adapter)))
    assert refused.code == 2
    assert_one_message(refused.err, "training_items.jsonl is missing")


@pytest.mark.parametrize("copy", ["checkpoints/checkpoint-4", "export/adapter"])
def test_starting_from_a_checkpoint_or_export_carries_its_runs_items_and_format(tiny_model_dir, tmp_path, capsys,
                                                                               copy):
    from medqlora import grpo
    from medqlora.adapter_runs import inherited_training_items
    from medqlora.config import load_config

    run = _kit_run(tmp_path / "out" / "o1k", tiny_model_dir, "data.datasets.0.source=o1.jsonl",
                   "data.datasets.0.format=medical_o1", "data.datasets.0.cot_style=tags")
    _trained_on_first_eval_item(run)
    adapter = make_adapter(run / copy, str(tiny_model_dir))
    records, gap = inherited_training_items(adapter)
    assert gap is None
    assert [r["inherited_from"] for r in records] == ["training.init_adapter o1k"]
    start = load_config(None, ["training.method=grpo", "data.datasets.0.format=multiple_choice",
                               "data.datasets.0.source=mc.jsonl", f"training.init_adapter={adapter}"])
    assert grpo.format_style(start) == "tags"
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                       **{"training.init_adapter": str(adapter)}))
    assert planned.code == 0, planned.err
    assert "starting from the adapter of" in planned.out + planned.err
    assert "not in a run folder" not in planned.out + planned.err


def _instruction_data(path: Path) -> Path:
    rows = [{"instruction": f"What is the usual adult dose of drug number {i}?", "output": f"{i} mg daily."}
            for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_resume_dry_run_plans_the_run_it_continues_from_its_own_config(tiny_model_dir, tmp_path, capsys):
    data = _instruction_data(tmp_path / "ins.jsonl")
    run = _kit_run(tmp_path / "out" / "o1k", tiny_model_dir, f"data.datasets.0.source={data}",
                   "data.datasets.0.format=instruction", "training.max_steps=200", "output.run_name=o1k")
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    planned = run_cli(capsys, ["--mode", "train", "--resume", str(run), "--dry-run"])
    assert planned.code == 0, planned.err
    shown = json.loads(planned.out)
    assert shown["resumes"] == f"{run} from checkpoint-4, with the run's own config.yaml"
    assert shown["model"] == str(tiny_model_dir)
    assert list(shown["datasets"]) == [f"0:{data}"]
    assert shown["optimizer_steps"] == 200
    assert shown["outputs"].startswith(f"{run}/ ")


def test_a_resume_dry_run_of_a_finished_run_is_refused_as_the_run_refuses_it(tiny_model_dir, tmp_path, capsys):
    run = _kit_run(tmp_path / "out" / "dpok", tiny_model_dir, status="trained")
    make_adapter(run / "adapter", str(tiny_model_dir))
    refused = run_cli(capsys, ["--mode", "train", "--resume", str(run), "--dry-run"])
    assert refused.code == 2
    assert_one_message(refused.err, "has no checkpoint to continue from (it finished training: its adapter is saved)")


def _interrupted_run(folder: Path, model: Path) -> Path:
    run = _kit_run(folder, model)
    manifest = {"kit_version": "0.1.0", "status": "interrupted",
                "error": f"Interrupted (SIGTERM) at step 25: the adapter trained so far is saved in {run}/adapter."}
    (run / "manifest.json").write_text(json.dumps(manifest))
    make_adapter(run / "adapter", str(model))
    return run


def test_init_adapter_latest_refuses_a_run_whose_training_was_interrupted(tiny_model_dir, tmp_path, capsys):
    run = _interrupted_run(tmp_path / "out" / "gkhard", tiny_model_dir)
    data = {"data.datasets.0.source": str(_instruction_data(tmp_path / "ins.jsonl")),
            "data.datasets.0.format": "instruction"}
    refused = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                       **data, **{"training.init_adapter": "latest"}))
    assert refused.code == 2
    assert_one_message(refused.err, f"training.init_adapter latest: the newest run with an adapter, {run}, stopped "
                                    "before its training ended (status interrupted: Interrupted (SIGTERM) at step 25)")
    named = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                     **data, **{"training.init_adapter": str(run)}))
    assert named.code == 0, named.err  # named on purpose: started from as it is


def test_adapter_latest_says_the_run_it_picks_was_interrupted(tiny_model_dir, tmp_path, capsys):
    run = _interrupted_run(tmp_path / "out" / "gkhard", tiny_model_dir)
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test",
                                       "--adapter", "latest"))
    assert planned.code == 0, planned.err
    assert f"warning: --adapter latest is {run}, whose training stopped before its end" in planned.out + planned.err


def test_an_export_of_a_run_is_loaded_onto_its_runs_base_model(tiny_model_dir, tmp_path, capsys):
    """model.name naming the run's own merged export: the exported adapter goes onto the run's base, as the run's
    adapter does, not onto the model it is already merged into."""
    import shutil

    run = _kit_run(tmp_path / "out" / "base", tiny_model_dir, status="trained")
    adapter = make_adapter(run / "export-20261201-095100" / "adapter", tiny_model_dir.name)
    merged = run / "export" / "merged"
    shutil.copytree(tiny_model_dir, merged)
    (run / "export" / "export_report.json").write_text("{}")
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test",
                                       "--adapter", str(adapter), **{"model.name": str(merged)}))
    assert planned.code == 0, planned.err
    assert json.loads(planned.out)["model"] == str(tiny_model_dir)
    foreign = tmp_path / "copied" / "adapter"
    shutil.copytree(adapter, foreign)
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test",
                                       "--adapter", str(foreign), **{"model.name": str(merged)}))
    said = planned.out + planned.err
    assert planned.code == 0, planned.err
    assert "if that was this adapter, its change would be applied twice" in said
    assert f"If it was trained on a local model folder named {tiny_model_dir.name}" in said
    assert f"set --set model.name={tiny_model_dir.name}." not in said


def test_a_base_model_in_a_hugging_face_cache_is_published_by_its_hub_id(tmp_path):
    from medqlora import backends
    from medqlora.export.adapter import published_config
    from medqlora.report.adapter_card import loading_code

    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "93efa2f097d58c2a74874c7e6"
    snapshot.mkdir(parents=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(snapshot)}))
    config = published_config(tmp_path / "adapter_config.json", str(snapshot))
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"
    assert backends.public_model_name(str(snapshot)) == "HuggingFaceTB/SmolLM2-135M"
    assert "AutoPeftModelForCausalLM" in loading_code(str(snapshot))  # loads by the hub id, no local copy needed
    other = tmp_path / "models" / "snapshots" / "mine"  # a folder of the user's that only looks like one
    other.mkdir(parents=True)
    assert backends.published_base_name(str(other)) == "mine"


def test_a_grpo_plan_says_what_the_run_optimises(tiny_model_dir, tmp_path, capsys):
    """The rewards, their weights and the format of the start adapter's run, as the run chooses them."""
    rows = [{"question": f"Which vitamin is low in case {i}?", "options": {"A": "B12", "B": "C", "C": "D", "D": "K"},
             "answer_idx": "A"} for i in range(12)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = _kit_run(tmp_path / "out" / "o1t", tiny_model_dir, "data.datasets.0.source=o1.jsonl",
                   "data.datasets.0.format=medical_o1", "data.datasets.0.cot_style=tags", status="trained")
    make_adapter(run / "adapter", str(tiny_model_dir))
    planned = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train", **{
        "training.method": "grpo", "grpo.num_generations": "2", "grpo.max_completion_length": "32",
        "data.datasets.0.source": str(data), "data.datasets.0.format": "multiple_choice",
        "training.init_adapter": str(run)}))
    assert planned.code == 0, planned.err
    assert json.loads(planned.out)["training"]["grpo"] == {
        "rewards": {"multiple_choice": 1.0, "format_tags": 0.5, "overlong": 1.0},
        "format_style": "tags (grpo.format_style auto)", "num_generations": 2, "max_completion_length": 32,
        "overlong_buffer": "8 (grpo.overlong_buffer auto: a quarter of grpo.max_completion_length 32)"}


def test_the_results_of_a_checkpoint_go_to_a_new_folder_named_after_its_run(tiny_model_dir, tmp_path, capsys):
    from medqlora.adapter_runs import run_folder_for
    from medqlora.config import load_config

    run = _kit_run(tmp_path / "out" / "o1k", tiny_model_dir)
    adapter = make_adapter(run / "checkpoints" / "checkpoint-4", str(tiny_model_dir))
    results = run_folder_for(load_config(run / "config.yaml"), adapter, str(tmp_path / "out"), "base")
    assert results.path.parent == tmp_path / "out" and results.path.name.startswith("o1k-checkpoint-4-")
    said = capsys.readouterr()
    assert f"is a checkpoint of the run {run} (what it was trained on is read there)" in said.out + said.err
    assert not (run / "checkpoints" / "checkpoint-4" / "run.log").exists()


def test_a_link_planted_in_the_run_of_a_checkpoint_is_refused_before_it_is_read(tiny_model_dir, tmp_path, capsys):
    run = _kit_run(tmp_path / "out" / "leak", tiny_model_dir)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("")
    (run / "training_items.jsonl").unlink()
    (run / "training_items.jsonl").symlink_to(outside)
    adapter = make_adapter(run / "checkpoints" / "checkpoint-2", str(tiny_model_dir))
    refused = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval",
                                       "--no-baseline", "--adapter", str(adapter)))
    assert refused.code == 2
    assert_one_message(refused.err, f"{run / 'training_items.jsonl'} is a symbolic link")
