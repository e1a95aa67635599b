"""An adapter folder one of whose files was cut short by an interrupted copy (every mode that takes an adapter), and
three smaller messages: an adapter run's generation settings, PEFT's warning before the kit's own message, and a
run_name too long (docs/errors.md ZQ rows)."""

import re
import shutil
from pathlib import Path

import pytest

from medqlora import adapters, whole_files
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import assert_one_message, kit_argv, only_run, run_cli, run_tiny, with_set


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> Path:
    """One finished training run of the tiny model (each test works on a copy of it)."""
    out = tmp_path_factory.mktemp("trained")
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "1"}) == 0
    return only_run(out)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copied" / run.name))


def _cut(file: Path, keep: int) -> None:
    file.write_bytes(file.read_bytes()[:keep])


# ---------------------------------------------------------------- ZQ01: an adapter folder's file cut short

MODES = {
    "chat": ("--mode", "chat", "--prompt", "What is fever?", "--adapter"),
    "test": ("--mode", "test", "--adapter"),
    "eval": ("--mode", "eval", "--adapter"),
    "export": ("--mode", "export", "--adapter"),
    "init_adapter": ("--mode", "train", "--set", "training.init_adapter="),
}


def _argv(tiny_model_dir: Path, out: Path, mode: str, adapter: Path) -> list[str]:
    args = MODES[mode]
    if mode == "init_adapter":
        args = (*args[:-1], f"{args[-1]}{adapter}")
    else:
        args = (*args, str(adapter))
    return kit_argv(tiny_model_dir, out, *args)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_run_whose_tokenizer_json_is_cut_short_is_refused_naming_the_file(trained, tiny_model_dir, tmp_path,
                                                                           capsys, mode):
    """The run folder copied onto a full disk: its adapter/tokenizer.json stops at byte 5000. Chat and test ended in
    `internal error: JSONDecodeError: Expecting property name ... (char 4998)`, exit 1."""
    run = _copy(trained, tmp_path)
    _cut(run / "adapter" / "tokenizer.json", 5000)
    out = tmp_path / "out"
    result = run_cli(capsys, _argv(tiny_model_dir, out, mode, run))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {run / 'adapter'} is damaged: its tokenizer.json is cut short "
                                   "or damaged (not JSON: Expecting")
    assert f"Copy the run folder {run} again (the whole folder, onto a disk with room)" in result.err
    assert not out.exists() and sorted(p.name for p in run.parent.iterdir()) == [run.name]  # nothing was started
    if mode in ("chat", "init_adapter"):  # the plan refuses it too
        assert run_cli(capsys, [*_argv(tiny_model_dir, out, mode, run), "--dry-run"]).code == 2


def test_a_checkpoint_whose_training_state_is_cut_points_at_another_checkpoint(trained, tiny_model_dir, tmp_path,
                                                                             capsys):
    """A checkpoint used as an adapter whose optimizer.pt was cut in half: named, with the run's other adapters."""
    import torch

    run = _copy(trained, tmp_path)
    checkpoint = Path(shutil.copytree(run / "adapter", run / "checkpoints" / "checkpoint-1"))
    torch.save({"state": {0: torch.zeros(64, 64)}}, checkpoint / "optimizer.pt")
    _cut(checkpoint / "optimizer.pt", (checkpoint / "optimizer.pt").stat().st_size // 2)
    result = run_cli(capsys, _argv(tiny_model_dir, tmp_path / "out", "chat", checkpoint))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {checkpoint} is damaged: its optimizer.pt is cut short")
    assert (f"Use another checkpoint of the run (in {run / 'checkpoints'}) or its adapter ({run / 'adapter'})"
            in result.err)


def test_a_foreign_adapter_whose_tokenizer_config_is_cut_is_told_to_be_copied_again(lora_folder, tiny_model_dir,
                                                                                   tmp_path, capsys):
    folder = Path(shutil.copytree(lora_folder, tmp_path / "mine"))
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048, "chat_templ')
    result = run_cli(capsys, _argv(tiny_model_dir, tmp_path / "out", "test", folder))
    assert result.code == 2
    assert_one_message(result.err, f"The adapter in {folder} is damaged: its tokenizer_config.json is cut short")
    assert "Copy the adapter folder again (all its files) from where it came." in result.err


def test_the_adapter_boundary_reads_no_weight_it_does_not_need(trained, tiny_model_dir, tmp_path, capsys,
                                                              monkeypatch):
    """Every file of the folder is checked whole without reading a tensor but once, for its finiteness: --adapter
    and training.init_adapter read each weight once at the boundary (so --dry-run refuses a NaN as the run does)."""
    read = []
    real = whole_files.non_finite_weights

    def counted(file):
        read.append(file)
        return real(file)

    monkeypatch.setattr(whole_files, "non_finite_weights", counted)
    monkeypatch.setattr(adapters, "non_finite_weights", counted)
    run = _copy(trained, tmp_path)
    assert run_cli(capsys, [*_argv(tiny_model_dir, tmp_path / "out", "chat", run), "--dry-run"]).code == 0
    assert read == [run / "adapter" / "adapter_model.safetensors"]
    read.clear()
    assert run_cli(capsys, [*_argv(tiny_model_dir, tmp_path / "out", "init_adapter", run), "--dry-run"]).code == 0
    assert read == [run / "adapter" / "adapter_model.safetensors"]


def test_whole_files_tells_a_cut_file_of_each_kind_from_a_whole_one(trained, tmp_path):
    """The one inspection behind --resume and the adapter boundary: without values, no weight is read and a cut
    file of each kind is still found."""
    import torch

    folder = Path(shutil.copytree(trained / "adapter", tmp_path / "a"))
    torch.save({"x": torch.ones(8)}, folder / "scheduler.pt")
    assert whole_files.first_damage(folder, values=False) is None
    assert whole_files.first_damage(folder, values=True) is None
    for name in ("adapter_model.safetensors", "scheduler.pt", "tokenizer.json"):
        damaged = Path(shutil.copytree(folder, tmp_path / f"cut-{name}"))
        _cut(damaged / name, (damaged / name).stat().st_size - 40)
        for values in (False, True):
            damage = whole_files.first_damage(damaged, values=values)
            assert damage is not None and damage.file.name == name and "cut short" in damage.problem


# ---------------------------------------------------------------- ZQ02: a text setting too long, in characters


def test_a_run_name_over_200_characters_is_told_in_characters(tiny_model_dir, tmp_path, capsys):
    """pydantic's limit checked after the setting's own validator said 'at most 200 items', a list's word."""
    result = run_cli(capsys, [*kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run"),
                              "--set", f"output.run_name={'x' * 300}"])
    assert result.code == 2
    assert_one_message(result.err, "'output.run_name': Text should have at most 200 characters, not 300")
    assert "items" not in result.err
    config = tmp_path / "long.yaml"
    config.write_text("data:\n  datasets:\n    - {source: x.jsonl, format: pubmedqa}\n"
                      f"output:\n  run_name: {'y' * 201}\n")
    with pytest.raises(ConfigError, match=r"long.yaml:5: 'output.run_name': Text should have at most 200 characters, "
                                          "not 201"):
        load_config(config)
    assert load_config(config, [f"output.run_name={'y' * 200}"]).output.run_name == "y" * 200


# ---------------------------------------------------------------- ZQ03: PEFT's warning before the kit's message


def _without_layer_0(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    from .conftest import record_adapter_as_saved

    file = run / "adapter" / "adapter_model.safetensors"
    weights = {k: v for k, v in load_file(file).items() if ".layers.0." not in k}
    save_file(weights, file, metadata={"format": "pt"})
    record_adapter_as_saved(run)


def test_an_adapter_lacking_tensors_is_told_once_by_the_kit_not_first_by_peft(trained, tiny_model_dir, tmp_path,
                                                                            capsys, recwarn):
    """PEFT's `Found missing adapter keys while loading the checkpoint: [14 names]` came before the kit's message."""
    run = _copy(trained, tmp_path)
    _without_layer_0(run)
    for mode in ("chat", "init_adapter"):
        argv = _argv(tiny_model_dir, tmp_path / "out", mode, run)
        result = run_cli(capsys, argv if mode == "chat" else with_set(argv, "training.max_steps=1"))
        assert result.code == 2
        assert_one_message(result.err, f"The adapter in {run / 'adapter'} is incomplete: its weights file lacks the "
                                       "LoRA matrices of 7 of the 14 modules its adapter_config.json targets")
        assert "missing adapter keys" not in result.err
        assert not [w for w in recwarn if "missing adapter keys" in str(w.message)]


def test_peft_warnings_are_shown_where_the_kit_lets_the_adapter_load(trained, tiny_model_dir, tmp_path, monkeypatch,
                                                                    recwarn):
    """Held back only where the kit's own message says it: an adapter the kit's check lets through keeps PEFT's
    warning."""
    from transformers import AutoModelForCausalLM

    from medqlora import adapter_loading

    run = _copy(trained, tmp_path)
    _without_layer_0(run)
    monkeypatch.setattr(adapter_loading, "check_loaded", lambda model, folder: None)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    adapter_loading.load_checked(base, run / "adapter")
    assert [w for w in recwarn if "Found missing adapter keys" in str(w.message)]


# ---------------------------------------------------------------- ZQ04: an adapter run's own generation settings


def test_answering_with_other_generation_settings_than_the_run_says_so_and_how_to_use_the_runs(
        trained, tiny_model_dir, tmp_path, capsys):
    """`--mode chat --adapter RUN` without --config answered with the default config's max_new_tokens, not the run's
    own (8), without a word: an adapter brings its run's model and data sections, its generation settings stay the
    command's. Now said, with the command that answers with the run's settings; which then says nothing more."""
    run = _copy(trained, tmp_path)
    note = (f"note: answering with generation max_new_tokens 16 (this command's config), not the run {run.name}'s own "
            f"(max_new_tokens 8, its config.yaml)")
    advice = f"To answer with the run's: --config {run / 'config.yaml'} --adapter {run}"
    for dry_run in (["--dry-run"], []):
        argv = _argv(tiny_model_dir, tmp_path / "out", "chat", run)
        result = run_cli(capsys, [*with_set(argv, "generation.max_new_tokens=16"), *dry_run])
        assert result.code == 0, result.err
        assert note in result.err and advice in result.err
    result = run_cli(capsys, ["--mode", "chat", "--prompt", "What is fever?", "--config", str(run / "config.yaml"),
                              "--adapter", str(run)])
    assert result.code == 0, result.err
    assert "note: answering with generation" not in result.err
    tokens = int(re.findall(r"^\((\d+) tokens?,", result.err, re.MULTILINE)[-1])
    assert 0 < tokens <= 8  # the run's own max_new_tokens
