"""The README's examples are real: its data: example validates, its commands name real files."""

import re
from pathlib import Path

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
    listed = set(re.findall(r"^\| `([a-z0-9.-]+)` \| `unsloth/", README, re.M))
    assert listed == {p.stem for p in PRESETS_DIR.glob("*.yaml")}


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Run the tests.*?```bash\n(.*?)\n```", README, re.S).group(1)
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert command.startswith("python3 -m pip install") and command in ci.splitlines()


def test_the_accelerate_configs_in_the_readme_exist_and_load():
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"config/accelerate/[\w.]+\.yaml", README))
    assert named == {str(p.relative_to(root)) for p in (root / "config" / "accelerate").glob("*.yaml")}
    kinds = {}
    for name in sorted(named):
        config = load_config_from_file(str(root / name))  # what accelerate launch reads
        kinds[name] = str(config.distributed_type)
        assert config.mixed_precision == "no"  # the kit sets the precision from model.dtype
        if config.deepspeed_config:
            ds = json.loads((root / config.deepspeed_config["deepspeed_config_file"]).read_text())
            assert ds["zero_optimization"]["stage"] == 3
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # the adapter is saved
    assert sorted(kinds.values()) == ["DistributedType.DEEPSPEED", "DistributedType.FSDP"]
