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
