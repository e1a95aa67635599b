"""Adapter provenance: what a run's records say of the adapter a command uses, through exports of exports, weights
copied over a run's adapter, and a --config beside --resume (docs/errors.md ZD rows)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from medqlora.config import load_config
from medqlora.run_files import Files

from .conftest import assert_one_message, kit_argv, only_run, run_cli, run_tiny


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One finished training run of the tiny model (each test works on a copy of it)."""
    out = tmp_path_factory.mktemp("trained")
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "1"}) == 0
    return only_run(out)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "outputs" / run.name))


def _new_folder(out: Path, known: set) -> Path:
    (new,) = [p for p in out.iterdir() if p.is_dir() and p not in known]
    known.add(new)
    return new


def test_an_export_of_an_export_names_the_training_run_and_its_base_model(tiny_model_dir, tmp_path, capsys, trained):
    """The export of <run>/export/adapter went to a new run folder that recorded nothing of the training run, so an
    export of that export was a foreign adapter: loaded on the export command's model.name, named by the export's
    folder, its training run (base model, training config) lost from the records."""
    from medqlora.adapter_origin import origin_run

    run = _copy(trained, tmp_path)
    out, known = run.parent, {run}
    other = {"model.name": "someone/other-model"}  # the export command's model: never the one the adapter learnt on
    adapter = run
    for _ in range(3):  # the run's adapter, its export, the export of that export
        result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(adapter), **other))
        assert result.code == 0, result.err[-3000:]
        holder = run if adapter == run else _new_folder(out, known)
        adapter = holder / Files.EXPORT / Files.ADAPTER
    last = holder
    assert last.name.startswith(f"{run.name}-export-") and "is not in a run folder" not in result.err + result.out
    origin = json.loads((last / Files.ORIGIN).read_text())
    assert origin["origin_run"] == str(run.resolve()) and origin["adapter"] == "export/adapter"
    report = json.loads((last / Files.EXPORT / Files.EXPORT_REPORT).read_text())
    assert report["adapter"] == f"{run.name}/export/adapter"
    assert report["base_model"] == "model (a local folder)"  # the training run's (tiny_model_dir), not other-model
    exported = json.loads((last / Files.EXPORT / "adapter" / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == "model"
    assert origin_run(last / Files.EXPORT / Files.ADAPTER) == run.resolve()
    _other_weights(last / Files.EXPORT / Files.ADAPTER / "adapter_model.safetensors")
    assert origin_run(last / Files.EXPORT / Files.ADAPTER) is None  # other weights there: none of the run's


def _other_weights(weights: Path) -> None:
    """Another adapter of the same shapes written over ``weights`` (run B's adapter copied over run A's)."""
    from safetensors.torch import load_file, save_file

    tensors = {name: tensor + 0.01 for name, tensor in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_other_weights_copied_over_a_runs_adapter_make_it_a_foreign_adapter(tiny_model_dir, tmp_path, capsys,
                                                                            trained):
    """Nothing recorded which weights a run saved: run B's adapter copied over run A's adapter/ was taken as A's
    (A's records, A's trained-on list, its export written into A's folder)."""
    run = _copy(trained, tmp_path)
    weights = run / Files.ADAPTER / "adapter_model.safetensors"
    manifest = json.loads((run / Files.MANIFEST).read_text())
    assert manifest["adapter_sha256"] == [hashlib.sha256(weights.read_bytes()).hexdigest()]
    _other_weights(weights)
    before = sorted(p.name for p in run.iterdir())
    result = run_cli(capsys, kit_argv(tiny_model_dir, run.parent, "--mode", "export", "--adapter", str(run)))
    assert result.code == 0, result.err[-3000:]
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into run A
    (new,) = [p for p in run.parent.iterdir() if p != run]
    assert new.name.startswith(f"foreign-{run.name}-") and not (new / Files.ORIGIN).exists()
    said = result.err + result.out
    assert f"note: {run / Files.ADAPTER} holds other weights than the ones the run {run} saved" in said
    assert "holds weights its run did not save: its results go to" in said
    # a run written before the kit recorded its weights (no adapter_sha256) is taken as it is
    del manifest["adapter_sha256"]
    (run / Files.MANIFEST).write_text(json.dumps(manifest))
    result = run_cli(capsys, kit_argv(tiny_model_dir, run.parent, "--mode", "export", "--adapter", str(run)))
    assert result.code == 0, result.err[-3000:]
    assert (run / Files.EXPORT / "adapter" / "adapter_model.safetensors").is_file()


def test_resume_refuses_a_config_other_than_the_runs_own(tiny_model_dir, tmp_path, capsys, trained):
    """--resume RUN --config OTHER.yaml trained on with the run's config.yaml, OTHER ignored without a word (--set
    beside --resume is refused); the run's own file, or a copy of it, is taken."""
    run = _copy(trained, tmp_path)
    state = run / Files.CHECKPOINTS / "checkpoint-1" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"global_step": 1}')  # a checkpoint left by an interrupted run
    saved = load_config(run / Files.CONFIG)
    other = tmp_path / "other.yaml"
    other.write_text(saved.model_copy(update={"training": saved.training.model_copy(
        update={"learning_rate": 0.05})}).to_yaml())
    argv = ["--mode", "train", "--resume", str(run), "--dry-run", "--config"]
    result = run_cli(capsys, [*argv, str(other)])
    assert result.code == 2
    assert_one_message(result.err, f"--resume {run} continues the run with its own config.yaml, and --config {other} "
                                   "differs from it: training.learning_rate: 0.05 (the run's: 0.0002). Leave out "
                                   "--config")
    copy = tmp_path / "copy.yaml"
    shutil.copy(run / Files.CONFIG, copy)
    for config in (run / Files.CONFIG, copy):
        result = run_cli(capsys, [*argv, str(config)])
        assert result.code == 0, result.err[-3000:]
        assert json.loads(result.out)["resumes"].startswith(f"{run} from checkpoint-1")
