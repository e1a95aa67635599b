"""The README's examples are real: its data: example validates, its commands name real files."""

import re
from pathlib import Path

import pytest
import yaml

from medqlora.config import PRESETS_DIR, validate

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_data_example_validates_against_the_schema():
    block = re.search(r"One example of each:\n\n```yaml\n(.*?)```", README, re.S).group(1)
    cfg = validate(yaml.safe_load(block), source="README.md")
    assert [d.format for d in cfg.data.datasets] == ["pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat",
                                                     "instruction"]
    assert cfg.data.datasets[-1].use_for == "validation"
    assert cfg.data.datasets[0].cv_fold == 0 and cfg.data.datasets[1].weight == 0.5
    assert cfg.data.eval_sets[0].format == "multiple_choice"


def test_the_eval_example_validates_against_the_schema():
    block = re.search(r"Example reports are in `examples/`.\n\n```yaml\n(.*?)```", README, re.S).group(1)
    cfg = validate({**yaml.safe_load(block), "data": {"datasets": [{"source": "x.jsonl", "format": "chat"}]}})
    assert [b.kind for b in cfg.eval.benchmarks] == ["pubmedqa", "multiple_choice", "multiple_choice", "cot"]


def test_every_preset_in_the_readme_exists_and_every_preset_is_listed():
    listed = set(re.findall(r"^\| `([a-z0-9._-]+)` \| `(?:unsloth/|pypi:)", README, re.M))
    assert listed == {p.stem for p in PRESETS_DIR.glob("*.yaml")}


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Run the tests.*?```bash\n(.*?)\n```", README, re.S).group(1)
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert command.startswith("python3 -m pip install") and command in ci.splitlines()


def _launch_environment(config_file: Path, monkeypatch) -> dict:
    """The environment `accelerate launch --config_file CONFIG` gives each process, from accelerate's own
    launch code, with the step that starts the processes replaced by one that keeps it."""
    from accelerate.commands import launch
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    kept = {}
    monkeypatch.setattr(launch, "deepspeed_launcher", lambda args: kept.update(prepare_deepspeed_cmd_env(args)[1]))
    monkeypatch.setattr(launch, "multi_gpu_launcher", lambda args: kept.update(prepare_multi_gpu_env(args)))
    monkeypatch.setattr(launch, "simple_launcher", lambda args: pytest.fail("launched as one process"))
    args = launch.launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    launch.launch_command(args)
    return kept


def test_the_accelerate_configs_in_the_readme_pass_accelerates_own_checks(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the DeepSpeed file names its JSON relative to the kit's folder
    named = set(re.findall(r"config/accelerate/[\w.]+\.yaml", README))
    assert named == {str(p.relative_to(root)) for p in (root / "config" / "accelerate").glob("*.yaml")}
    kinds = {}
    for name in sorted(named):
        with monkeypatch.context() as scoped:
            env = _launch_environment(root / name, scoped)
            for key, value in env.items():
                scoped.setenv(key, value)
            assert env.get("ACCELERATE_MIXED_PRECISION", "no") == "no"  # the kit sets the precision (model.dtype)
            if env.get("ACCELERATE_USE_DEEPSPEED") == "true":  # each process builds this plugin from env
                plugin = DeepSpeedPlugin()
                zero = plugin.hf_ds_config.config["zero_optimization"]
                assert zero["stage"] == 3 and plugin.zero3_init_flag is False
                assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the adapter is saved
                kinds[name] = "deepspeed"
            elif env.get("ACCELERATE_USE_FSDP") == "true":
                # the plugin asks which GPU its processes will use; this test runs where there is none
                scoped.setattr("accelerate.utils.dataclasses.is_cuda_available", lambda: True)
                scoped.setattr("torch.cuda.current_device", lambda: 0)
                plugin = FullyShardedDataParallelPlugin()
                assert str(plugin.sharding_strategy).endswith("FULL_SHARD") and not plugin.use_orig_params
                kinds[name] = "fsdp"
    assert sorted(kinds.values()) == ["deepspeed", "fsdp"]
