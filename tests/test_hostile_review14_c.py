"""Hostile and unlucky inputs at the kit's boundaries: a path setting or flag naming an environment variable
($HOME/runs) or wrapped in quote marks (Windows' "Copy as path"), an adapter whose weights file holds a base-model
tensor, a chat template that drops the system turn, a model folder saved without its tokenizer, an empty GRPO
rewards mapping, and the random-model maker given a str path."""

import os
import shutil
from pathlib import Path

import pytest

from medqlora.config import load_config
from medqlora.errors import ConfigError, ModelError

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides

HOME = os.path.expanduser("~")


# ---------------------------------------------------------------- paths taken as written ($VAR, quote marks)


def test_output_dir_naming_home_as_a_variable_is_refused_and_makes_no_folder_named_home(tmp_path, capsys,
                                                                                      monkeypatch):
    """`output.dir: $HOME/runs` (other tools' configs expand it) made a folder literally named '$HOME' in the
    working folder while the run printed '$HOME/runs/...'; now refused with the path to write, before any folder."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    for dry_run in (("--dry-run",), ()):
        result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "train", *dry_run,
                                          **{"output.dir": "$HOME/r14env"}))
        assert result.code == 2
        assert_one_message(result.err, "'output.dir': Value error, names the environment variable $HOME, which the "
                                        "kit does not expand: it would look for (or make) a path of those very "
                                        f"characters. Write '{HOME}/r14env'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no '$HOME' folder, no run folder
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "train", "--dry-run",
                                      "--output-dir", "${HOME}/r14env"))
    assert result.code == 2
    assert_one_message(result.err, "--output-dir '${HOME}/r14env': names the environment variable $HOME, which the "
                                    f"kit does not expand: it would look for (or make) a path of those very "
                                    f"characters. Write '{HOME}/r14env'.")


def test_a_variable_in_a_yaml_path_is_refused_at_its_line_and_an_unset_one_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDQLORA_NO_SUCH_VARIABLE", raising=False)
    config = tmp_path / "base.yaml"
    config.write_text("output:\n  dir: $MEDQLORA_NO_SUCH_VARIABLE/runs\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert f"{config}:2: 'output.dir': Value error, names the environment variable $MEDQLORA_NO_SUCH_VARIABLE, " \
           "which the kit does not expand ($MEDQLORA_NO_SUCH_VARIABLE is not set): it would look for (or make) a path" \
           " of those very characters. Write the path out in full" in str(refused.value)


def test_a_home_folder_of_no_user_is_refused_without_a_traceback(tmp_path, capsys):
    """`~nosuchuser/runs` made expanduser raise, an internal RuntimeError."""
    result = run_cli(capsys, kit_argv(tmp_path / "model", tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"output.dir": "~medqlora-no-such-user/runs"}))
    assert result.code == 2
    assert_one_message(result.err, "'output.dir': Value error, starts with ~medqlora-no-such-user, the home folder "
                                    "of a user this machine does not have. Write the path out in full")


def test_a_path_with_a_dollar_that_exists_as_written_is_taken(tmp_path, monkeypatch):
    """A file whose name holds a '$' (a price, a shell-escaped name) is a path like any other where it is there."""
    monkeypatch.setenv("EUR", "x")
    data = tmp_path / "cost$EUR.jsonl"
    data.write_text('{"instruction": "What is fever?", "output": "A raised body temperature."}\n')
    cfg = load_config(None, [f"data.datasets=[{{source: '{data}', format: instruction}}]"])
    assert cfg.data.datasets[0].source == str(data)


@pytest.mark.parametrize("key", ["model.name", "data.datasets.0.source", "generation.queries_file", "output.dir",
                                 "training.init_adapter", "eval.benchmarks.0.source"])
def test_a_path_setting_wrapped_in_quote_marks_says_so_and_names_the_path_meant(tmp_path, key):
    """A YAML value quoted twice, or a path pasted from Windows' "Copy as path": the quote marks were part of the
    path, and the messages said only `not found` / `neither a local file nor a hub id`."""
    meant = tmp_path / "there"
    meant.mkdir()
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"{key}='\"{meant}\"'"])
    assert f"'{key}': Value error, is wrapped in quote marks, which the kit takes as part of the path: it would " \
           f"look for (or make) a path of those very characters. Write '{meant}' (it exists) (got '\"{meant}\"')" \
           in str(refused.value)


@pytest.mark.parametrize("flag", ["--adapter", "--resume"])
def test_a_path_flag_wrapped_in_quote_marks_says_so(tmp_path, capsys, flag):
    run = tmp_path / "run"
    run.mkdir()
    mode = "chat" if flag == "--adapter" else "train"
    extra = ("--prompt", "hi") if flag == "--adapter" else ()
    result = run_cli(capsys, kit_argv(tmp_path / "model", tmp_path / "out", "--mode", mode, "--dry-run", *extra,
                                      flag, f"\u201c{run}\u201d"))
    assert result.code == 2
    assert_one_message(result.err, f"{flag} '\u201c{run}\u201d': is wrapped in quote marks, which the kit takes as "
                                    f"part of the path: it would look for (or make) a path of those very "
                                    f"characters. Write '{run}' (it exists).")


def test_a_config_path_wrapped_in_quote_marks_is_said_beside_not_found(tmp_path, capsys):
    config = tmp_path / "base.yaml"
    config.write_text("training:\n  max_steps: 2\n")
    result = run_cli(capsys, ["--mode", "train", "--dry-run", "--config", f'"{config}"'])
    assert result.code == 2
    assert_one_message(result.err, f"Config file or preset '\"{config}\"' (is wrapped in quote marks, which the kit "
                                    f"takes as part of the path; '{config}' exists) not found.")


# ---------------------------------------------------------------- GRPO rewards


def test_an_empty_rewards_mapping_is_refused_not_read_as_the_default_weights():
    """`--set grpo.rewards={}` on a preset replaced its weights with every default weight, without a word."""
    with pytest.raises(ConfigError) as refused:
        load_config("smollm2_grpo_medmcqa", ["grpo.rewards={}"])
    message = str(refused.value)
    assert "--set grpo.rewards: 'grpo.rewards': Value error, is empty ({}), so every reward would take its default " \
           "weight (multiple_choice 1, pubmedqa_label 1, answer 1, format 0.5, overlong 1)" in message
    assert "leave grpo.rewards out for the defaults" in message
    kept = load_config("smollm2_grpo_medmcqa", ["grpo.rewards={multiple_choice: 0}"])  # a reward named: replaced
    assert (kept.grpo.rewards.multiple_choice, kept.grpo.rewards.format) == (0.0, 0.5)


# ---------------------------------------------------------------- chat templates that drop the system turn

_DROPS_SYSTEM = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\n' + "
                 "m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "You are a careful medical assistant."


@pytest.fixture
def drops_system(smol_tokenizer):
    tokenizer = __import__("copy").deepcopy(smol_tokenizer)
    tokenizer.chat_template = _DROPS_SYSTEM
    return tokenizer


def test_a_template_that_drops_the_system_turn_gets_the_system_prompt_in_the_user_turn(drops_system,
                                                                                      smol_tokenizer):
    """Rendering did not raise, so the system turn was kept, and the template wrote nothing of it: data.system_prompt
    was lost to training, evaluation and chat. Now folded into the first user turn, as for templates that raise."""
    from medqlora.chat import chat_messages
    from medqlora.data import chat_turn_messages, render_prompt, tokenize_example
    from medqlora.rows import Example

    assert render_prompt(drops_system, SYSTEM, "What is fever?") == (
        f"<|im_start|>user\n{SYSTEM}\n\nWhat is fever?<|im_end|>\n<|im_start|>assistant\n")
    fitted, _ = tokenize_example(Example(prompt="What is fever?", response="A raised temperature."), drops_system,
                                 SYSTEM, 256, "truncate", "<|im_end|>\n")
    assert SYSTEM in drops_system.decode(fitted["input_ids"])  # trained with it
    row = chat_turn_messages(drops_system, None, (("system", "Be kind."), ("user", "q"), ("assistant", "a")))
    assert row == [{"role": "user", "content": "Be kind.\n\nq"}, {"role": "assistant", "content": "a"}]
    assert chat_messages(drops_system, SYSTEM, [("q1", "a1")], "q2")[0] == {"role": "user", "content": f"{SYSTEM}\n\nq1"}
    # a template that writes the system turn keeps it as a system turn
    assert render_prompt(smol_tokenizer, SYSTEM, "What is fever?").startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")


def test_the_ollama_template_of_a_template_that_drops_the_system_turn_folds_it_as_training_does(drops_system):
    from medqlora import ollama

    pieces = ollama.pieces(drops_system)
    assert pieces.after_system == "\n\n"  # the system prompt opens the first user message
    ollama.check_template(ollama.go_template(pieces), drops_system, SYSTEM)


# ---------------------------------------------------------------- models and adapters


def test_a_model_folder_without_tokenizer_files_says_so_not_to_install_sentencepiece(tiny_model_dir, tmp_path,
                                                                                     capsys):
    """model.save_pretrained alone: transformers asked for sentencepiece or tiktoken, which would not help."""
    model = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, model)
    (model / "tokenizer.json").unlink()
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "train", "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, f"model.name: the folder '{model}' holds no tokenizer files (tokenizer.json, or a "
                                    "vocabulary such as tokenizer.model or vocab.json), so its tokenizer cannot load")
    assert "sentencepiece" not in result.err
    assert "tokenizer.save_pretrained(folder)" in result.err


def _adapter_copy(lora_folder: Path, to: Path, extra: dict) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(lora_folder, to)
    weights = to / "adapter_model.safetensors"
    save_file({**load_file(weights), **extra}, str(weights), metadata={"format": "pt"})
    return to


def test_an_adapter_holding_a_base_model_tensor_is_refused_naming_it(tiny_model_dir, lora_folder, tmp_path, capsys):
    """An embedding of zeros in an adapter from elsewhere: PEFT loaded it over the base model's embedding and every
    reply was empty, exit 0."""
    import torch

    extra = {"base_model.model.model.embed_tokens.weight": torch.zeros(49152, 64)}
    adapter = _adapter_copy(lora_folder, tmp_path / "extrakey", extra)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "chat", "--prompt",
                                      "What is fever?", "--adapter", str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {adapter} holds a tensor that its adapter_config.json does not "
                                    "imply (no LoRA weight of its target_modules, no module of its modules_to_save): "
                                    "base_model.model.model.embed_tokens.weight [49152, 64]. Loading the adapter "
                                    "would put it over the base model's own weight of that name.")
    assert "list embed_tokens in modules_to_save of adapter_config.json" in result.err
    assert "This answer was generated" not in result.out  # nothing answered with the zeroed embedding


def test_tensors_the_config_implies_pass_and_foreign_ones_are_counted(tiny_model_dir, tmp_path):
    """PEFT's own adapter with modules_to_save (the full lm_head beside the LoRA matrices) loads; several foreign
    tensors are named three at a time."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from medqlora import adapters

    def base():
        return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)

    folder = tmp_path / "saves-lm-head"
    get_peft_model(base(), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])).save_pretrained(
        str(folder))
    adapters.check_loaded(PeftModel.from_pretrained(base(), str(folder)), folder)
    extra = {f"base_model.model.model.layers.{i}.mlp.up_proj.weight": torch.zeros(128, 64) for i in range(2)}
    extra |= {f"base_model.model.model.layers.{i}.input_layernorm.weight": torch.ones(64) for i in range(2)}
    foreign = _adapter_copy(folder, tmp_path / "foreign", extra)
    with pytest.raises(ModelError, match=r"holds 4 tensors that its adapter_config.json does not imply .* and 1 "
                                         r"more\. .* list input_layernorm, up_proj in modules_to_save"):
        adapters.check_loaded(PeftModel.from_pretrained(base(), str(foreign)), foreign)


@pytest.mark.slow
def test_make_random_model_takes_a_str_path(smol_dir, tmp_path):
    from medqlora.random_model import make_random_model

    out = make_random_model("tiny", str(tmp_path / "tiny"), tokenizer_from=str(smol_dir), dtype="fp32")
    assert out == tmp_path / "tiny" and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_tiny_overrides_still_validate(tmp_path):
    """The path checks leave ordinary paths alone (relative, absolute, ~/...)."""
    cfg = load_config(None, tiny_overrides(tmp_path / "model", tmp_path / "out", **{"generation.queries_file":
                                                                                    "~/queries.yaml"}))
    assert cfg.output.dir == str(tmp_path / "out")
