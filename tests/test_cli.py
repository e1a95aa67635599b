"""Every CLI mode end to end on the tiny random model (hf backend, CPU)."""

import json
import stat
from importlib import metadata

import pytest
import yaml

from medqlora.cli import main
from medqlora.config import load_config

from .conftest import only_run, run_tiny, tiny_overrides

DISCLAIMER = "consult a healthcare professional."


def test_full_mode_writes_the_whole_run_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "full") == 0
    run = only_run(out)
    files = {p.name for p in run.iterdir()}
    assert {"adapter", "config.yaml", "manifest.json", "metrics.json", "loss.png", "memory.json",
            "data_stats.json", "sample_responses.md", "sample_responses.jsonl", "run.log", "eval_report.md",
            "eval.json", "eval_chart.png"} <= files
    pubmedqa = json.loads((run / "eval.json").read_text())["benchmarks"]["pubmedqa"]
    assert pubmedqa["baseline"]["items"] == pubmedqa["fine_tuned"]["items"] == 12
    assert "| pubmedqa | 12 | likelihood |" in (run / "eval_report.md").read_text()

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    assert manifest["runtime"]["backend"] == "hf" and manifest["seed"] == 3407
    assert manifest["packages"]["torch"] and manifest["packages"]["trl"] == metadata.version("trl")
    assert list(manifest["data"].values())[0].startswith("sha256:")
    assert manifest["adapter_mb"] > 0
    log = (run / "run.log").read_text()  # every line said, those before the run folder existed first
    assert log.index("backend=hf on CPU") < log.index("run folder:") < log.index("CPU: LoRA on full-precision")
    assert log.index("step 1: loss ") < log.index("adapter saved")  # the Trainer's own log lines, kept in run.log
    modes = {stat.S_IMODE(f.stat().st_mode) for f in [*(run / "adapter").iterdir(), run / "config.yaml"]}
    assert len(modes) == 1  # the adapter's weights are as readable as every other file of the run

    memory = json.loads((run / "memory.json").read_text())
    assert memory["summary"]["host_peak_rss_gib"] > 0.1

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["steps"] == 4 and len([e for e in metrics["log_history"] if "loss" in e]) == 4
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"

    answers = [json.loads(line) for line in (run / "sample_responses.jsonl").read_text().splitlines()]
    queries = yaml.safe_load(open("examples/test_queries.yaml"))["queries"]
    assert [a["id"] for a in answers] == [q["id"] for q in queries] and len(answers) >= 5
    assert all(a["response"].rstrip("*").endswith(DISCLAIMER) for a in answers)
    assert load_config(run / "config.yaml").model.name == str(tiny_model_dir)
    printed = capsys.readouterr().out
    assert "training loss" in printed and "mean of first/last 1 logged steps" in printed
    # messages come in the order things happen: the base model is scored before training starts
    order = [printed.index(m) for m in ("evaluating the base model before training: pubmedqa (12 items)",
                                        "eval baseline pubmedqa", "training 16 examples for 4 optimizer steps",
                                        "eval fine-tuned pubmedqa")]
    assert order == sorted(order)
    stats = json.loads((run / "data_stats.json").read_text())
    # 4 steps of 4 see each of the 16 examples once: every real token counted, no padding
    assert metrics["metrics"]["tokens_seen"] == stats["total"]["train_tokens"]
    assert metrics["metrics"]["tokens_per_second"] > 0
    assert "adapter saved" in (run / "run.log").read_text()


def test_train_then_test_uses_the_latest_adapter_and_never_overwrites(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train") == 0
    run = only_run(out)
    assert not (run / "sample_responses.md").exists()
    assert run_tiny(tiny_model_dir, out, "--mode", "test") == 0
    first = (run / "sample_responses.md").read_text()
    assert "+ adapter" in first
    assert run_tiny(tiny_model_dir, out, "--mode", "test", "--adapter", str(run)) == 0
    assert (run / "sample_responses.md").read_text() == first
    assert len(list(run.glob("sample_responses*.md"))) == 2


def test_test_mode_with_the_base_model_only(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "test", "--adapter", "none") == 0
    run = only_run(out)
    assert run.name.startswith("base-")
    assert "(base)" in (run / "sample_responses.md").read_text()


def test_existing_run_folder_is_refused_and_left_untouched(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "mine"}) == 0
    before = (out / "mine" / "manifest.json").read_bytes()
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "mine"}) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "mine" / "manifest.json").read_bytes() == before


def test_dry_run_prints_the_plan_and_loads_nothing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--dry-run") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"].startswith("backend=hf")
    dataset = plan["datasets"]["0:data/pubmedqa/ori_pqal.json"]
    assert (dataset["rows"], dataset["held_out_pubmedqa_test"], dataset["used"]) == (1000, 500, 16)
    assert dataset["leakage_guard"] == {"evaluation_items_checked": 500, "overlapping_training_items": 0}
    assert plan["optimizer_steps"] == 4
    assert not out.exists()


def test_config_errors_exit_2_with_one_message(tmp_path, capsys):
    assert main(["--set", "training.lerning_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'learning_rate'" in err and "Traceback" not in err


def test_test_mode_without_any_trained_adapter_says_what_to_do(tmp_path, capsys):
    assert main(["--mode", "test", "--output-dir", str(tmp_path)]) == 2
    assert "Train one first" in capsys.readouterr().err


def test_ctrl_c_during_training_saves_the_adapter(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from trl import SFTTrainer

    original = SFTTrainer.training_step
    calls = {"n": 0}

    def interrupt_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", interrupt_on_third_step)
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "full") == 130
    run = only_run(out)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "Interrupted (Ctrl-C) at step 2" in capsys.readouterr().err
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"


def test_bad_data_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from medqlora import backends

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(backends, "load_for_training", must_not_load)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\nnot json\n')
    out = tmp_path / "outputs"
    argv = ["--mode", "train", "--output-dir", str(out), "--set", f"data.datasets=[{{source: {bad}, format: instruction}}]"]
    assert main(argv) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert json.loads((only_run(out) / "manifest.json").read_text())["status"] == "failed"


def test_training_items_are_recorded_for_later_overlap_checks(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train") == 0
    items = [json.loads(line) for line in (only_run(out) / "training_items.jsonl").read_text().splitlines()]
    assert len(items) == 16 and all(len(i["question_sha1_16"]) == 16 and i["uid"] for i in items)
    from medqlora.data import pubmedqa_test_ids

    assert not {i["uid"] for i in items} & pubmedqa_test_ids()
    stats = json.loads((only_run(out) / "data_stats.json").read_text())
    assert 0 <= stats["total"]["padding_fraction"]["length_grouped_batches"] < 1


def test_eval_mode_scores_base_and_adapter_without_overwriting(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train") == 0
    run = only_run(out)
    assert run_tiny(tiny_model_dir, out, "--mode", "eval") == 0
    report = json.loads((run / "eval.json").read_text())["benchmarks"]["pubmedqa"]
    assert report["baseline"]["items"] == 12 and report["fine_tuned"]["items"] == 12
    assert run_tiny(tiny_model_dir, out, "--mode", "eval", "--no-baseline") == 0
    second = [p for p in run.glob("eval-*.json")]
    assert len(second) == 1 and json.loads(second[0].read_text())["benchmarks"]["pubmedqa"]["baseline"] is None
    assert "pubmedqa" in capsys.readouterr().out


def test_eval_mode_on_the_base_model_alone(tiny_model_dir, tmp_path):
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "eval", "--adapter", "none",
               **{"eval.benchmarks": "[{name: medmcqa, kind: multiple_choice, source: data/medmcqa/dev_subset.jsonl, "
                                     "max_items: 6}]"}) == 0
    run = only_run(out)
    assert run.name.startswith("base-eval-")
    report = json.loads((run / "eval.json").read_text())["benchmarks"]["medmcqa"]
    assert report["fine_tuned"] is None and report["baseline"]["items"] == 6
    assert sum(report["baseline"]["predicted"].values()) == 6


def test_eval_mode_on_a_chain_of_thought_set(tiny_model_dir, tmp_path):
    rows = tmp_path / "heldout.jsonl"
    rows.write_text("".join(json.dumps({"Question": f"Case {i}: cause of anaemia?", "Complex_CoT": "Think.",
                                        "Response": "Iron deficiency."}) + "\n" for i in range(3)))
    out = tmp_path / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "eval", "--adapter", "none", **{
        "eval.benchmarks": f"[{{name: o1-heldout, kind: cot, source: {rows}, cot_style: tags}}]",
        "eval.max_new_tokens": "6"}) == 0
    result = json.loads((only_run(out) / "eval.json").read_text())["benchmarks"]["o1-heldout"]["baseline"]
    assert result["items"] == 3 and result["style"] == "tags" and result["format_compliance"] == 0.0
    assert "## Chain-of-thought format" in (only_run(out) / "eval_report.md").read_text()


@pytest.mark.slow
def test_a_resumed_full_run_checks_its_own_queries_file_before_anything_runs(tmp_path, capsys, monkeypatch):
    """--resume continues with the run's config.yaml: its generation.queries_file is the one checked, at once."""
    from medqlora.recipe import Recipe

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("training resumed before the queries file was checked")

    monkeypatch.setattr(Recipe, "resolve_config", must_not_run)
    run = tmp_path / "outputs" / "cut"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    saved = load_config(None, [f"generation.queries_file={tmp_path / 'gone.yaml'}"])
    (run / "config.yaml").write_text(saved.to_yaml())
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["--mode", "full", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"generation.queries_file: '{tmp_path / 'gone.yaml'}' not found" in err and "Traceback" not in err
    assert sorted(p.name for p in run.rglob("*")) == before
    assert main(["--mode", "train", "--resume", str(run), "--dry-run"]) == 0  # train never answers them


def test_every_mode_of_the_command_line_is_a_sequence_of_the_recipe():
    """The mode names live in commands.py: argparse offers exactly those, and the recipe runs each of them."""
    from medqlora.cli import parser
    from medqlora.commands import ADAPTER_MODES, MODES, TRAINING_MODES
    from medqlora.recipe import Recipe

    mode_action = next(a for a in parser()._actions if a.dest == "mode")
    assert tuple(mode_action.choices) == MODES
    assert set(TRAINING_MODES) | set(ADAPTER_MODES) == set(MODES) and not set(TRAINING_MODES) & set(ADAPTER_MODES)
    recipe = Recipe(load_config(None))
    assert {mode: recipe.stages_of(mode).__name__ for mode in MODES} == {
        "train": "train_mode", "test": "test", "eval": "eval", "full": "full", "export": "export", "chat": "chat"}


def test_the_python_api_runs_a_mode_and_returns_its_adapter_and_metrics(tiny_model_dir, tmp_path, monkeypatch):
    """run_mode is the command line's recipe from Python: a mistyped mode is the kit's one message, and the Run
    points at the adapter and the training figures it wrote."""
    import medqlora
    from medqlora.errors import ConfigError, MedQLoRAError

    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out"))
    with pytest.raises(ConfigError, match="not a mode of the kit; choose one of train, test, eval, full"):
        medqlora.run_mode("fulll", cfg)
    with pytest.raises(ConfigError, match="--mode train trains a new one and would ignore it"):
        medqlora.run_mode("train", cfg, adapter="/nonexistent")  # the command line's checks, by the same function
    with pytest.raises(ConfigError, match="--prompt is the one-shot question of --mode chat"):
        medqlora.run_mode("train", cfg, prompt="x")
    with monkeypatch.context() as env:  # the environment is checked first, as the command line checks it
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.delenv(name, raising=False)
        env.setenv("LOCAL_RANK", "0")
        with pytest.raises(MedQLoRAError, match="no launcher started this process"):
            medqlora.run_mode("train", cfg)
    run = medqlora.run_mode("train", cfg)
    assert run.adapter == run.path / "adapter" and (run.adapter / "adapter_model.safetensors").is_file()
    assert run.metrics["steps"] == 4 and run.metrics["train_loss"] > 0
    tested = medqlora.run_mode("test", cfg, adapter=str(run.path))
    assert tested.path == run.path and tested.adapter == run.adapter  # answered into the adapter's run folder
    assert tested.samples.is_file() and tested.samples.parent == run.path
