"""Inputs of a hostile review that the kit handled badly, each with the behaviour it has now (docs/errors.md YB rows)."""

from pathlib import Path

import pytest

from .conftest import assert_one_message, run_cli


def test_the_model_card_names_a_local_dataset_by_its_name_alone_even_once_the_file_is_gone(tmp_path):
    """Patient data moved away after training: the card to upload showed the data's full local path, since only a
    file still there was shown by its name."""
    from medqlora.config import load_config
    from medqlora.report.model_card import _data_lines

    present = tmp_path / "alice" / "ward7.jsonl"
    present.parent.mkdir()
    present.write_text('{"instruction": "q", "output": "a"}\n')
    gone = tmp_path / "alice" / "ward8_patients.jsonl"
    cfg = load_config(None, [f"data.datasets=[{{source: {present}, format: instruction}}, "
                             f"{{source: {gone}, format: instruction}}, {{source: ~/notes/ward9, format: instruction}},"
                             " {source: qiaojin/PubMedQA, format: pubmedqa, subset: pqa_labeled}]"])
    lines = _data_lines(cfg)
    assert lines[0].startswith("- local file ward7.jsonl (format instruction")
    assert lines[1].startswith("- local file ward8_patients.jsonl (format instruction")
    assert lines[2].startswith("- local file ward9 (format instruction")
    assert lines[3].startswith("- qiaojin/PubMedQA (format pubmedqa")
    assert not any(str(tmp_path) in line or "~" in line for line in lines)


def _fetch(monkeypatch, capsys, cache):
    """python -m medqlora.export --fetch-llama-cpp into ``cache`` (MEDQLORA_CACHE); pip must not be run."""
    from medqlora import backends
    from medqlora.export import __main__ as fetch_command
    from medqlora.export import llama_cpp

    def no_download(*args, **kwargs):
        raise AssertionError("the unpacking folder is checked before anything is downloaded")

    monkeypatch.setattr(backends, "CACHE_DIR", cache)
    monkeypatch.setattr(llama_cpp, "_run_pip", no_download)
    code = fetch_command.main(["--fetch-llama-cpp"])
    return code, capsys.readouterr().err


def test_a_link_at_the_fetchs_unpacking_folder_is_refused_never_written_through(tmp_path, monkeypatch, capsys):
    """A link left at MEDQLORA_CACHE/llama.cpp.partial: the converter was unpacked through it into the folder it
    led to, and the link renamed into place as the cache's llama.cpp."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    (cache / "llama.cpp.partial").symlink_to(outside)
    code, err = _fetch(monkeypatch, capsys, cache)
    assert code == 2
    assert_one_message(err, "llama.cpp.partial is a symbolic link (to ")
    assert "the kit never writes through a link. Remove the link and fetch again." in err
    assert list(outside.iterdir()) == [] and not (cache / "llama.cpp").exists()


def test_a_file_at_the_fetchs_unpacking_folder_is_refused_before_the_download(tmp_path, monkeypatch, capsys):
    """A file at llama.cpp.partial: the fetch downloaded, then said to free some space; the file stayed and every
    fetch failed the same way."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "llama.cpp.partial").write_text("my notes\n")
    code, err = _fetch(monkeypatch, capsys, cache)
    assert code == 2
    assert_one_message(err, "llama.cpp.partial is a file, where the kit unpacks llama.cpp's converter")
    assert "move it away and fetch again" in err and "Free some space" not in err
    assert (cache / "llama.cpp.partial").read_text() == "my notes\n"


def _alive(pid: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _ends(pid: int, within_s: float = 10.0) -> bool:
    """Whether the process ends within a few seconds: a signalled grandchild exits a moment after the command does,
    later on a loaded machine."""
    import time

    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_during_the_fetch_stops_it_like_ctrl_c_with_pip_and_its_files(tmp_path, sig):
    """SIGTERM 4 s into the fetch: the command died without a word, its pip download kept running as an orphan and
    left a 76 MB archive in the temporary folder."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    mark = tmp_path / "pip"
    fake_python = tmp_path / "fake-python"  # the fetch runs "python -m pip download ...": a pip that starts a child
    fake_python.write_text('#!/bin/sh\nsleep 300 &\necho $! > "$MARK.child"\necho part > "$TMPDIR/download.tmp"\n'
                           'echo "$TMPDIR" > "$MARK.tmp"\necho $$ > "$MARK.pid"\nwait\n')
    fake_python.chmod(0o755)
    env = {**os.environ, "MARK": str(mark), "MEDQLORA_CACHE": str(tmp_path / "cache")}
    env.pop("LLAMA_CPP_DIR", None)
    code = (f"import sys; sys.executable = {str(fake_python)!r}; from medqlora.export.__main__ import main; "
            "sys.exit(main(['--fetch-llama-cpp']))")
    fetch = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    for _ in range(1200):
        if (tmp_path / "pip.pid").exists() or fetch.poll() is not None:
            break
        time.sleep(0.05)
    fetch.send_signal(getattr(signal, sig))
    _, err = fetch.communicate(timeout=60)
    assert fetch.returncode == 128 + getattr(signal, sig), err
    assert f"medqlora: interrupted ({sig}). Nothing was fetched" in err and "Traceback" not in err
    assert _ends(int((tmp_path / "pip.pid").read_text()))
    assert _ends(int((tmp_path / "pip.child").read_text()))  # what pip started is stopped too
    assert not os.path.exists((tmp_path / "pip.tmp").read_text().strip())
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("variable,value,shown", [
    ("HF_DATASETS_CACHE", "/proc", "cache folder /proc (from HF_DATASETS_CACHE=/proc) cannot be written"),
    ("HF_HOME", "/proc", "cache folder /proc/datasets (to be made in /proc) (from HF_HOME=/proc) cannot be written")])
def test_a_datasets_cache_that_cannot_be_written_is_refused_before_lm_eval_or_a_hub_dataset_waits_on_its_lock(
        tmp_path, monkeypatch, capsys, variable, value, shown):
    """An existing cache folder the user cannot write (a shared read-only cache): the plan passed, and the run
    scored the kit's benchmarks, then waited forever for a lock file of the datasets library."""
    from medqlora import harness
    from medqlora.config import load_config
    from medqlora.errors import MedQLoRAError

    for name in ("HF_DATASETS_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    cfg = load_config(None, ["eval.harness=lm-eval", "eval.lm_eval.tasks=[pubmedqa]"])
    with pytest.raises(MedQLoRAError, match="the library would wait forever for a lock file") as refused:
        harness.load_tasks(cfg)  # what --dry-run and the run call before any model loads
    assert shown in str(refused.value) and str(refused.value).startswith("eval.harness: lm-eval reads through")
    code, _, err = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path / "out"),
                                    "--set", "data.datasets=[{source: qiaojin/PubMedQA, format: pubmedqa, "
                                    "subset: pqa_labeled}]"])
    assert code == 2
    assert_one_message(err, "The hub dataset 'qiaojin/PubMedQA' reads through the datasets library")
    assert shown in err


def test_a_datasets_cache_that_can_be_made_is_not_refused_nor_made_by_the_check(tmp_path, monkeypatch):
    from medqlora.environment import check_datasets_cache

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "new" / "datasets"))
    check_datasets_cache("eval.harness: lm-eval")
    assert not (tmp_path / "new").exists() or list((tmp_path / "new").iterdir()) == []


@pytest.mark.parametrize("status,stage,mode", [
    ("interrupted", "interrupted during evaluation after training: the adapter is saved", "eval"),
    ("failed", "failed during evaluation after training: the adapter is saved", "eval"),
    ("interrupted", "interrupted while answering the sample queries after training: the adapter is saved", "test")])
def test_resuming_a_run_stopped_after_its_training_says_training_is_complete_and_how_to_finish(
        tmp_path, capsys, status, stage, mode):
    """SIGTERM during the evaluation after training (4 of 4 steps trained): --resume said the run was interrupted
    before its first checkpoint, and advised training it again."""
    import json

    from medqlora.config import load_config

    run = tmp_path / "outputs" / "evaluating"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "manifest.json").write_text(json.dumps({"status": status, "kit_version": "0.1.0", "stage": stage}))
    code, _, err = run_cli(capsys, ["--mode", "train", "--resume", str(run)])
    assert code == 2
    assert_one_message(err, "has no checkpoint to continue from, and needs none: its training is complete")
    assert f"with: python medical_qlora_finetuning.py --mode {mode} --config {run / 'config.yaml'} --adapter {run}" in err
    assert "before its first checkpoint" not in err and "train it again" not in err


def _linked_run(tmp_path, monkeypatch):
    """A run folder of the kit that trained on two PubMedQA benchmark questions and on medical-o1 rows in the tags
    format, a "best adapter" link to its adapter folder, and the adapter checks that need a model stubbed."""
    import json
    from types import SimpleNamespace

    from medqlora import adapter_runs
    from medqlora.config import load_config
    from medqlora.evaluate import load_items
    from medqlora.leakage_text import question_hash

    said = []
    monkeypatch.setattr(adapter_runs, "say", said.append)
    monkeypatch.setattr(adapter_runs.adapters, "find", lambda folder: SimpleNamespace(folder=folder, config={},
                                                                                     run=None))
    monkeypatch.setattr(adapter_runs.adapter_base, "check_base", lambda *args: None)
    monkeypatch.setattr(adapter_runs.adapters, "check_finite", lambda folder: None)
    monkeypatch.setattr(adapter_runs.adapters, "check_change", lambda folder, config: None)
    cfg = load_config(None, ["eval.benchmarks.0.max_items=2"])
    items = load_items(cfg.eval.benchmarks[0], 0)
    run = tmp_path / "outputs" / "leak"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "base"}))
    trained = load_config(None, ["data.datasets=[{source: rows.jsonl, format: medical_o1, cot_style: tags}]"])
    (run / "config.yaml").write_text(trained.to_yaml())
    (run / "manifest.json").write_text(json.dumps({"kit_version": "0.1.0", "status": "trained"}))
    (run / "training_items.jsonl").write_text("".join(
        json.dumps({"source": "0:rows.jsonl", "uid": None, "question_sha1_16": question_hash(i.example.question)})
        + "\n" for i in items))
    link = tmp_path / "best_adapter"
    link.symlink_to(run / "adapter")
    return cfg, items, run, link, said


def test_an_adapter_given_by_a_link_is_traced_to_its_run_for_the_trained_on_check_and_its_results(
        tmp_path, monkeypatch):
    """--adapter best_adapter, a link to <run>/adapter: the run was taken for a foreign adapter, so the 40
    benchmark items it trained on were scored as held out (a link to the run folder was refused)."""
    from medqlora import adapter_runs
    from medqlora.errors import MedQLoRAError

    cfg, items, run, link, said = _linked_run(tmp_path, monkeypatch)
    adapter = adapter_runs.find_adapter(cfg, str(link), None)
    assert adapter == (run / "adapter").resolve()
    assert f"--adapter {link} leads to {adapter} (through a symbolic link): the adapter of the run" in said[0]
    with pytest.raises(MedQLoRAError, match="2 items were trained on by this adapter"):
        adapter_runs.check_benchmarks_untrained({"pubmedqa": items}, adapter)
    assert adapter_runs.run_folder_for(cfg, adapter, None, "eval").path == run.resolve()  # not a foreign-... folder
    huatuo = [{"name": "o1b", "kind": "cot", "cot_style": "huatuo", "source": "heldout.jsonl"}]
    [mismatch] = adapter_runs.cot_style_mismatches(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "benchmarks": type(cfg.eval).model_validate({"benchmarks": huatuo}).benchmarks})}), adapter)
    assert "but the adapter learnt tags" in mismatch


def test_a_start_adapter_given_by_a_link_carries_over_what_its_run_trained_on(tmp_path, monkeypatch):
    """training.init_adapter=best_adapter (a link to <run>/adapter): 'not in a run folder of this kit, so what it
    was trained on is unknown', and the run's trained-on record lost its start stage's rows."""
    from medqlora import adapter_runs
    from medqlora.config import load_config

    _, items, run, link, said = _linked_run(tmp_path, monkeypatch)
    cfg = load_config(None, [f"training.init_adapter={link}"])
    monkeypatch.setattr(adapter_runs, "trained_model", lambda adapter, cfg: cfg.model)
    started = adapter_runs.with_init_adapter(cfg, None)
    assert started.training.init_adapter == str((run / "adapter").resolve())
    assert not any("is not in a run folder of this kit" in line for line in said)
    records, gap = adapter_runs.inherited_training_items(Path(started.training.init_adapter))
    assert gap is None and len(records) == len(items)
