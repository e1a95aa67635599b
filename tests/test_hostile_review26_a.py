"""Round 26 of the hostile review: a run folder whose adapter/ links out of it (an export copied the folder it named,
keys included); --dry-run passing adapters that loading refuses (DoRA without its magnitudes, a base weight in the
weights file, a target_modules pattern that selects the whole model); W&B switched off by WANDB_MODE=disabled
without a word."""

import json
import shutil

import pytest

from medqlora import tracking
from medqlora.config import load_config

from .conftest import assert_one_message, kit_argv, run_cli, run_tiny


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("r26") / "out"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "1",
                                                                "output.run_name": "base"}) == 0
    return out / "base"


def test_a_run_whose_adapter_links_out_of_it_is_refused_and_nothing_is_copied(trained_run, tiny_model_dir, tmp_path,
                                                                              capsys):
    outside = tmp_path / "outside"
    shutil.copytree(trained_run / "adapter", outside)
    (outside / "id_rsa").write_text("PRIVATE KEY")
    run = tmp_path / "out" / "planted"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("adapter"))
    (run / "adapter").symlink_to(outside, target_is_directory=True)
    for dry in (["--dry-run"], []):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry, "--mode", "export", "--adapter",
                                          str(run)))
        assert result.code == 2, result.err[-1500:]
        assert_one_message(result.err, f"{run / 'adapter'} is a symbolic link to {outside}, outside its run folder")
        assert f"--adapter {outside}" in result.err
    assert not any(path.name.startswith("export") for path in run.iterdir())
    assert not [p for p in (tmp_path / "out").rglob("id_rsa")]
    # a link that stays inside the run folder (adapter -> one of its own folders) is read as before
    inside = tmp_path / "out" / "inside"
    shutil.copytree(trained_run, inside, ignore=shutil.ignore_patterns("adapter"))
    shutil.copytree(trained_run / "adapter", inside / "adapter-best")
    (inside / "adapter").symlink_to("adapter-best", target_is_directory=True)
    assert run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "export", "--adapter",
                                    str(inside))).code == 0


def _changed_adapter(lora_folder, tmp_path, config=None, tensors=None):
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_folder, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({**weights, **(tensors or {})}, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    written = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**written, **(config or {})}))
    return adapter


@pytest.mark.parametrize("change, message", [
    ({"config": {"use_dora": True}}, "is incomplete: adapter_model.safetensors lacks 4 magnitude vectors of DoRA"),
    ({"tensors": "embed"}, "holds a tensor that its adapter_config.json does not imply (no LoRA weight of its "
                           "target_modules, no module of its modules_to_save): base_model.model.model.embed_tokens"
                           ".weight [49152, 64]"),
    ({"config": {"target_modules": ".*"}}, "PEFT cannot put its adapter_config.json on the base model "
                                           "(target_modules .*): Target module LlamaModel (...) is not supported. "
                                           "Set target_modules in adapter_config.json to the modules its weights hold "
                                           "(q_proj, v_proj)."),
], ids=["dora-without-magnitudes", "a-base-weight-inside", "a-pattern-selecting-the-model"])
def test_the_dry_run_refuses_the_adapters_loading_refuses(lora_folder, tiny_model_dir, tmp_path, capsys, change,
                                                          message):
    import torch

    tensors = {"base_model.model.model.embed_tokens.weight": torch.zeros(49152, 64)} if change.get("tensors") else None
    adapter = _changed_adapter(lora_folder, tmp_path, change.get("config"), tensors)
    for dry in (["--dry-run"], []):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry, "--mode", "test", "--adapter",
                                          str(adapter)))
        assert result.code == 2, result.err[-1500:]
        assert_one_message(result.err, message)
        assert "Check model.name" not in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_wandb_switched_off_by_the_environment_is_said_and_plans_no_wandb_folder(monkeypatch):
    cfg = load_config(None, ["training.report_to=[wandb]"])
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "Disabled")
    [note] = tracking.check_trackers(cfg)
    assert "WANDB_MODE=disabled in the environment switches it off: this run records nothing in W&B" in note
    assert tracking.tracker_folders(cfg) == ()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.check_trackers(cfg) == [] and tracking.tracker_folders(cfg) == ("wandb/",)


def _gguf(path, architecture, tensors=(), tokens=False):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    if tokens:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "a", "b"])
    for name in tensors:
        writer.add_tensor(name, np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("architecture, tensors, tokens, missing", [
    ("llama", (), False, "with no tensors (no weights) and no tokenizer (tokenizer.ggml.tokens)"),
    ("mamba", ("token_embd.weight",), False, "with no tokenizer (tokenizer.ggml.tokens)"),
    ("llama", (), True, "with no tensors (no weights)"),
])
def test_a_gguf_without_weights_or_tokenizer_is_refused_by_the_dry_run(tiny_model_dir, tmp_path, capsys, architecture,
                                                                      tensors, tokens, missing):
    path = _gguf(tmp_path / "model.gguf", architecture, tensors, tokens)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"model.name": str(path)}))
    assert result.code == 2
    assert_one_message(result.err, f"model.name: {path} is a GGUF file of architecture {architecture} {missing}: not "
                                   "a model the kit can convert and train")


def _model_with_own_code(tiny_model_dir, folder, marker):
    """The tiny model with config.json pointing at Python code of its folder (auto_map) that leaves ``marker`` when it
    runs."""
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_own.OwnConfig",
                          "AutoModelForCausalLM": "modeling_own.OwnModel"}
    (folder / "config.json").write_text(json.dumps(config))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_own.py").write_text(code + "from transformers import LlamaConfig as OwnConfig\n")
    (folder / "modeling_own.py").write_text(code + "from transformers import LlamaForCausalLM as OwnModel\n")
    return folder


def test_a_run_folders_config_cannot_turn_on_a_models_own_code(trained_run, tiny_model_dir, tmp_path, capsys):
    """A run folder given by path whose config.yaml sets model.trust_remote_code: true (and names a model folder with
    code in it): the code ran in --dry-run. The setting is the config given's, never the run folder's."""
    from medqlora.config import load_config as load

    marker = tmp_path / "code-ran"
    model = _model_with_own_code(tiny_model_dir, tmp_path / "own-code", marker)
    run = tmp_path / "out" / "planted"
    shutil.copytree(trained_run, run)
    saved = load(run / "config.yaml")
    (run / "config.yaml").write_text(saved.model_copy(update={"model": saved.model.model_copy(
        update={"name": str(model), "trust_remote_code": True})}).to_yaml())
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test", "--adapter",
                                      str(run)))
    assert not marker.exists(), result.err[-1500:]
    assert result.code == 0, result.err[-1500:]
    assert "was trained with model.trust_remote_code: true (its config.yaml)" in result.out + result.err
    assert "--set model.trust_remote_code=true" in result.out + result.err


def test_resuming_a_run_whose_config_turns_on_a_models_own_code_needs_that_config_given(tiny_config, tmp_path):
    from medqlora import resume
    from medqlora.errors import ConfigError

    run = tmp_path / "ck"
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    trusting = tiny_config.model_copy(update={"model": tiny_config.model.model_copy(
        update={"trust_remote_code": True})})
    (run / "config.yaml").write_text(trusting.to_yaml())
    with pytest.raises(ConfigError) as caught:
        resume.resumable_run(str(run), None, tiny_config)
    assert (f"its config.yaml sets model.trust_remote_code: true, which runs the Python code of the model folder "
            f"{tiny_config.model.name}. The kit does that only on your word: if you trust that code, give the run's "
            f"config too: --resume {run} --config {run / 'config.yaml'}") in str(caught.value)
    try:  # given: the refusal is not this one (the checkpoint is a bare folder)
        resume.resumable_run(str(run), None, trusting)
    except Exception as err:  # noqa: BLE001
        assert "trust_remote_code" not in str(err)


def test_an_emptied_record_of_the_trained_items_is_refused_as_a_missing_one_is(trained_run, tiny_model_dir, tmp_path,
                                                                              capsys):
    """training_items.jsonl emptied (or cut): the trained-on check found nothing to look for and passed; the manifest
    records what the run wrote (its records and sha256)."""
    from medqlora.run_files import manifest_value

    recorded = manifest_value(trained_run, "training_items")
    assert recorded["records"] == len((trained_run / "training_items.jsonl").read_text().splitlines()) > 0
    run = tmp_path / "out" / "copy"
    shutil.copytree(trained_run, run)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", str(run))
    assert run_cli(capsys, argv).code == 0
    lines = (run / "training_items.jsonl").read_text().splitlines(keepends=True)
    for changed in ("", "".join(lines[1:])):
        (run / "training_items.jsonl").write_text(changed)
        result = run_cli(capsys, argv)
        assert result.code == 2
        assert_one_message(result.err, f"{run / 'training_items.jsonl'} is not the record its run wrote: its run "
                                       f"wrote {len(lines)} records (its manifest.json records their sha256), and it "
                                       f"now holds {len(lines) - 1 if changed else 0}")


@pytest.mark.parametrize("written", ["{}", "[]", '{"model": {}, "added_tokens": {}}'])
def test_a_tokenizer_json_that_is_no_tokenizer_is_named(tiny_model_dir, tmp_path, capsys, written):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tokenizer.json").write_text(written)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"model.name": str(model)}))
    assert result.code == 2
    assert_one_message(result.err, f"Cannot load model '{model}': its tokenizer.json is not a tokenizer (valid JSON "
                                   "without its ")
    assert "Copy or download tokenizer.json again." in result.err


@pytest.mark.parametrize("mode, given, said", [
    ("test", ("eval.benchmarks.0.max_items=3", "export.formats=[merged]"),
     "note: --set eval.benchmarks.0.max_items, export.formats: not used by --mode test, which answers the sample "
     "queries: it scores and exports nothing"),
    ("chat", ("export.formats=[merged]",), "note: --set export.formats: not used by --mode chat"),
    ("export", ("eval.method=generate",), "note: --set eval.method: not used by --mode export, which exports the "
                                          "adapter: it scores no benchmark"),
    ("train", ("generation.max_new_tokens=7", "generation.temperature=0.3"),
     "note: --set generation.max_new_tokens, generation.temperature: not used by --mode train, which trains and saves "
     "the adapter: it answers nothing"),
])
def test_settings_of_a_section_the_mode_does_not_read_are_said_unused(tiny_model_dir, tmp_path, capsys, mode, given,
                                                                      said):
    argv = ["--dry-run", "--mode", mode, "--output-dir", str(tmp_path / "out"), "--set",
            f"model.name={tiny_model_dir}"]
    argv += ["--adapter", "none"] if mode in ("test", "chat") else []
    argv += ["--prompt", "hi"] if mode == "chat" else []
    argv += ["--set", "eval.benchmarks=[]"] if mode == "train" else []
    for item in given:
        argv += ["--set", item]
    if mode == "export":  # export needs an adapter: the refusal of none comes after the note
        argv += ["--adapter", "none"]
    result = run_cli(capsys, argv)
    assert said in result.err, result.err[-1500:]
    assert said not in result.out
    if mode != "export":
        assert result.code == 0, result.err[-1500:]
    if mode in ("test", "train"):
        assert isinstance(json.loads(result.out), dict)  # the plan alone on stdout


def test_a_key_with_a_look_alike_letter_names_the_letter(tmp_path, capsys):
    """'trаining' with a Cyrillic а: 'unknown key trаining. Did you mean training?' showed two keys that look the
    same."""
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--set", "tr\u0430ining.max_steps=3"])
    assert result.code == 2
    assert_one_message(result.err, "Did you mean 'training'? The key holds a character that only looks like a Latin "
                                   "letter (character 3 is U+0430 CYRILLIC SMALL LETTER A): type it again")
    config = tmp_path / "pasted.yaml"
    config.write_text("training:\n  m\u0430x_st\u0435ps: 3\n", encoding="utf-8")
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--config", str(config)])
    assert result.code == 2
    assert "2 characters that only look like Latin letters (character 2 is U+0430 CYRILLIC SMALL LETTER A, " \
           "character 7 is U+0435 CYRILLIC SMALL LETTER IE)" in result.err
    assert "Did you mean 'max_steps'?" in result.err


def test_a_training_run_piped_to_head_goes_on_to_its_end(tiny_model_dir, tmp_path):
    """`... --mode train 2>&1 | head -2`: the kit exited 1 after the second line, before training, and left a run
    folder with a run.log alone (no manifest, no word why). The reader going away stops nothing now."""
    import subprocess
    import sys

    from .conftest import ROOT, SCRIPT

    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train",
                    **{"training.max_steps": "2", "output.run_name": "piped"})
    done = subprocess.run(f"{sys.executable} {SCRIPT} {' '.join(argv)} 2>&1 | head -2; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 2 and "Traceback" not in done.stderr
    run = tmp_path / "out" / "piped"
    assert json.loads((run / "manifest.json").read_text())["status"] == "trained"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "adapter size (MB)" in (run / "run.log").read_text()  # the summary, said after the pipe was gone


def _model_with_template(tiny_model_dir, folder, guard):
    """The tiny model with its chat template (ChatML) opened by ``guard``, a Jinja statement that raises."""
    shutil.copytree(tiny_model_dir, folder)
    template = folder / "chat_template.jinja"
    if template.is_file():
        template.write_text(guard + template.read_text())
    else:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = guard + config["chat_template"]
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_template_that_refuses_generation_prompts_is_refused_before_any_work(tiny_model_dir, tmp_path, capsys):
    """--mode test / chat with it: an internal error (TemplateError) at the first question; --mode full blamed a
    data row."""
    model = _model_with_template(tiny_model_dir, tmp_path / "model", "{% if add_generation_prompt %}{{ raise_exception("
                                 "'generation prompts are not supported') }}{% endif %}")
    for mode in (["--mode", "test", "--adapter", "none"], ["--mode", "full"]):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", *mode,
                                          **{"model.name": str(model)}))
        assert result.code == 2
        assert_one_message(result.err, f"The chat template of {model} refuses to render a question followed by the "
                                       "start of the answer (add_generation_prompt: TemplateError: generation prompts "
                                       "are not supported)")
        assert "row" not in result.err.split("medqlora: error")[1]


def test_a_chat_whose_template_takes_one_question_at_a_time_goes_on_without_history(tiny_model_dir, tmp_path):
    model = _model_with_template(tiny_model_dir, tmp_path / "model", "{% if messages|length > 2 %}{{ raise_exception("
                                 "'only single-turn conversations') }}{% endif %}")
    import subprocess
    import sys

    from .conftest import ROOT, SCRIPT

    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "chat", "--adapter", "none",
                    **{"model.name": str(model), "generation.max_new_tokens": "3"})
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], input="hello\nsecond question\nthird\n/exit\n",
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model> ") == 3 and "Traceback" not in done.stderr
    assert done.stderr.count("the chat template refuses a conversation with earlier turns (only single-turn "
                             "conversations): each question is answered on its own from here") == 1


@pytest.mark.parametrize("source", ["https://example.org/rows.jsonl", "S3://bucket/rows.jsonl"])
def test_a_web_or_cloud_address_as_data_source_says_to_download_it(tmp_path, capsys, source):
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--set",
                              f"data.datasets=[{{source: '{source}', format: instruction}}]"])
    assert result.code == 2
    scheme = source.split(":", 1)[0].lower()
    assert_one_message(result.err, f"{scheme}:// addresses are not read; download the file first (for example with "
                                   "curl, wget or your cloud's command line) and give its path as source")
