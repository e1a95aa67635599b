"""Inputs of a hostile review that the kit handled badly, each with the behaviour it has now (docs/errors.md YD rows).

Findings handled here: 075, 081, 093, 094, 100."""

import fcntl
import json
import os

import pytest

from .conftest import assert_one_message, run_cli


def _run_in_training(tmp_path):
    """A run folder of the kit whose training runs now: no adapter saved yet, its lock held (here by this test)."""
    from medqlora.config import load_config

    run = tmp_path / "outputs" / "busy"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "manifest.json").write_text(json.dumps({"status": "training", "kit_version": "0.1.0"}))
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    return run, fd


@pytest.mark.parametrize("argv", [["--mode", "eval", "--adapter", "{run}"],
                                  ["--mode", "train", "--set", "training.init_adapter={run}"]])
def test_an_adapter_of_a_run_still_training_says_so_and_never_advises_training_it_again(tmp_path, capsys, argv):
    """A run still training (its lock held by a live process) was described as stopped, with 'Train it again'."""
    run, fd = _run_in_training(tmp_path)
    try:
        code, _, err = run_cli(capsys, ["--dry-run", *(a.format(run=run) for a in argv)])
    finally:
        os.close(fd)
    assert code == 2
    assert_one_message(err, "is a run folder of this kit that is still training (process 4242 holds its lock): its "
                            "adapter is saved when that training ends. Wait for it to end")
    assert "Train it again" not in err
    code, _, err = run_cli(capsys, ["--dry-run", *(a.format(run=run) for a in argv)])
    assert code == 2 and "stopped before its adapter was saved" in err  # the lock let go: the training has stopped


WROTE_NOTHING = "ended without error but wrote no model-q4_k_m.gguf (the kit runs it as llama-quantize INPUT.gguf"


@pytest.mark.parametrize("body,said", [("echo quantizing; exit 0", WROTE_NOTHING),
                                       ("echo 'unknown type' >&2; exit 1", "failed (exit 1): unknown type")],
                         ids=["writes-nothing", "fails"])
def test_a_llama_quantize_that_does_not_work_is_advised_as_a_program_not_as_a_converter(tmp_path, body, said):
    """A llama-quantize on PATH that exits 0 and writes nothing got the converter's advice (--outfile / --outtype,
    pip install ./gguf-py), which does not fit a compiled program taking positional arguments."""
    from medqlora.export.llama_cpp import ToolFailed, run_tool

    program = tmp_path / "bin" / "llama-quantize"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)
    source, out = tmp_path / "model-f16.gguf", tmp_path / "model-q4_k_m.gguf"
    with pytest.raises(ToolFailed) as failed:
        run_tool([str(program), str(source), str(out), "Q4_K_M"], "llama-quantize", out)
    message = str(failed.value)
    assert f"llama-quantize in {program.parent} {said}" in message
    assert "Build llama-quantize from a current llama.cpp checkout" in message
    assert "set export.gguf_type to one the converter writes itself instead of q4_k_m: q8_0, f16, bf16, f32" in message
    assert "gguf-py" not in message and "--outfile" not in message


def _kit_run(folder, *overrides, r=16):
    """A run folder of the kit with an adapter of rank ``r`` (no weights: the card reads configs only)."""
    from medqlora.config import load_config

    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "tiny", "r": r, "lora_alpha": 2 * r,
         "target_modules": ["v_proj", "q_proj"]}))
    (folder / "config.yaml").write_text(load_config(None, list(overrides)).to_yaml())
    (folder / "manifest.json").write_text(json.dumps({"kit_version": "0.1.0", "status": "trained"}))
    return folder


def test_the_model_card_describes_the_exported_adapters_own_run_not_the_export_commands_config(tmp_path):
    """The card took training.init_adapter and lora: from the export command's config: a plain --mode export
    --adapter STAGE2 lost the stage it started from, and an init_adapter left in the export's config gave a
    fresh run a false lineage (with another run's evaluation-overlap warning)."""
    from medqlora.config import load_config
    from medqlora.report import model_card
    from medqlora.runs import RunDir

    leak = _kit_run(tmp_path / "leak", "data.datasets=[{source: pqtest.jsonl, format: instruction}]",
                    "data.allow_eval_overlap=true")
    stage2 = _kit_run(tmp_path / "s2", "data.datasets=[{source: ins.jsonl, format: instruction}]",
                      f"training.init_adapter={leak / 'adapter'}", r=8)
    fresh = _kit_run(tmp_path / "base", "data.datasets=[{source: ins.jsonl, format: instruction}]")
    report = {"formats": ["adapter"]}

    card = model_card(load_config(None), RunDir(stage2), report, stage2 / "adapter")
    assert "- started from the adapter of the run leak (training.init_adapter), trained on:" in card
    assert "  - local file pqtest.jsonl (format instruction" in card and "LoRA r=8, alpha=16 on q_proj, v_proj" in card

    export_cfg = load_config(None, [f"training.init_adapter={leak}", "lora.r=4"])
    card = model_card(export_cfg, RunDir(fresh), report, fresh / "adapter")
    assert "leak" not in card and "pqtest" not in card and "allow_eval_overlap" not in card
    assert "- local file ins.jsonl (format instruction" in card and "LoRA r=16, alpha=32" in card

    foreign = tmp_path / "downloaded" / "lora"
    foreign.mkdir(parents=True)
    (foreign / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "tiny", "r": 4, "lora_alpha": 4, "target_modules": "q_proj"}))
    card = model_card(export_cfg, RunDir(tmp_path / "downloaded"), report, foreign)
    assert "- unknown: this adapter was trained outside medqlora's run folders" in card and "leak" not in card


def test_records_appended_after_a_cut_line_start_on_a_line_of_their_own(tmp_path, capsys):
    """A kill -9 while grpo_samples.jsonl was written leaves its last record cut; the resumed run glued its first
    sample onto it ('...What is 15+1{"step": 2, ...}'), so the file stayed invalid JSONL and that sample was lost."""
    import logging

    from medqlora.messages import begin_command
    from medqlora.run_lock import release_run_folders
    from medqlora.runs import RunDir

    (tmp_path / "grpo_samples.jsonl").write_text('{"step": 0, "reward": 1}\n{"step": 1, "prompt": "What is 15+1')
    (tmp_path / "run.log").write_text("step 1 done\nstep 2 sta")
    run = RunDir(tmp_path)
    run.append_text("grpo_samples.jsonl", '{"step": 2, "reward": 0}\n')
    run.append_text("grpo_samples.jsonl", '{"step": 3, "reward": 1}\n')
    run.start_log()
    try:
        logging.getLogger("medqlora").info("resuming")
    finally:
        release_run_folders()
        begin_command()  # run.log closed
    records = [json.loads(line) for line in (tmp_path / "grpo_samples.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 2, 3]
    assert "grpo_samples.jsonl ended in a cut record (35 bytes, a command stopped while writing it)" in (
        capsys.readouterr().out)
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert lines[:2] == ["step 1 done", "step 2 sta"] and lines[-1].endswith("INFO resuming")
