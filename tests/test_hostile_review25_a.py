"""Round 25 of the hostile review: --dry-run of an adapter whose lora_alpha makes its change overflow 16-bit (the run
refused it after loading, the plan did not)."""

import json
import shutil

from .conftest import assert_one_message, kit_argv, run_cli


def test_the_dry_run_refuses_an_adapter_whose_change_overflows_as_the_run_does(lora_folder, tiny_model_dir, tmp_path,
                                                                              capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_folder, adapter)
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")  # a trained adapter: B is no longer zero
    save_file({k: v.fill_(0.01) if ".lora_B." in k else v for k, v in weights.items()},
              str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 1e30}))
    for dry in (["--dry-run"], []):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *dry, "--mode", "test", "--adapter",
                                          str(adapter)))
        assert result.code == 2, result.err[-1500:]
        assert_one_message(result.err, "changes the base model's weights by up to ")
        assert "beyond 65504, the largest 16-bit number" in result.err
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "test", "--adapter",
                                    str(adapter))).code == 0


def test_a_gguf_of_a_newer_version_is_not_called_damaged(tmp_path, capsys):
    import struct

    gguf = tmp_path / "v99.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQ", 99, 0, 0))
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path / "out"), "--set", f"model.name={gguf}"])
    assert result.code == 2
    assert_one_message(result.err, "is a GGUF file of version 99, newer than the versions the installed gguf reader "
                                   "handles (1 to 3): the file may be whole. Install a newer gguf")
    assert "damaged" not in result.err


def test_a_system_prompt_longer_than_the_length_is_named_as_what_to_shorten(tiny_model_dir, tmp_path, capsys):
    """'Raise model.max_seq_length' was the only advice, and the model's context could not hold 6,000 tokens."""
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "train", **{
        "data.system_prompt": "Be careful. " * 2000, "eval.benchmarks": "[]"}))
    assert result.code == 2
    assert_one_message(result.err, "No training example fits model.max_seq_length=256: data.system_prompt alone is ")
    assert "Shorten data.system_prompt" in result.err
