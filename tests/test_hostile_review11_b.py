"""Hostile and unlucky inputs of the Python API, resume, run folders and adapters: a config edited in place before
run_mode, a resumed run given a different config, grpo.overlong_buffer's automatic value, an adapter copied into
another run's folder, an export of an export, an init_adapter that vanishes, and the plan of a tracked run."""

import json

import pytest
import yaml

import medqlora
from medqlora.config import load_config, revalidate
from medqlora.errors import ConfigError
from medqlora.run_files import Files

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides

GRPO = ["training.method=grpo", "data.datasets=[{source: data/medmcqa/train.jsonl, format: multiple_choice}]",
        "data.eval_sets=[]"]


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    return load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out"))


def test_settings_edited_in_place_reach_the_run_as_assignment_does(cfg):
    """A list or mapping edited in place, and a setting assigned in a section the config never gave, are
    validated with the rest and used, never dropped for the value before the edit."""
    cfg.lora.target_modules.remove("o_proj")
    cfg.training.report_to.append("wandb")
    cfg.data.datasets[0].columns["question"] = "q"
    cfg.grpo.beta = 0.5  # the grpo: section is not in the file
    checked = revalidate(cfg, "run_mode")
    assert "o_proj" not in checked.lora.target_modules and "q_proj" in checked.lora.target_modules
    assert checked.training.report_to == ["tensorboard", "wandb"]
    assert checked.data.datasets[0].columns == {"question": "q"}
    assert checked.grpo.beta == 0.5
    cfg.eval.lm_eval.tasks.append("no_such_task")  # an edit in place is checked like an assignment
    with pytest.raises(ConfigError, match="unknown task 'no_such_task'"):
        revalidate(cfg, "run_mode")


def test_a_list_setting_emptied_in_place_is_what_the_run_uses(cfg):
    """training.report_to is not in the config file: emptied in place, the run writes no TensorBoard events and
    its config.yaml says so (before, the run used ['tensorboard'])."""
    cfg.training.report_to.clear()
    cfg.lora.target_modules[:] = ["q_proj", "v_proj"]
    cfg.training.max_steps = 1
    run = medqlora.run_mode("train", cfg)
    assert not (run.path / Files.TENSORBOARD).exists()
    recorded = yaml.safe_load((run.path / Files.CONFIG).read_text())
    assert recorded["training"]["report_to"] == []
    adapter = json.loads((run.adapter / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_the_automatic_overlong_buffer_stays_automatic_and_says_where_it_comes_from():
    short = load_config(None, [*GRPO, "grpo.max_completion_length=32"])
    assert short.grpo.overlong_tokens() == 8
    assert "overlong_buffer" not in short.grpo.model_fields_set
    from medqlora.grpo import reward_plan

    assert reward_plan(short)["overlong_buffer"] == ("8 (grpo.overlong_buffer auto: a quarter of "
                                                     "grpo.max_completion_length 32)")
    # the run's config.yaml keeps auto: rerun with a shorter completion, the buffer follows it
    recorded = yaml.safe_load(short.to_yaml())
    assert recorded["grpo"]["overlong_buffer"] == "auto"
    recorded["grpo"]["max_completion_length"] = 16
    from medqlora.config import validate

    assert validate(recorded).grpo.overlong_tokens() == 4
    # a method other than grpo names the setting the user gave, never the derived buffer
    from medqlora.methods import unused_method_settings

    sft = load_config(None, ["grpo.max_completion_length=32"])
    notes = unused_method_settings(sft)
    assert notes and "grpo.max_completion_length is a setting" in notes[0] and "overlong_buffer" not in notes[0]
    with pytest.raises(ConfigError, match=r"overlong_buffer \(40\) is not below max_completion_length \(32\)"):
        load_config(None, [*GRPO, "grpo.max_completion_length=32", "grpo.overlong_buffer=40"])


def test_run_mode_resume_refuses_a_config_other_than_the_runs_own(cfg):
    """--resume takes no --set on the command line; run_mode(resume=RUN) with other values is refused the same way,
    naming what differs, instead of training on with the run's config.yaml and ignoring them."""
    from medqlora import resume

    cfg.training.max_steps = 2
    run = medqlora.run_mode("train", cfg)
    state = run.path / Files.CHECKPOINTS / "checkpoint-1" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"global_step": 1}')  # a checkpoint left by an interrupted run
    changed = cfg.model_copy(deep=True)
    changed.training.learning_rate = 0.05
    changed.lora.target_modules.append("lm_head")
    with pytest.raises(ConfigError) as refused:
        medqlora.run_mode("train", changed, resume=run.path)
    message = str(refused.value)
    assert "differs from the run's own config.yaml" in message
    assert "training.learning_rate: 0.05 (the run's: 0.0002)" in message and "lora.target_modules" in message
    assert "load_config(" in message and "config.yaml" in message
    # the config the run was started with is the run's own: nothing to refuse
    saved = load_config(run.path / Files.CONFIG)
    resume.refuse_other_config(revalidate(cfg, "run_mode"), run=resume.RunDir(run.path), saved=saved)
    assert json.loads((run.path / Files.MANIFEST).read_text())["status"] == "trained"  # the run was left alone


def test_the_plan_lists_the_folders_the_trackers_write(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """--dry-run's outputs name what the run writes: wandb/ where W&B logs into the run folder, no tensorboard/
    where TensorBoard is not among training.report_to."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                    **{"training.report_to": "[wandb]", "training.wandb_offline_without_key": "true"})
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err[-2000:]
    outputs = json.loads(result.out)["outputs"]
    assert "wandb/" in outputs and "tensorboard/" not in outputs
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # W&B's files go where the user sends them
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train"))
    assert "tensorboard/" in json.loads(result.out)["outputs"]
    result = run_cli(capsys, argv)
    assert "wandb/" not in json.loads(result.out)["outputs"]


@pytest.fixture
def run_with_checkpoint(cfg):
    """A finished run with a checkpoint folder beside its adapter (as a training in progress leaves them)."""
    import shutil

    cfg.training.max_steps = 1
    run = medqlora.run_mode("train", cfg)
    checkpoint = run.path / Files.CHECKPOINTS / "checkpoint-1"
    shutil.copytree(run.adapter, checkpoint)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 1}')
    return run.path, checkpoint


def test_init_adapter_refuses_a_checkpoint_of_a_run_still_training(tiny_model_dir, tmp_path, capsys,
                                                                   run_with_checkpoint):
    """That training rotates its checkpoints away (training.keep_checkpoints): refused while its lock is held,
    with the copy to make; taken once the training has ended."""
    import subprocess
    import sys

    run, checkpoint = run_with_checkpoint
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); print('locked', flush=True); time.sleep(120)"),
        str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = kit_argv(tiny_model_dir, tmp_path / "out2", "--mode", "train", **{
            "training.init_adapter": str(checkpoint), "training.max_steps": "1"})
        result = run_cli(capsys, argv)
        assert result.code == 2
        assert_one_message(result.err, f"is a checkpoint of the run {run}, which is training now (process 4242")
        assert f"cp -r {checkpoint} <folder>" in result.err
        assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())  # no run folder begun
    finally:
        holder.kill()
        holder.wait()
    result = run_cli(capsys, argv)  # the training ended: its checkpoint stays, and is started from
    assert result.code == 0, result.err[-2000:]


def test_an_init_adapter_that_vanishes_while_checked_ends_in_one_message(tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch, run_with_checkpoint):
    import shutil

    from medqlora import adapters

    _, checkpoint = run_with_checkpoint
    check_finite = adapters.check_finite

    def rotated_away(folder):
        shutil.rmtree(folder)  # the training's save_total_limit, between the check and the read
        check_finite(folder)

    monkeypatch.setattr(adapters, "check_finite", rotated_away)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out2", "--mode", "train", **{
        "training.init_adapter": str(checkpoint), "training.max_steps": "1"}))
    assert result.code == 2
    assert_one_message(result.err, f"training.init_adapter {checkpoint}: ")
    assert "vanished while the adapter was being checked" in result.err


def test_an_adapter_copied_into_another_runs_folder_writes_its_results_into_a_new_run(tiny_model_dir, tmp_path,
                                                                                      capsys, run_with_checkpoint):
    """Run B's adapter copied into run A's folder (A/adapter-from-b) is not A's: A's records do not describe it, so
    its export goes to a new run folder under output.dir, and run A's folder gets nothing."""
    import shutil

    run_a, _ = run_with_checkpoint
    copied = run_a / "adapter-from-b"
    shutil.copytree(run_a / Files.ADAPTER, copied)
    before = sorted(p.name for p in run_a.iterdir())
    out = tmp_path / "exports"
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(copied)))
    assert result.code == 0, result.err[-2000:]
    assert sorted(p.name for p in run_a.iterdir()) == before  # nothing written into run A
    (new_run,) = [p for p in out.iterdir() if p.is_dir()]
    assert new_run.name.startswith("foreign-adapter-from-b")
    assert (new_run / Files.EXPORT / "adapter" / "adapter_model.safetensors").is_file()
    assert "is not in a run folder of this kit" in result.err + result.out
