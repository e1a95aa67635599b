"""Issue 14, trust boundaries: a run folder, an adapter folder or a name prepared by someone else.

Every row ends in exit code 2 and one message with no traceback (or, for a foreign adapter, in a new
run folder under output.dir), and nothing outside the output folder changes: a file a planted link
points to is byte-identical afterwards, and no credential reaches a message, a file or a file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medqlora.cli import main
from medqlora.secrets import slug

from .conftest import assert_one_message, kit_argv

OUTSIDE = b"a file outside the run folder\n"


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry under root (links by their target, files by their sha256), without following links."""
    found = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = here / name
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    assert main(kit_argv(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "run", "training.save_steps": "0"})) == 0
    return out / "run"


@pytest.fixture
def world(trained, tmp_path):
    """tmp_path/outputs/run (a copy of the trained run) and tmp_path/outside.txt."""
    out = tmp_path / "outputs"
    out.mkdir()
    shutil.copytree(trained, out / "run", symlinks=True)
    (tmp_path / "outside.txt").write_bytes(OUTSIDE)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path, out, out / "run"


# ---------------------------------------------------------------- planted files and adapters


def link(name: str, to: str = "outside.txt"):
    def plant(tmp: Path, run: Path) -> None:
        target = run / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.symlink_to(tmp / to)
    return plant


def edit_config(**changes):
    def plant(tmp: Path, run: Path) -> None:
        path = run / "adapter" / "adapter_config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))
    return plant


def garbage_config(tmp: Path, run: Path) -> None:
    (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16,\n  oops')


def only_pickle(tmp: Path, run: Path) -> None:
    weights = run / "adapter" / "adapter_model.safetensors"
    torch.save(load_file(weights), run / "adapter" / "adapter_model.bin")
    weights.unlink()


def wrong_shapes(tmp: Path, run: Path) -> None:
    """q_proj's LoRA matrices made for a layer of 32 input features (the base's has 64)."""
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "layers.0.self_attn.q_proj.lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], 32)
    save_file(tensors, weights, metadata={"format": "pt"})


def adapter_link(tmp: Path, run: Path) -> None:
    (run / "adapter" / "notes.json").symlink_to(tmp / "outside.txt")


ROWS = {
    # id: (what is planted, mode, what the message says)
    "run.log-link": (link("run.log"), "test", "is a symbolic link"),
    "manifest.json-link": (link("manifest.json"), "test", "is a symbolic link"),
    "eval_report.md-link": (link("eval_report.md"), "eval", "is a symbolic link"),
    "sample_responses.md-link": (link("sample_responses.md"), "test", "is a symbolic link"),
    "dangling-sample_responses.md-link": (link("sample_responses.md", "new.txt"), "test", "is a symbolic link"),
    "export-folder-link": (link("export", "elsewhere"), "export", "is a symbolic link"),
    "adapter-holds-a-link": (adapter_link, "export", "copies only the adapter's own files"),
    "pickle-only-adapter": (only_pickle, "test", "safetensors only"),
    "adapter-config-garbage": (garbage_config, "test", "adapter_config.json:2: not valid JSON"),
    "adapter-config-not-lora": (edit_config(peft_type="PREFIX_TUNING"), "test", "not LORA"),
    "adapter-config-rank-zero": (edit_config(r=0), "test", "not a positive integer"),
    "adapter-wrong-rank": (edit_config(r=8), "test", "has rank 16"),
    "adapter-wrong-target-modules": (edit_config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj", "qkv_fused"]), "test",
                                     "targets modules the base model lacks (qkv_fused"),
    "adapter-wrong-shapes": (wrong_shapes, "test", "is 32 -> 64 features in the adapter and 64 -> 64 in the base"),
}


@pytest.mark.parametrize("row", ROWS, ids=list(ROWS))
def test_a_planted_file_or_adapter_stops_with_one_message(row, world, tiny_model_dir, capsys):
    tmp, out, run = world
    plant, mode, fragment = ROWS[row]
    plant(tmp, run)
    before = snapshot(tmp)
    code = main(kit_argv(tiny_model_dir, out, "--mode", mode, "--adapter", str(run)))
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    assert_one_message(captured.err, fragment)
    assert (tmp / "outside.txt").read_bytes() == OUTSIDE
    assert not (tmp / "new.txt").exists() and not list((tmp / "elsewhere").iterdir())
    assert snapshot(tmp) == before  # nothing written anywhere: the run folder included
    if row == "pickle-only-adapter":  # says how to convert it
        assert "torch.load(" in captured.err and "weights_only=True" in captured.err and "save_file(" in captured.err


def test_a_link_at_a_new_run_folder_name_is_not_followed(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "taken").symlink_to(tmp_path / "elsewhere")
    code = main(kit_argv(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "taken"}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, "already exists (as a symbolic link)")
    assert not list((tmp_path / "elsewhere").iterdir())


# ---------------------------------------------------------------- foreign adapters


@pytest.mark.parametrize("mode", ["test", "eval", "export"])
def test_a_foreign_adapter_gets_a_new_run_folder_and_nothing_beside_it(mode, trained, tiny_model_dir, tmp_path,
                                                                       capsys):
    """An adapter folder that is not in a run folder of the kit (here with a planted config.yaml beside it, naming
    another model): its results go into a new run folder under output.dir, never beside it."""
    downloads = tmp_path / "downloads"
    shutil.copytree(trained / "adapter", downloads / "someones-adapter")
    (downloads / "config.yaml").write_text("model:\n  name: /nonexistent/model\n")
    before = snapshot(downloads)
    out = tmp_path / "outputs"
    code = main(kit_argv(tiny_model_dir, out, "--mode", mode, "--adapter", str(downloads / "someones-adapter")))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert snapshot(downloads) == before
    runs = list(out.iterdir())
    assert [r.name.startswith("foreign-someones-adapter-") for r in runs] == [True]
    wrote = {p.name for p in runs[0].iterdir()}
    expected = {"test": "sample_responses.md", "eval": "eval_report.md", "export": "export"}[mode]
    assert expected in wrote and "run.log" in wrote
    if mode == "export":
        copied = {p.name for p in (runs[0] / "export" / "adapter").iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= copied


@pytest.mark.parametrize("removed", [("tokenizer_config.json", "tokenizer.json", "chat_template.jinja"),
                                     ("chat_template.jinja",)])
def test_an_adapter_without_its_tokenizer_is_exported_with_the_base_models_and_says_so(removed, trained,
                                                                                      tiny_model_dir, tmp_path, capsys):
    downloads = tmp_path / "downloads" / "adapter"
    shutil.copytree(trained / "adapter", downloads)
    for name in removed:
        (downloads / name).unlink(missing_ok=True)
    out = tmp_path / "outputs"
    assert main(kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(downloads),
                     **{"export.formats": "[adapter]"})) == 0
    printed = capsys.readouterr().out
    assert "adapter with its tokenizer" not in printed
    assert f"the tokenizer and chat template of the base model {tiny_model_dir} (the adapter folder has none)" in printed
    exported = next(out.iterdir()) / "export" / "adapter"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(exported)).chat_template  # the template training used travels along


@pytest.mark.parametrize("make, what", [(lambda p: p.write_text("x"), "is a file, not a folder"),
                                        (lambda p: p.mkdir(), "holds no convert_hf_to_gguf.py"),
                                        (lambda p: None, "does not exist")])
def test_a_llama_cpp_dir_without_the_converter_is_refused_before_the_export(make, what, trained, tiny_model_dir,
                                                                           tmp_path, capsys, monkeypatch):
    named = tmp_path / "llama.cpp"
    make(named)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(named))
    before = snapshot(trained)
    for dry in (["--dry-run"], []):
        assert main(kit_argv(tiny_model_dir, tmp_path / "o", "--mode", "export", "--adapter", str(trained), *dry,
                         **{"export.formats": "[gguf]"})) == 2
        assert_one_message(capsys.readouterr().err, f"LLAMA_CPP_DIR='{named}' {what}: it must name a llama.cpp checkout")
    assert {k: v for k, v in snapshot(trained).items() if not k.endswith("run.log")} == \
        {k: v for k, v in before.items() if not k.endswith("run.log")}  # nothing exported, nothing merged


def test_evaluating_a_run_whose_training_items_were_deleted_is_refused(trained, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "outputs" / "run"
    shutil.copytree(trained, run)
    (run / "training_items.jsonl").unlink()
    before = snapshot(run)
    for dry in (["--dry-run"], []):
        assert main(kit_argv(tiny_model_dir, tmp_path / "outputs", "--mode", "eval", "--adapter", str(run), *dry)) == 2
        assert_one_message(capsys.readouterr().err, f"{run / 'training_items.jsonl'} is missing: the run writes it "
                                                    "before training, and without it what this adapter was trained on "
                                                    "cannot be checked")
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.endswith("run.log")} == \
        {k: v for k, v in before.items() if not k.endswith("run.log")}  # nothing scored or written


# ---------------------------------------------------------------- credentials


TOKEN = "hf_Zq9/Tk_" + "x7" * 12  # a '/' and a '_': the folder-name form differs from the token


@pytest.mark.parametrize("where", ["model.name", "dataset-source", "run-name", "run-name-slug"])
def test_a_credential_in_a_name_reaches_no_message_file_or_folder_name(where, tiny_model_dir, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "outputs"
    values = {
        "model.name": {"model.name": f"acme/{TOKEN}-medical"},
        "dataset-source": {"data.datasets.0.source": str(tmp_path / f"{TOKEN}.jsonl")},
        "run-name": {"output.run_name": f"exp-{TOKEN}"},
        "run-name-slug": {"output.run_name": f"exp-{slug(TOKEN)}"},
    }[where]
    code = main(kit_argv(tiny_model_dir, out, "--mode", "train", **values))
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    assert_one_message(captured.err)
    forms = (TOKEN, slug(TOKEN), TOKEN.replace("/", "-"))
    for form in forms:
        assert form not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        for form in forms:
            assert form not in str(path.relative_to(tmp_path)), path
            if path.is_file():
                assert form not in path.read_text(errors="ignore"), path
    if where in ("model.name", "dataset-source"):  # a path holding it: refused at the config boundary, no folder
        assert "holds the value of HF_TOKEN" in captured.err and not out.exists()


# ---------------------------------------------------------------- the writer itself


@pytest.fixture
def bare_run(tmp_path):
    from medqlora.runs import RunDir

    (tmp_path / "run").mkdir()
    (tmp_path / "outside.txt").write_bytes(OUTSIDE)
    return tmp_path, RunDir(tmp_path / "run")


@pytest.mark.parametrize("name", ["manifest.json", "eval_report.md", "sample_responses.md", "sub/metrics.json"])
def test_the_writer_refuses_a_link_at_the_target_or_on_the_way(name, bare_run):
    from medqlora.errors import MedQLoRAError

    tmp, run = bare_run
    if "/" in name:  # a linked folder inside the run folder
        (run.path / "sub").symlink_to(tmp, target_is_directory=True)
    else:
        (run.path / name).symlink_to(tmp / "outside.txt")
    for write in (lambda: run.write_text(name, "new"), lambda: run.write_json(name, {"a": 1}),
                  lambda: run.write_bytes(name, b"new"), lambda: run.inside(name)):
        with pytest.raises(MedQLoRAError, match="is a symbolic link"):
            write()
    assert (tmp / "outside.txt").read_bytes() == OUTSIDE and not (tmp / "metrics.json").exists()
    assert sorted(p.name for p in run.path.iterdir()) == [name.split("/")[0]]  # no temporary file left


def test_names_that_leave_the_run_folder_are_refused(bare_run):
    from medqlora.errors import MedQLoRAError

    tmp, run = bare_run
    for name in ("../outside.txt", "/etc/passwd", "a/../../outside.txt", "."):
        with pytest.raises(MedQLoRAError, match="not a plain name inside the run folder"):
            run.write_text(name, "new")
    assert (tmp / "outside.txt").read_bytes() == OUTSIDE


def test_run_log_is_opened_without_following_a_link(bare_run):
    """Under start_log's own check: the handler itself opens run.log with O_NOFOLLOW."""
    from medqlora.errors import MedQLoRAError
    from medqlora.runs import _RunLogHandler

    tmp, run = bare_run
    (run.path / "run.log").symlink_to(tmp / "outside.txt")
    with pytest.raises(MedQLoRAError, match="is a symbolic link"):
        _RunLogHandler(run.path)
    with pytest.raises(MedQLoRAError, match="is a symbolic link"):
        run.start_log()
    assert (tmp / "outside.txt").read_bytes() == OUTSIDE


def test_figures_are_written_through_the_writer(bare_run):
    from medqlora import report
    from medqlora.errors import MedQLoRAError

    tmp, run = bare_run
    (run.path / "loss.png").symlink_to(tmp / "outside.txt")
    (run.path / "eval_chart.png").symlink_to(tmp / "outside.txt")
    with pytest.raises(MedQLoRAError, match="is a symbolic link"):
        report.plot_loss([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], run.path / "loss.png")
    results = {"pubmedqa": {"baseline": {"accuracy": 40.0}, "fine_tuned": {"accuracy": 50.0}}}
    with pytest.raises(MedQLoRAError, match="is a symbolic link"):
        report.plot_eval_chart(results, run.path / "eval_chart.png")
    assert (tmp / "outside.txt").read_bytes() == OUTSIDE
    report.plot_eval_chart(results, run.path / "chart.png")
    assert (run.path / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_a_linked_partial_folder_is_refused_and_a_leftover_one_replaced(bare_run):
    """The adapter and the export are built in a partial folder: a link planted there stops the kit (the folder it
    points to is not emptied), a real leftover of a crash is replaced by an empty folder."""
    from medqlora.errors import MedQLoRAError

    tmp, run = bare_run
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "keep.txt").write_bytes(OUTSIDE)
    (run.path / ".adapter.partial").symlink_to(tmp / "elsewhere", target_is_directory=True)
    with pytest.raises(MedQLoRAError, match="is a symbolic link"):
        run.fresh_dir(".adapter.partial")
    assert (tmp / "elsewhere" / "keep.txt").read_bytes() == OUTSIDE
    (run.path / ".export.partial" / "merged").mkdir(parents=True)
    made = run.fresh_dir(".export.partial")
    assert made.is_dir() and not made.is_symlink() and not list(made.iterdir())


# ---------------------------------------------------------------- untrusted text and masking


def test_printable_escapes_controls_newlines_and_bidi_and_truncates():
    from medqlora.secrets import printable

    shown = printable("run\n2026 INFO forged\x1b[2J\u202etxt.exe\u200b\u2028end")
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown and "\u2028" not in shown
    assert "\\n" in shown and "\\x1b" in shown and "\\u202e" in shown and "\\u200b" in shown
    assert printable("x" * 500, limit=10) == "x" * 10 + "..."
    assert printable("naïve café 日本") == "naïve café 日本"  # ordinary text is left alone


def test_short_and_slugged_credentials_are_masked(monkeypatch):
    from medqlora.secrets import contains_secret, redact

    monkeypatch.setenv("WANDB_API_KEY", "k3y!k3y!")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k3n/v4lu3x")
    monkeypatch.setenv("HF_TOKEN", "review")  # too short to be anyone's credential: left alone in paths
    text = redact("key k3y!k3y! token t0k3n/v4lu3x slug t0k3n-v4lu3x /tmp/review/tiny")
    assert text == "key <WANDB_API_KEY> token <MLFLOW_TRACKING_TOKEN> slug <MLFLOW_TRACKING_TOKEN> /tmp/review/tiny"
    assert contains_secret("run-t0k3n-v4lu3x-1") == "MLFLOW_TRACKING_TOKEN"
    monkeypatch.setenv("HF_TOKEN", "true")  # a placeholder, not a secret: JSON's true stays true
    assert redact('{"done": true}') == '{"done": true}'
    assert redact("tracking at https://ann:s3cr3t@mlflow.example.org/x") == \
        "tracking at https://ann:<password>@mlflow.example.org/x"


def test_default_run_name_never_holds_a_credential(monkeypatch):
    from medqlora.config import load_config
    from medqlora.runs import default_run_name

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cfg = load_config(None, [])  # such paths are refused at the config boundary; the name is masked beyond it
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"name": f"acme/{TOKEN}"}),
        "data": cfg.data.model_copy(update={"datasets": [cfg.data.datasets[0].model_copy(
            update={"source": f"/data/{TOKEN}.jsonl"})]})})
    name = default_run_name(cfg)
    assert TOKEN not in name and slug(TOKEN) not in name and "Zq9" not in name and "x7x7" not in name, name
