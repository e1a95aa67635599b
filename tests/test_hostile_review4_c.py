"""Hostile inputs around models, adapters, chat and credentials: each ends in one clear message (exit 2) or is
said, instead of a traceback, a hang, a wrong message or a credential printed in clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from medqlora.config import load_config
from medqlora.errors import MedQLoRAError
from medqlora.messages import say
from medqlora.runs import RunDir, check_output_dir

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz123456"
SECRET = "s3cretPassw0rdValue"


@pytest.mark.parametrize("value", [TOKEN, SECRET])
def test_an_output_folder_holding_a_credential_is_refused_by_name(tmp_path, monkeypatch, value):
    monkeypatch.setenv("HF_TOKEN", value)
    root = tmp_path / value / "runs"
    with pytest.raises(MedQLoRAError) as refused:
        check_output_dir(root)  # what --dry-run checks
    assert "HF_TOKEN" in str(refused.value) and value not in str(refused.value)
    with pytest.raises(MedQLoRAError, match="holds the value of HF_TOKEN"):
        load_config(None, [f"output.dir={root}"])  # the config boundary; --output-dir is checked as the run starts
    cfg = load_config(None, ["output.run_name=r1"])
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(root)})})
    with pytest.raises(MedQLoRAError, match="contains the value of HF_TOKEN"):
        RunDir.create(cfg)
    assert not (tmp_path / value).exists()
    from medqlora.resume import resumable_run

    with pytest.raises(MedQLoRAError, match="The run folder to resume contains the value of HF_TOKEN"):
        resumable_run(str(tmp_path / value / "run1"), None, cfg)


def test_said_lines_mask_credentials(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    say(f"run folder: /tmp/{SECRET}/x")
    out = capsys.readouterr().out
    assert SECRET not in out and "<WANDB_API_KEY>" in out


LOOPING_TEMPLATE = ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
                    "{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_a_chat_template_that_loops_for_ever_is_refused_in_bounded_time(smol_dir, monkeypatch):
    from transformers import AutoTokenizer

    from medqlora import backends
    from medqlora.backends import tokenizer as tokenizer_module
    from medqlora.errors import ModelError

    tokenizer = AutoTokenizer.from_pretrained(str(smol_dir))
    tokenizer.chat_template = LOOPING_TEMPLATE
    monkeypatch.setattr(tokenizer_module, "CHAT_TEMPLATE_SECONDS", 0.5)
    with pytest.raises(ModelError, match="did not finish rendering a two-turn conversation in 0.5 seconds"):
        backends.prepare_tokenizer(tokenizer, load_config(None, ["model.name=/models/looping"]))


def test_a_cut_off_tokenizer_json_is_named(smol_dir, tmp_path):
    import shutil

    from medqlora import backends
    from medqlora.errors import ModelError

    model = tmp_path / "badtok"
    model.mkdir()
    for path in Path(smol_dir).glob("*.json"):
        shutil.copy(path, model / path.name)
    (model / "tokenizer.json").write_text((Path(smol_dir) / "tokenizer.json").read_text()[:25] + "\n")
    cfg = load_config(None, [f"model.name={model}"])
    with pytest.raises(ModelError, match="its tokenizer.json is not valid JSON.*Copy or download tokenizer.json"):
        backends.load_tokenizer(cfg, str(model))


def _fake_replies(monkeypatch, seen):
    from medqlora import chat

    def fake_reply(cfg, model, tokenizer, prompt, out):
        seen.append(prompt)
        out.write(f"reply {len(seen)}")
        return chat.Reply(f"reply {len(seen)}", 2, 0.01, 0.02)

    monkeypatch.setattr(chat, "stream_reply", fake_reply)
    return type("M", (), {"config": type("C", (), {"max_position_embeddings": 8192})()})()


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_binary_input_to_chat_is_skipped_not_a_crash(smol_tokenizer, monkeypatch, errors):
    import io

    from medqlora import chat

    seen = []
    model = _fake_replies(monkeypatch, seen)
    raw = b"\x7fELF\x02\x01\xff\xfe\x00\x00\n" + b"What is aspirin?\n/exit\n"
    inp = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors=errors)
    out, err = io.StringIO(), io.StringIO()
    given = chat.interactive(load_config(None, []), model, smol_tokenizer, inp, out, err, "title")
    assert given == 1 and "What is aspirin?" in seen[0]
    assert "not UTF-8 text" in err.getvalue()


def test_a_prompt_that_is_not_text_is_refused(smol_tokenizer):
    import io

    from medqlora import chat
    from medqlora.errors import ConfigError

    with pytest.raises(ConfigError, match="--prompt is not UTF-8 text"):
        chat.one_shot(load_config(None, []), None, smol_tokenizer, "bad \udcff bytes", io.StringIO(), io.StringIO())


def test_chat_with_a_model_trained_without_turn_markers_answers_each_question_alone(smol_tokenizer, monkeypatch):
    import io

    from medqlora import chat

    seen = []
    model = _fake_replies(monkeypatch, seen)
    cfg = load_config(None, ["model.chat_template=false"])
    err = io.StringIO()
    given = chat.interactive(cfg, model, smol_tokenizer, io.StringIO("What is aspirin?\nAnd the dose?\n"),
                             io.StringIO(), err, "title")
    assert given == 2 and "What is aspirin?" not in seen[1] and "reply 1" not in seen[1]
    assert "each question is answered on its own" in err.getvalue()


def test_a_prompt_argument_that_is_not_text_is_refused_before_loading(capsys, tmp_path):
    from .conftest import run_cli

    result = run_cli(capsys, ["--mode", "chat", "--prompt", "bad \udcff bytes", "--output-dir", str(tmp_path)])
    assert result.code == 2 and "the argument bad \\xff bytes holds bytes that are not UTF-8 text" in result.err


@pytest.mark.parametrize("setting, fragment", [
    ({"lora_alpha": -32}, "lora_alpha is -32, not a positive number"),
    ({"lora_alpha": 0}, "lora_alpha is 0, not a positive number"),
    ({"r": 0}, "r is 0, not a positive integer"),
    ({"alpha_pattern": {"q_proj": -4}}, "alpha_pattern gives q_proj a value that is not a positive number"),
])
def test_an_adapter_whose_scale_is_not_positive_is_refused(tmp_path, setting, fragment):
    from medqlora import adapters
    from medqlora.errors import ModelError

    from .test_adapters import make_adapter

    folder = make_adapter(tmp_path / "a", "m", **setting)
    with pytest.raises(ModelError, match=fragment):
        adapters.find(folder)


def test_modules_to_save_without_their_weights_are_named(tmp_path):
    from medqlora import adapters
    from medqlora.errors import ModelError

    from .test_adapters import make_adapter

    folder = make_adapter(tmp_path / "a", "m", modules_to_save=["lm_head"])
    with pytest.raises(ModelError) as refused:
        adapters.find(folder)
    message = str(refused.value)
    assert "modules_to_save ['lm_head']" in message and "holds no weights" in message
    assert "different base model" not in message
    adapters.find(make_adapter(tmp_path / "b", "m", modules_to_save=None))
    import torch
    from safetensors.torch import load_file, save_file

    weights = folder / adapters.WEIGHTS_NAME  # as PEFT saves a module of modules_to_save
    save_file({**load_file(weights), "base_model.model.lm_head.weight": torch.zeros(8, 64)}, str(weights))
    adapters.find(folder)


@pytest.mark.parametrize("value, fragment", [
    ("", "--adapter is empty (an unset shell variable?)"),
    ("/nonexistent/adapter", "--adapter '/nonexistent/adapter': no such file or folder"),
])
def test_an_adapter_path_that_is_empty_or_missing_says_so(capsys, tmp_path, value, fragment):
    from .conftest import run_cli

    result = run_cli(capsys, ["--mode", "test", "--dry-run", "--adapter", value, "--output-dir", str(tmp_path)])
    assert result.code == 2 and fragment in result.err
