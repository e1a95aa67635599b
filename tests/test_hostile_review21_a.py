"""Hostile round 21: a run repeated from its own config.yaml, and the advice for a run stopped before its first
checkpoint."""

import json
from pathlib import Path

import pytest

from medqlora import adapter_runs
from medqlora.config import load_config
from medqlora.errors import ModelError
from medqlora.export import left_for_export_mode

from .conftest import kit_argv, run_cli


def _saved(cfg, tmp_path: Path, name: str = "config.yaml") -> Path:
    """A config written as a run folder writes its config.yaml: every value, defaults included."""
    path = tmp_path / name
    path.write_text(cfg.to_yaml())
    return path


def test_a_runs_own_config_yaml_sets_no_export_setting_a_training_mode_would_warn_of(tmp_path):
    """A run repeated with --config RUN/config.yaml (as the README says) warned that export.formats and
    export.push_to_hub are for --mode export: the file writes every default, push_to_hub: null included."""
    again = load_config(_saved(load_config(None, []), tmp_path))
    assert {"formats", "push_to_hub"} <= again.export.model_fields_set
    assert left_for_export_mode(again, "train") is None and left_for_export_mode(again, "full") is None
    chosen = load_config(_saved(load_config(None, ["export.formats=[adapter, merged]"]), tmp_path, "merged.yaml"))
    assert left_for_export_mode(chosen, "train").startswith("export.formats is for --mode export")


def test_the_dry_run_of_a_run_repeated_from_its_config_plans_no_export_note(tiny_model_dir, tmp_path, capsys):
    saved = _saved(load_config(None, []), tmp_path)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", "--config",
                                      str(saved)))
    assert result.code == 0, result.err[-2000:]
    assert "export" not in json.loads(result.out) and "for --mode export" not in result.out + result.err


def _stopped_run(tmp_path: Path, checkpoint: bool) -> Path:
    """A kit run folder whose training a signal stopped (adapter trained so far saved), with or without a
    checkpoint to continue from."""
    run = tmp_path / "out" / "sig0"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({
        "kit_version": "0.1.0", "status": "interrupted", "error": "interrupted (SIGTERM) at step 1 of 4",
        "command": ["medical_qlora_finetuning.py", "--mode", "train"]}))
    if checkpoint:
        (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return run


@pytest.mark.parametrize("checkpoint", [False, True])
def test_an_adapter_of_a_run_stopped_before_its_first_checkpoint_is_not_advised_a_resume(tmp_path, monkeypatch,
                                                                                          checkpoint):
    """--adapter / training.init_adapter of a run interrupted before its first checkpoint advised the --resume that
    was refused with 'has no checkpoint to continue from'."""
    said = []
    monkeypatch.setattr(adapter_runs, "say", said.append)

    class Found(Exception):
        pass

    def found(folder):
        raise Found

    monkeypatch.setattr(adapter_runs.adapters, "find", found)
    run = _stopped_run(tmp_path, checkpoint)
    with pytest.raises(Found):
        adapter_runs.find_adapter(None, str(run), str(tmp_path), "training.init_adapter")
    [warning] = said
    assert "its training stopped before its end (status interrupted" in warning
    if checkpoint:
        assert f"to finish it: python medical_qlora_finetuning.py --mode train --config {run}/config.yaml --resume " \
               f"{run})" in warning
    else:
        assert "--resume" not in warning
        assert ("not a finished run's (no checkpoint to continue from (it stopped before its first one, "
                "training.save_steps): train it again as a new run to finish its training)") in warning


@pytest.mark.parametrize("checkpoint", [False, True])
def test_init_adapter_latest_of_a_run_stopped_before_its_first_checkpoint_is_not_advised_a_resume(tmp_path,
                                                                                               checkpoint):
    run = _stopped_run(tmp_path, checkpoint)
    with pytest.raises(ModelError) as refused:
        adapter_runs.check_latest_finished(run / "adapter", "training.init_adapter")
    message = str(refused.value)
    assert f"or set training.init_adapter to {run} to start from that adapter as it is" in message
    if checkpoint:
        assert f"Finish it first (python medical_qlora_finetuning.py --mode train --config {run}/config.yaml" in message
    else:
        assert "--resume" not in message
        assert "It has no checkpoint to continue from (it stopped before its first one, training.save_steps): train " \
               "it again as a new run first" in message


# ---------------------------------------------------------------- adapters a dry run refuses as the run does

def _damaged_copy(lora_folder: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of a whole adapter with half its modules' matrices left out, or one weight NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(lora_folder, tmp_path / damage))
    weights = load_file(folder / "adapter_model.safetensors")
    if damage == "partial":
        weights = {key: value for key, value in weights.items() if ".layers.1." not in key}
    else:
        key = sorted(weights)[0]
        weights[key] = weights[key].clone()
        weights[key].view(-1)[0] = float("nan")
    save_file(weights, folder / "adapter_model.safetensors")
    return folder


@pytest.mark.parametrize(("damage", "said"), [
    ("partial", "is incomplete: its weights file lacks the LoRA matrices of 2 of the 4 modules its "
                "adapter_config.json targets in the base model (e.g. model.layers.1.self_attn.q_proj)"),
    ("nan", "holds NaN or infinite weights (1 tensors")])
@pytest.mark.parametrize("given", ["--adapter", "training.init_adapter"])
def test_the_dry_run_refuses_an_incomplete_or_non_finite_adapter_as_the_run_does(tiny_model_dir, lora_folder,
                                                                                tmp_path, capsys, damage, said,
                                                                                given):
    """--mode eval --adapter ADAPTER --dry-run (14 of an adapter's 28 tensors, or one NaN) planned the run cleanly;
    the run then refused it. training.init_adapter of an incomplete adapter likewise."""
    from .conftest import assert_one_message

    folder = _damaged_copy(lora_folder, tmp_path, damage)
    extra = ["--mode", "eval", "--adapter", str(folder)] if given == "--adapter" else ["--mode", "train"]
    sets = {} if given == "--adapter" else {"training.init_adapter": str(folder)}
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", *extra, **sets))
    assert result.code == 2
    assert_one_message(result.err, said)


def test_a_whole_adapter_and_one_of_some_layers_only_are_complete(lora_folder, tiny_model_dir, tmp_path):
    from medqlora import adapter_base, adapters

    adapter_base.check_base(adapters.find(lora_folder), str(tiny_model_dir), str(tiny_model_dir))
    folder = _damaged_copy(lora_folder, tmp_path, "partial")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "layers_to_transform": [0]}))
    adapter_base.check_base(adapters.find(folder), str(tiny_model_dir), str(tiny_model_dir))


# ---------------------------------------------------------------- a credential in a path

@pytest.mark.parametrize("setting", ["model.name", "data.datasets.0.source", "training.init_adapter",
                                     "generation.queries_file"])
def test_a_path_holding_a_credentials_value_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch, setting):
    """A base model folder named after a token (cp -r tiny m_$HF_TOKEN): the run's records masked it, while PEFT
    wrote it in clear into the adapter's adapter_config.json; and the masked record then read as a model gone."""
    from .conftest import assert_one_message

    token = "Xk9fQ2Lm7Pz4Rt8Wv3Ys"
    monkeypatch.setenv("HF_TOKEN", token)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{setting: f"{tmp_path}/m_{token}"}))
    assert result.code == 2
    assert_one_message(result.err, f"'{setting}': Value error, holds the value of HF_TOKEN: a path is written into "
                                   "the run's records")
    assert token not in result.out + result.err


# ---------------------------------------------------------------- a date as a run name

def test_a_run_name_yaml_reads_as_a_date_says_to_quote_it(tmp_path, capsys):
    from medqlora.config import load_config
    from medqlora.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_config(None, ["output.run_name=2026-12-02"])
    assert "YAML reads 2026-12-02 as a date; to give it as text, quote it: --set 'output.run_name=\"2026-12-02\"'" \
        in str(refused.value)
    assert load_config(None, ['output.run_name="2026-12-02"']).output.run_name == "2026-12-02"
    written = tmp_path / "c.yaml"
    written.write_text(load_config(None, []).to_yaml().replace("run_name: null", "run_name: 2026-12-02"))
    with pytest.raises(ConfigError, match="YAML read the value as a date; if it is meant as text, put it in quotes"):
        load_config(written)


# ---------------------------------------------------------------- generation settings of --mode full

@pytest.mark.parametrize("dry_run", [True, False])
def test_full_mode_checks_max_new_tokens_against_the_context_before_it_trains(tiny_model_dir, tmp_path, capsys,
                                                                               dry_run):
    """--mode full with generation.max_new_tokens beyond the model's context planned cleanly, then evaluated,
    trained and saved the adapter before it refused to answer the sample queries."""
    from .conftest import assert_one_message

    context = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "full", *(["--dry-run"] if dry_run else []),
                    **{"generation.max_new_tokens": str(context * 2)})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, f"generation.max_new_tokens={context * 2:,} leaves no room for a prompt in the "
                                   f"model's context of {context:,} tokens")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- advice run from another folder

def test_the_advice_names_the_script_as_it_can_be_run_where_it_is_printed(tmp_path, monkeypatch):
    """The kit run by its path from another folder (python /opt/kit/medical_qlora_finetuning.py) advised
    'python medical_qlora_finetuning.py --mode train ... --resume RUN', which there cannot open the script."""
    from medqlora.run_commands import command_on_run, kit_command

    kit = tmp_path / "kit"
    kit.mkdir()
    elsewhere = tmp_path / "work folder"
    elsewhere.mkdir()
    monkeypatch.setattr("sys.argv", [str(kit / "medical_qlora_finetuning.py"), "--mode", "train"])
    monkeypatch.chdir(elsewhere)
    assert command_on_run("train", "--resume", "/o/run").startswith(
        f"python {kit}/medical_qlora_finetuning.py --mode train --config /o/run/config.yaml --resume /o/run")
    monkeypatch.chdir(kit)
    assert kit_command() == "python medical_qlora_finetuning.py"
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/medqlora", "--mode", "train"])
    assert kit_command() == "medqlora"
    monkeypatch.setattr("sys.argv", [str(tmp_path / "my kit" / "medical_qlora_finetuning.py")])
    assert kit_command() == f"python '{tmp_path}/my kit/medical_qlora_finetuning.py'"


# ---------------------------------------------------------------- one key set twice

@pytest.mark.parametrize("second", ["training.max_steps=7", " training.max_steps=7", "training.max_steps = 7"])
def test_a_key_set_twice_with_two_values_is_refused_naming_both(second):
    """--set training.max_steps=4 --set training.max_steps=7 trained 7 steps: the first set aside without a word,
    while a key twice in a YAML file is refused."""
    from medqlora.config import load_config
    from medqlora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--set training.max_steps is given twice, with two values \(4, then 7\)"):
        load_config(None, ["training.max_steps=4", second])
    with pytest.raises(ConfigError, match=r"--set data.datasets.0.max_samples is given twice"):
        load_config(None, ["data.datasets.0.max_samples=4", "data.datasets.0.max_samples=5"])
    assert load_config(None, ["training.max_steps=4", "training.max_steps=4"]).training.max_steps == 4


# ---------------------------------------------------------------- a start stopped before training

def test_a_run_folder_left_by_a_start_stopped_before_training_says_how_to_train_again(tiny_model_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    """SIGHUP during data preparation left the run folder (manifest interrupted, run.log) with no word; the same
    command then said only that the folder exists."""
    from medqlora.stages import TrainingStages

    def stopped(self):
        raise KeyboardInterrupt

    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **{"output.run_name": "hup"})
    with monkeypatch.context() as patched:
        patched.setattr(TrainingStages, "load_model", stopped)
        first = run_cli(capsys, argv)
    run = tmp_path / "out" / "hup"
    assert first.code != 0 and json.loads((run / "manifest.json").read_text())["stage"] == "interrupted before training"
    assert f"The run folder {run} keeps the records of this start, with nothing trained: remove it to train again " \
           "under its name, or choose another output.run_name." in first.err
    again = run_cli(capsys, argv)
    assert again.code == 2
    assert f"The run folder {run} already exists: it holds the records of an earlier start of this run, interrupted " \
           f"before training, with nothing trained. Remove it (rm -r {run}) to train under this name" in again.err
    import shutil

    shutil.rmtree(run)
    assert run_cli(capsys, argv).code == 0


# ---------------------------------------------------------------- an adapter whose training is unknown

def test_evaluating_an_adapter_without_training_records_says_the_trained_on_check_cannot_run(tiny_model_dir,
                                                                                          lora_folder, tmp_path,
                                                                                          capsys):
    """A copy of a run's export/adapter scored 500 items, 16 of which it trained on, with no word that what it was
    trained on is unknown there."""
    import shutil

    copied = Path(shutil.copytree(lora_folder, tmp_path / "shared" / "adapter"))
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--adapter", str(copied), "--dry-run")
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err[-2000:]
    assert f"warning: the adapter {copied} is not in a run folder of this kit and has no training_items.jsonl beside " \
           "it, so what it was trained on is unknown: its scores cannot be checked" in result.out + result.err
    (copied.parent / "training_items.jsonl").write_text("")  # records beside it: they are checked, no warning
    checked = run_cli(capsys, argv)
    assert checked.code == 0 and "what it was trained on is unknown" not in checked.out + checked.err


# ---------------------------------------------------------------- the batch a step trains on

@pytest.mark.parametrize(("sets", "said"), [
    ({"training.gradient_accumulation_steps": "1000"},
     "4 x 1000 = 4000; the effective batch of 4 x 1000 = 4000 rows is more than the 16 training examples: each "
     "optimizer step trains on one whole epoch, 16 rows, not 4000."),
    ({"training.micro_batch_size": "64", "training.gradient_accumulation_steps": "1"},
     "in micro-batches of 16 (micro_batch_size 64 is more than the examples)"),
    ({"training.gradient_accumulation_steps": "3"},
     "4 x 3 = 12; each epoch's 4 micro-batches make 1 optimizer step of 12 rows and a last one of 1 micro-batch "
     "(4 rows): the Trainer ends a step at the end of an epoch"),
])
def test_the_plan_says_the_batch_a_step_trains_on_where_it_is_not_the_configured_one(tiny_model_dir, tmp_path,
                                                                                    capsys, sets, said):
    """gradient_accumulation_steps 1000 (or a micro-batch of 64) on 16 rows planned an effective batch of 4000 (256)
    while each step trained one epoch, 16 rows; accumulation 3 on 4 micro-batches made steps of 3 and 1."""
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"data.datasets.0.max_samples": "16", "training.micro_batch_size": "4",
                                         "training.packing": "false", **sets}))
    assert result.code == 0, result.err[-2000:]
    assert said in json.loads(result.out)["effective_batch"]


def test_a_run_whose_step_would_hold_more_than_the_data_warns_and_an_even_one_says_nothing():
    from medqlora.config import load_config
    from medqlora.train import batch_notes

    cfg = load_config(None, ["training.micro_batch_size=4", "training.gradient_accumulation_steps=4",
                             "training.packing=false"])
    assert batch_notes(cfg, 160) == (None, None)  # 40 micro-batches: 10 steps of 4
    assert batch_notes(cfg, 8)[0].startswith("the effective batch of 4 x 4 = 16 rows is more than the 8 training")
    assert batch_notes(cfg, 18) == (None, "each epoch's 5 micro-batches make 1 optimizer step of 16 rows and a last "
                                          "one of 1 micro-batch (2 rows): the Trainer ends a step at the end of an "
                                          "epoch")
    grpo = load_config(None, ["training.method=grpo"])
    assert batch_notes(grpo, 3) == (None, None)  # GRPO counts completions: its own checks


# ---------------------------------------------------------------- transformers' warning on every first answer

def test_a_bpe_tokenizer_asking_for_cleanup_decodes_the_same_without_transformers_warning(tiny_model_dir, capsys):
    """Every run on SmolLM2 printed transformers' 'Ignoring clean_up_tokenization_spaces=True for BPE tokenizer ...
    destructive for BPE' at its first answer: the config asks for a cleanup that transformers ignores anyway."""
    from transformers import AutoTokenizer

    from medqlora.backends.tokenizer import load_tokenizer
    from medqlora.config import load_config

    text = "Is it safe , doctor ? Yes ."
    raw = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert raw.clean_up_tokenization_spaces  # what the tokenizer's config asks
    loaded = load_tokenizer(load_config(None, [f"model.name={tiny_model_dir}"]), str(tiny_model_dir))
    assert loaded.clean_up_tokenization_spaces is False
    assert loaded.decode(loaded(text)["input_ids"]) == raw.decode(raw(text)["input_ids"]) == text
