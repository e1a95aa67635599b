"""Hostile round 16, run folders: --output-dir inside a finished run's folder or its adapter/ made a new run folder
there, changing that run (and the adapter folder users copy or upload) after the fact, without a word."""

import pytest

from .conftest import assert_one_message, kit_argv, run_cli


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    from medqlora.cli import main

    out = tmp_path_factory.mktemp("finished")
    assert main(kit_argv(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "runA"})) == 0
    return out / "runA"


@pytest.mark.parametrize("inside", ["", "adapter", "adapter/new", "checkpoints"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_output_folder_inside_a_run_folder_is_refused(finished_run, tiny_model_dir, capsys, inside, dry_run):
    output = finished_run / inside if inside else finished_run
    before = sorted(p.relative_to(finished_run) for p in finished_run.rglob("*"))
    argv = kit_argv(tiny_model_dir, output, "--mode", "train", **{"output.run_name": "runB"})
    result = run_cli(capsys, argv + (["--dry-run"] if dry_run else []))
    assert result.code == 2
    assert_one_message(result.err, f"The output folder {output} (--output-dir or output.dir) lies inside the run "
                                   f"folder {finished_run} (its manifest.json and config.yaml)")
    assert f"Choose an output folder outside it, e.g. {finished_run.parent}." in result.err
    assert sorted(p.relative_to(finished_run) for p in finished_run.rglob("*")) == before


def test_the_folder_holding_run_folders_is_no_run_folder(finished_run, tiny_model_dir, capsys):
    argv = kit_argv(tiny_model_dir, finished_run.parent, "--mode", "train", "--dry-run", **{"output.run_name": "runB"})
    assert run_cli(capsys, argv).code == 0
