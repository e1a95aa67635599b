"""Round 27 of the hostile review: the mode given as a word (`... train`), export.push_to_hub=true, a damaged
tokenizer_config.json field, an evaluation question in a terminal's colours, its 'the' left out."""

import json
import shutil

import pytest

from medqlora.leakage import find_overlap

from .conftest import assert_one_message, kit_argv, run_cli
from .test_hostile_review15_e import _evaluation, _train

ASSAY = ("Is the affinity column-mediated immunoassay method suitable as an alternative to the microparticle enzyme "
         "immunoassay method as a blood tacrolimus assay?")


def test_the_mode_given_as_a_word_says_to_give_it_as_mode(capsys):
    with pytest.raises(SystemExit) as ended:
        run_cli(capsys, ["train", "--dry-run"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: train. The kit's way: --mode train" in err


def test_push_to_hub_given_as_true_says_it_takes_a_repository(tmp_path, capsys):
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--set", "export.push_to_hub=true"])
    assert result.code == 2
    assert_one_message(result.err, "export.push_to_hub is not a switch: it takes the hub repository to upload to, "
                                   "owner/name (--set export.push_to_hub=owner/name)")
    assert "quote it" not in result.err


@pytest.mark.parametrize("key, value, rule", [
    ("model_max_length", "abc", "a positive number of tokens"),
    ("model_max_length", True, "a positive number of tokens"),
    ("padding_side", "middle", "'left' or 'right'"),
    ("chat_template", 7, "a template (text), or a list of named ones"),
])
def test_a_damaged_tokenizer_config_field_is_named(tiny_model_dir, tmp_path, capsys, key, value, rule):
    """model_max_length "abc": an internal error (a TypeError inside transformers' tokenizer)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, key: value}))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train",
                                      **{"model.name": str(model)}))
    assert result.code == 2
    assert_one_message(result.err, f"tokenizer_config.json: '{key}' is {json.dumps(value)}; it must be {rule}.")


@pytest.mark.parametrize("reworded", [
    ASSAY.replace("suitable", "\x1b[1msuitable\x1b[0m").replace("tacrolimus", "\x1b[31mtacrolimus\x1b[0m"),
    ASSAY.replace("Is the ", "Is ").replace("to the ", "to "),
], ids=["terminal-colours", "the-left-out"])
def test_the_question_in_colours_or_without_its_the_is_refused(reworded):
    [overlap] = find_overlap(_train(reworded), _evaluation(ASSAY))
    assert not overlap.possible, overlap.describe()


def _adapter_with_tokenizer(lora_folder, tiny_model_dir, folder):
    shutil.copytree(lora_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    return folder


@pytest.mark.parametrize("damage, said", [
    ("max-length", "the adapter's tokenizer: {adapter}/tokenizer_config.json: 'model_max_length' is \"abc\"; it must "
                   "be a positive number of tokens"),
    ("template", "The chat template of the adapter in {adapter} (its chat_template.jinja, saved with it) cannot "
                 "render a conversation (TemplateSyntaxError"),
], ids=["tokenizer-config", "chat-template"])
def test_an_adapters_own_damaged_tokenizer_is_refused_by_the_dry_run(lora_folder, tiny_model_dir, tmp_path, capsys,
                                                                     damage, said):
    """An adapter saved with its own tokenizer, which test/chat load in place of the base model's: --dry-run passed
    it, the run ended in an internal error (model_max_length "abc") or refused it after loading the model."""
    adapter = _adapter_with_tokenizer(lora_folder, tiny_model_dir, tmp_path / "adapter")
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test", "--adapter", str(adapter))
    assert run_cli(capsys, argv).code == 0
    if damage == "max-length":
        config = json.loads((adapter / "tokenizer_config.json").read_text())
        (adapter / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": "abc"}))
    else:
        (adapter / "chat_template.jinja").write_text("{{ bad")
        config = json.loads((adapter / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (adapter / "tokenizer_config.json").write_text(json.dumps(config))
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, said.format(adapter=adapter))


def test_home_that_is_a_file_is_named_for_the_cache_not_medqlora_cache(tmp_path):
    """HOME set to a file and MEDQLORA_CACHE unset: the message named MEDQLORA_CACHE and said to leave it unset."""
    import os


    a_file = tmp_path / "a.jsonl"
    a_file.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if k != "MEDQLORA_CACHE"}
    import subprocess
    import sys

    from .conftest import ROOT, SCRIPT

    done = subprocess.run([sys.executable, str(SCRIPT), "--mode", "train", "--dry-run", "--output-dir",
                           str(tmp_path / "out")], env={**env, "HOME": str(a_file)}, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert_one_message(done.stderr, f"HOME: {a_file}/.cache/medqlora cannot be the kit's cache folder (~/.cache/"
                                    f"medqlora while MEDQLORA_CACHE is unset): {a_file} above it is not a folder. Set "
                                    "HOME to your home folder, or set MEDQLORA_CACHE to a folder you can write.")
