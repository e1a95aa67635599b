"""Inputs of a hostile review that the kit handled badly, each with the behaviour it has now (docs/errors.md XD rows)."""

import pytest

from .conftest import assert_one_message, run_cli


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, {"LOCAL_RANK": "0"}])
def test_launch_variables_of_one_process_without_a_rendezvous_are_refused_before_anything_loads(
        tmp_path, capsys, monkeypatch, env):
    """transformers starts a process group wherever RANK or LOCAL_RANK is set, even for one process: without
    MASTER_ADDR/MASTER_PORT that failed after the model loaded, as an internal error."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "outputs"
    for argv in (["--dry-run"], ["--mode", "train"]):
        code, _, err = run_cli(capsys, [*argv, "--output-dir", str(out)])
        assert code == 2
        assert_one_message(err, "but no launcher started this process (MASTER_ADDR and MASTER_PORT are not set). Unset")
    assert not out.exists()


def test_the_merged_exports_reference_is_described_in_the_dtype_it_trained_in(monkeypatch, tmp_path):
    """export.merged_dtype fp16 for a run trained in fp32 (the CPU): the check's reference is the fp32 base + adapter,
    and the line that announces it said 'fp16 base, as in training'."""
    from types import SimpleNamespace

    from medqlora.config import load_config
    from medqlora.export import merged

    said = []

    class Stop(Exception):
        pass

    def stop(*_args, **_kwargs):
        raise Stop

    monkeypatch.setattr(merged, "trained_reference", stop)
    cfg = load_config(None, ["export.merged_dtype=fp16", "backend=hf"])
    with pytest.raises(Stop):
        merged.export_merged(cfg, tmp_path / "adapter", tmp_path / "merged", said.append, SimpleNamespace(source="x"))
    assert said == [f"export: scoring {cfg.export.compare_prompts} sample prompts with the base model + adapter "
                    "(fp32 base, as in training)"]


def test_a_runs_config_records_the_output_folder_given_by_output_dir(tiny_model_dir, tmp_path):
    """config.yaml is what --resume and a rerun (--config <run>/config.yaml) read: it said output.dir: outputs for a
    run that --output-dir had put elsewhere."""
    import yaml

    from .conftest import only_run, run_tiny

    out = tmp_path / "o #2: x"
    assert run_tiny(tiny_model_dir, tmp_path / "ignored", "--mode", "train", "--output-dir", str(out)) == 0
    saved = yaml.safe_load((only_run(out) / "config.yaml").read_text())
    assert saved["output"]["dir"] == str(out)


def test_preference_rows_with_their_question_under_another_name_say_how_to_map_it():
    """Intel/orca_dpo_pairs' layout (system, question, chosen, rejected): the message named neither the column nor
    the way out."""
    from medqlora.config import DatasetSpec
    from medqlora.errors import DataError
    from medqlora.rl_formats import format_preference

    spec = DatasetSpec(source="x.jsonl", format="preference")
    row = {"system": "You are helpful.", "question": "First-line drug for anaphylaxis?",
           "chosen": "Intramuscular adrenaline.", "rejected": "An oral antihistamine."}
    with pytest.raises(DataError, match=r"The row holds 'question': if that is the question, map it in the dataset "
                                        r"entry with columns: \{prompt: question\}"):
        format_preference(row, spec)
    mapped = DatasetSpec(source="x.jsonl", format="preference", columns={"prompt": "question"})
    assert format_preference(row, mapped).prompt == "First-line drug for anaphylaxis?"


def test_resuming_a_run_interrupted_before_its_first_checkpoint_does_not_say_it_finished(tmp_path, capsys):
    """SIGTERM/SIGUSR1 before the first checkpoint saves the adapter trained so far (status interrupted): --resume
    said 'it finished training'."""
    import json

    from medqlora.config import load_config

    run = tmp_path / "outputs" / "cut"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "manifest.json").write_text(json.dumps({"status": "interrupted", "kit_version": "0.1.0"}))
    code, _, err = run_cli(capsys, ["--mode", "train", "--resume", str(run)])
    assert code == 2
    assert_one_message(err, "it was interrupted before its first checkpoint (training.save_steps), with the adapter "
                            "trained so far saved in")
    assert "finished training" not in err


def test_a_run_started_before_a_setting_existed_resumes_while_a_changed_setting_is_still_refused(tmp_path):
    """A kit update that adds a setting (training.kernels) must not make the runs it finds mid-training
    unresumable: their manifest never recorded it, and their config.yaml takes its default."""
    import json

    from medqlora.config import load_config
    from medqlora.errors import ModelError
    from medqlora.resume import _check_resumable_config, trained_settings
    from medqlora.runs import RunDir

    cfg = load_config(None)
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    older = {k: v for k, v in trained_settings(cfg).items() if k != "training.kernels"}
    (run / "manifest.json").write_text(json.dumps({"status": "interrupted", "trained_settings": older}))
    _check_resumable_config(RunDir(run), cfg, run / "checkpoints" / "checkpoint-2")
    changed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"kernels": "none"})})
    with pytest.raises(ModelError, match="training.kernels"):
        _check_resumable_config(RunDir(run), changed, run / "checkpoints" / "checkpoint-2")
    edited = cfg.model_copy(update={"training": cfg.training.model_copy(update={"learning_rate": 1e-3})})
    with pytest.raises(ModelError, match="training.learning_rate"):
        _check_resumable_config(RunDir(run), edited, run / "checkpoints" / "checkpoint-2")


def test_using_the_adapter_of_a_run_stopped_during_training_says_it_is_half_trained(tmp_path, monkeypatch):
    """--adapter RUN (eval, export, test) of a run a signal stopped at step 1 of 30 was used as a finished one, without
    a word; a push to the Hub would have published it as the run's result."""
    import json

    from medqlora import adapter_runs

    said = []
    monkeypatch.setattr(adapter_runs, "say", said.append)

    class Found(Exception):
        pass

    def stop(folder):
        raise Found

    monkeypatch.setattr(adapter_runs.adapters, "find", stop)
    run = tmp_path / "gusr"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("{}")
    manifest = {"kit_version": "0.1.0", "status": "interrupted", "error": "interrupted (SIGUSR1) at step 1 of 30"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Found):
        adapter_runs.find_adapter(None, str(run), str(tmp_path))
    assert len(said) == 1 and "its training stopped before its end (status interrupted" in said[0]
    manifest.update(status="trained")
    (run / "manifest.json").write_text(json.dumps(manifest))
    said.clear()
    with pytest.raises(Found):
        adapter_runs.find_adapter(None, str(run), str(tmp_path))
    assert said == []


def test_a_chain_of_thought_benchmark_in_another_format_than_the_adapter_learnt_is_said(tmp_path):
    """An adapter trained on medical-o1 in the tags format, scored on a huatuo-format benchmark: its compliance
    measured the mismatch, without a word."""
    from medqlora.adapter_runs import cot_style_mismatches
    from medqlora.config import load_config

    run = tmp_path / "o1t"
    (run / "adapter").mkdir(parents=True)
    trained = load_config(None, ["data.datasets=[{source: rows.jsonl, format: medical_o1, cot_style: tags}]"])
    (run / "config.yaml").write_text(trained.to_yaml())
    bench = "[{name: o1b, kind: cot, cot_style: %s, source: heldout.jsonl}]"
    huatuo = load_config(None, ["eval.benchmarks=" + bench % "huatuo"])
    [said] = cot_style_mismatches(huatuo, run / "adapter")
    assert "eval.benchmarks o1b scores the huatuo reasoning format, but the adapter learnt tags" in said
    assert cot_style_mismatches(load_config(None, ["eval.benchmarks=" + bench % "tags"]), run / "adapter") == []
    assert cot_style_mismatches(huatuo, None) == []


def test_the_model_card_of_a_second_stage_names_the_stage_it_started_from_and_its_data(tmp_path):
    """A DPO stage started from an SFT run that trained on PubMedQA test questions (allow_eval_overlap): the card
    listed the DPO rows only."""
    import json

    from medqlora.config import load_config
    from medqlora.report.model_card import _data_lines

    stage1 = tmp_path / "leak1"
    (stage1 / "adapter").mkdir(parents=True)
    first = load_config(None, ["data.datasets=[{source: pqtest.jsonl, format: instruction}]",
                               "data.allow_eval_overlap=true"])
    (stage1 / "config.yaml").write_text(first.to_yaml())
    (stage1 / "manifest.json").write_text(json.dumps({"kit_version": "0.1.0", "status": "trained"}))
    second = load_config(None, ["data.datasets=[{source: pref.jsonl, format: preference}]", "training.method=dpo",
                                f"training.init_adapter={stage1}"])
    lines = _data_lines(second)
    assert lines[0].startswith("- local file pref.jsonl (format preference")
    assert lines[1] == "- started from the adapter of the run leak1 (training.init_adapter), trained on:"
    assert lines[2].startswith("  - local file pqtest.jsonl (format instruction")
    assert lines[3].startswith("  - trained with data.allow_eval_overlap: these rows may hold evaluation questions")
