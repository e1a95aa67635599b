"""Hostile and unlucky inputs around adapters, run folders and exports: a run folder killed before its adapter was
saved, a GGUF LoRA file or the merged export given where an adapter belongs, a resume whose start adapter was moved,
a GGUF converter that runs and fails, the base model's local path in an exported adapter, and a second-stage run's
record of what it was trained on."""

import json
from pathlib import Path

import pytest

from medqlora import adapters
from medqlora.errors import ModelError


def _kit_run(folder: Path, status: str = "training") -> Path:
    """A run folder of the kit as a killed run leaves it: manifest and config, no adapter/ yet."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kit_version": "0.1.0", "status": status}))
    (folder / "config.yaml").write_text("model:\n  name: m\n")
    return folder


def _gguf_lora(path: Path) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("flag", ["--adapter", "training.init_adapter"])
def test_a_run_killed_before_its_adapter_was_saved_says_so_and_how_to_finish_it(tmp_path, flag):
    run = _kit_run(tmp_path / "ck1")
    with pytest.raises(ModelError, match="before its first checkpoint") as caught:
        adapters.locate(str(run), flag)
    assert "no adapter_config.json there" not in str(caught.value)
    checkpoint = run / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / adapters.CONFIG_NAME).write_text("{}")
    (run / "checkpoints" / "checkpoint-2").mkdir()
    (run / "checkpoints" / "checkpoint-2" / adapters.CONFIG_NAME).write_text("{}")
    with pytest.raises(ModelError) as caught:
        adapters.locate(str(run), flag)
    message = str(caught.value)
    assert "stopped before its adapter was saved" in message
    assert f"--mode train --config {run / 'config.yaml'} --resume {run}" in message and str(checkpoint) in message
    # a folder that is not the kit's keeps the plain answer
    (tmp_path / "other").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json there"):
        adapters.locate(str(tmp_path / "other"), flag)


@pytest.mark.parametrize("flag", ["--adapter", "training.init_adapter"])
def test_a_gguf_lora_file_points_at_the_run_adapter_folder_not_its_own(tmp_path, flag):
    run = _kit_run(tmp_path / "base", status="trained")
    (run / "adapter").mkdir()
    gguf_file = _gguf_lora(run / "export-20260101-000000" / "gguf_lora" / "adapter-f16.gguf")
    with pytest.raises(ModelError) as caught:
        adapters.locate(str(gguf_file), flag)
    message = str(caught.value)
    named = f"{flag} " if flag.startswith("--") else f"{flag}="
    assert "can neither load a GGUF LoRA as an adapter nor train from one" in message
    advice = message.split("Give ", 1)[1]
    assert f"{named}{run / 'adapter'}" in advice and "export-2026" not in advice  # not the folder of the .gguf
    assert "--set model.name=" not in message  # its header says it is a LoRA, not a model


@pytest.mark.parametrize("flag,advice", [("--adapter", "--adapter none"),
                                         ("training.init_adapter", "without training.init_adapter")])
def test_the_merged_export_given_as_an_adapter_is_named_a_full_model(tmp_path, flag, advice):
    merged = tmp_path / "export" / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as caught:
        adapters.locate(str(merged), flag)
    assert f"--set model.name={merged}" in str(caught.value) and advice in str(caught.value)


def _fake_llama_cpp(folder: Path, body: str) -> Path:
    folder.mkdir()
    for script in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        (folder / script).write_text(body)
    return folder


FAILING = "import sys\nprint('boom: gguf module too old', file=sys.stderr)\nsys.exit(1)\n"
SILENT = "import sys\nsys.exit(0)\n"


@pytest.mark.parametrize("body,said", [(FAILING, "failed (exit 1): boom: gguf module too old"),
                                       (SILENT, "ended without error but wrote no adapter-f16.gguf")],
                         ids=["fails", "writes-nothing"])
def test_a_gguf_lora_converter_that_runs_and_fails_keeps_what_was_exported(lora_folder, tiny_model_dir, tmp_path,
                                                                          monkeypatch, capsys, body, said):
    from .conftest import assert_one_message, kit_argv, run_cli

    monkeypatch.setenv("LLAMA_CPP_DIR", str(_fake_llama_cpp(tmp_path / "llama.cpp", body)))
    out = tmp_path / "out"
    alone = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(lora_folder),
                                     **{"export.formats": "[gguf_lora]"}))
    assert alone.code == 2
    assert_one_message(alone.err, said)
    assert "git clone" not in alone.err and "exported meanwhile" not in alone.err  # it was found, and nothing kept
    assert not list(out.glob("*/export*")) and not list(out.glob("*/.export.partial"))

    both = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(lora_folder),
                                    **{"export.formats": "[adapter,gguf_lora]"}))
    assert both.code == 2
    assert_one_message(both.err, said)
    assert "The rest of the export is written: adapter in" in both.err
    exports = list(out.glob("*/export*"))
    assert len(exports) == 1
    assert (exports[0] / "adapter" / "adapter_model.safetensors").is_file()
    assert not (exports[0] / "gguf_lora").exists()
    report = json.loads((exports[0] / "export_report.json").read_text())
    assert "failed" in report["gguf_lora"] and str(tmp_path) not in json.dumps(report["gguf_lora"])


def test_an_exported_adapter_and_its_gguf_lora_never_hold_the_local_base_path(lora_folder, tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    from medqlora import export

    from .conftest import kit_argv, run_cli

    local = str(tiny_model_dir)
    assert local in (lora_folder / "README.md").read_text()  # PEFT's model card names the base by its path
    monkeypatch.setenv("LLAMA_CPP_DIR", str(export.fetch_llama_cpp_converter()))
    out = tmp_path / "out"
    done = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(lora_folder),
                                    **{"export.formats": "[adapter,gguf_lora]", "export.gguf_lora_type": "f32"}))
    assert done.code == 0, done.err
    folder = next(out.glob("*/export"))
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name
    for file in folder.rglob("*"):
        if file.is_file():
            assert local.encode() not in file.read_bytes(), file
    # the export still loads onto the base model it names by its folder, without a warning that it is another one
    chat = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "chat", "--mode", "chat", "--adapter", str(folder),
                                    "--prompt", "hi"))
    assert chat.code == 0, chat.err
    assert "names" not in chat.err + chat.out and "warning" not in (chat.err + chat.out).lower()


def test_a_second_stage_run_records_what_its_start_adapter_was_trained_on(tiny_model_dir, tmp_path, capsys):
    from .conftest import kit_argv, only_run, run_cli

    out1, out2 = tmp_path / "stage1", tmp_path / "stage2"
    assert run_cli(capsys, kit_argv(tiny_model_dir, out1, "--mode", "train", **{"training.max_steps": "1"})).code == 0
    stage1 = only_run(out1)
    first = [json.loads(line) for line in (stage1 / "training_items.jsonl").read_text().splitlines()]
    stats = json.loads((stage1 / "data_stats.json").read_text())
    stats["total"]["leakage_guard"] = {"overlaps": [{"evaluation_question_sha1_16": "00000000000000ab"}]}
    (stage1 / "data_stats.json").write_text(json.dumps(stats))  # an evaluation question it was allowed to train on
    done = run_cli(capsys, kit_argv(tiny_model_dir, out2, "--mode", "train", **{
        "training.max_steps": "1", "training.init_adapter": str(stage1), "data.datasets.0.max_samples": "4"}))
    assert done.code == 0, done.err
    second = [json.loads(line) for line in (only_run(out2) / "training_items.jsonl").read_text().splitlines()]
    inherited = [r for r in second if r.get("inherited_from") == f"training.init_adapter {stage1.name}"]
    assert {r["question_sha1_16"] for r in first} | {"00000000000000ab"} == {r["question_sha1_16"] for r in inherited}
    assert len(second) - len(inherited) == 4  # its own rows

    # a third stage carries both; an adapter that is no kit run's says its record is unknown
    from medqlora.adapter_runs import inherited_training_items

    records, gap = inherited_training_items(only_run(out2) / "adapter")
    assert gap is None and {r["question_sha1_16"] for r in second} == {r["question_sha1_16"] for r in records}
    assert "is unknown" in (inherited_training_items(tmp_path)[1] or "")
    (stage1 / "training_items.jsonl").write_text("not json\n")
    assert "missing, damaged or changed since its run wrote it" in (inherited_training_items(stage1 / "adapter")[1] or "")


def test_resuming_a_run_whose_start_adapter_was_moved_says_why_it_is_read_and_what_to_restore(tiny_config, tmp_path):
    from medqlora import resume

    run = tmp_path / "ck2"
    checkpoint = run / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    moved = tmp_path / "Acopy" / "adapter"
    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"init_adapter": str(moved), "max_steps": 12})})
    (run / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(ModelError) as caught:
        resume.resumable_run(str(run), None, tiny_config)
    message = str(caught.value)
    assert f"training.init_adapter {moved}" in message and "reads that folder again" in message
    assert f"Put the start adapter back at {moved}" in message
    assert f"--set training.init_adapter={checkpoint}" in message
    moved.mkdir(parents=True)  # restored: the resume goes on
    (moved / adapters.CONFIG_NAME).write_text("{}")
    assert resume.resumable_run(str(run), None, tiny_config)[2] == checkpoint


def test_the_report_of_a_second_stage_names_its_start_adapter_and_what_the_baseline_scored(tiny_model_dir, tmp_path,
                                                                                          capsys):
    from .conftest import kit_argv, only_run, run_cli

    out1, out2 = tmp_path / "stage1", tmp_path / "stage2"
    assert run_cli(capsys, kit_argv(tiny_model_dir, out1, "--mode", "train", **{"training.max_steps": "1"})).code == 0
    stage1 = only_run(out1)
    full = run_cli(capsys, kit_argv(tiny_model_dir, out2, "--mode", "full", **{
        "training.max_steps": "1", "training.init_adapter": str(stage1), "eval.benchmarks.0.max_items": "4"}))
    assert full.code == 0, full.err
    stage2 = only_run(out2)
    assert f"evaluating the start adapter {stage1 / 'adapter'} (training.init_adapter) before training" in full.out + full.err
    scored = json.loads((stage2 / "eval.json").read_text())
    assert scored["init_adapter"] == f"{stage1.name}/adapter" and scored["baseline"] == "the start adapter"
    assert f"started from the adapter {stage1.name}/adapter" in (stage2 / "eval_report.md").read_text()
    later = run_cli(capsys, kit_argv(tiny_model_dir, out2, "--mode", "eval", "--adapter", str(stage2), **{
        "eval.benchmarks.0.max_items": "4"}))
    assert later.code == 0, later.err
    newest = max(stage2.glob("eval*.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["baseline"] == "the bare base model"
    report = max(stage2.glob("eval_report*.md"), key=lambda p: p.stat().st_mtime).read_text()
    assert "the baseline column scores the bare base model" in report and "start adapter's training too" in report


def test_an_hf_endpoint_that_is_no_address_stops_an_upload_before_the_export_and_is_named(tmp_path, monkeypatch):
    import httpx
    import huggingface_hub.constants

    from medqlora import export, hub
    from medqlora.config import load_config
    from medqlora.errors import ConfigError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / adapters.CONFIG_NAME).write_text("{}")
    cfg = load_config(None, ["export.push_to_hub=me/model", "export.formats=[adapter]"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a machine that can reach the Hub
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Zq4" * 12)
    monkeypatch.setenv("HF_ENDPOINT", "notaurl")
    with pytest.raises(ConfigError, match="HF_ENDPOINT=notaurl is not an http:// or https:// address"):
        export.check_before_export(cfg, adapter)  # what --dry-run and the run both call before any work
    monkeypatch.setenv("HF_ENDPOINT", "http://bob:SuperSecretPw123@127.0.0.1:9")
    export.check_before_export(cfg, adapter)
    reason = hub._reason(httpx.ConnectError("[Errno 111] Connection refused"), "me/model")
    assert "HF_ENDPOINT=http://bob:<password>@127.0.0.1:9" in reason and "SuperSecretPw123" not in reason
    assert "check that address and the connection" in reason


def test_grpo_auto_format_follows_the_start_adapter_through_exports_and_earlier_stages(tmp_path, capsys):
    from medqlora.config import load_config
    from medqlora.grpo import format_style

    def kit_run(name: str, *overrides: str) -> Path:
        run = _kit_run(tmp_path / name, status="trained")
        (run / "config.yaml").write_text(load_config(None, list(overrides)).to_yaml())
        (run / "adapter").mkdir()
        return run

    mc = ["data.datasets.0.source=mc.jsonl", "data.datasets.0.format=multiple_choice"]
    o1t = kit_run("o1t", "data.datasets.0.source=o1.jsonl", "data.datasets.0.format=medical_o1",
                  "data.datasets.0.cot_style=tags")
    (o1t / "export" / "adapter").mkdir(parents=True)
    g1 = kit_run("g1", *mc, "training.method=grpo", f"training.init_adapter={o1t / 'adapter'}")

    def grpo_from(start: Path) -> str | None:
        return format_style(load_config(None, [*mc, "training.method=grpo", f"training.init_adapter={start}"]))

    assert grpo_from(o1t / "adapter") == "tags"
    assert grpo_from(o1t / "export" / "adapter") == "tags"  # the adapter the kit exported from that run
    assert grpo_from(g1 / "adapter") == "tags"  # a GRPO stage between: what it rewarded, from its own start
    sft_mc = kit_run("sft_mc", *mc)
    assert grpo_from(sft_mc / "adapter") == "answer"  # learnt no reasoning format: this run's rows decide
    capsys.readouterr()
    foreign = tmp_path / "downloaded" / "adapter"
    foreign.mkdir(parents=True)
    assert grpo_from(foreign) == "answer"
    assert "reasoning format it learnt is unknown" in capsys.readouterr().out


def test_sigusr1_before_a_time_limit_stops_a_run_like_ctrl_c_not_at_once():
    import os
    import signal

    from medqlora import signals

    with signals.stop_like_ctrl_c(), pytest.raises(KeyboardInterrupt):  # training saves the adapter, as on SIGTERM
        os.kill(os.getpid(), signal.SIGUSR1)
    assert signals.received() == signal.SIGUSR1 and signals.exit_code() == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is not signals._stop  # the handler before is back


def test_resuming_a_run_interrupted_before_its_first_checkpoint_does_not_call_it_a_crash(tmp_path, tiny_config):
    from medqlora import resume

    run = _kit_run(tmp_path / "earlyterm", status="interrupted")
    with pytest.raises(ModelError, match="it was interrupted before its first checkpoint") as caught:
        resume.resumable_run(str(run), None, tiny_config)
    assert "crashed" not in str(caught.value)


def test_hf_hub_offline_stops_an_upload_before_the_export_is_built(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from medqlora import export
    from medqlora.config import load_config
    from medqlora.errors import ConfigError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / adapters.CONFIG_NAME).write_text("{}")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Zq4" * 12)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pushed = load_config(None, ["export.push_to_hub=me/model", "export.formats=[adapter]"])
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set in the environment, so the upload would be refused"):
        export.check_before_export(pushed, adapter)  # what --dry-run and the run both call before any work
    export.check_before_export(load_config(None, ["export.formats=[adapter]"]), adapter)  # a local export is fine
