"""The README and the docs are real: their examples validate, their commands name real files, their links resolve."""

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from medqlora.config import PRESETS_DIR, validate

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def test_the_data_example_validates_against_the_schema():
    block = re.search(r"One example of each:\n\n```yaml\n(.*?)```", _doc("data.md"), re.S).group(1)
    cfg = validate(yaml.safe_load(block), source="docs/data.md")
    assert [d.format for d in cfg.data.datasets] == ["pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat",
                                                     "instruction"]
    assert cfg.data.datasets[-1].use_for == "validation"
    assert cfg.data.datasets[0].cv_fold == 0 and cfg.data.datasets[1].weight == 0.5
    assert cfg.data.eval_sets[0].format == "multiple_choice"


def test_the_eval_example_validates_against_the_schema():
    block = re.search(r"Example reports are in `examples/`.\n\n```yaml\n(.*?)```", _doc("evaluation.md"), re.S).group(1)
    cfg = validate({**yaml.safe_load(block), "data": {"datasets": [{"source": "x.jsonl", "format": "chat"}]}})
    assert [b.kind for b in cfg.eval.benchmarks] == ["pubmedqa", "multiple_choice", "multiple_choice", "cot"]


def test_every_preset_in_the_readme_exists_and_every_preset_is_listed():
    presets = re.search(r"^## Presets\n(.*?)^## ", README, re.S | re.M).group(1)
    listed = set(re.findall(r"^\| `([a-z0-9._-]+)` \| `(?:unsloth/|pypi:)", presets, re.M))
    assert listed == {p.stem for p in PRESETS_DIR.glob("*.yaml")}


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Run the tests.*?```bash\n(.*?)\n```", README, re.S).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
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


def test_the_accelerate_configs_in_the_training_docs_pass_accelerates_own_checks(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the DeepSpeed file names its JSON relative to the kit's folder
    named = set(re.findall(r"config/accelerate/[\w.]+\.yaml", _doc("training.md")))
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
                scoped.setattr("accelerate.utils.dataclasses.is_cuda_available", lambda: True,
                               raising=False)  # accelerate 1.16 no longer asks
                scoped.setattr("torch.cuda.current_device", lambda: 0)
                plugin = FullyShardedDataParallelPlugin()
                assert str(plugin.sharding_strategy).endswith("FULL_SHARD") and not plugin.use_orig_params
                kinds[name] = "fsdp"
    assert sorted(kinds.values()) == ["deepspeed", "fsdp"]


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where a bracket is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = unicodedata.normalize("NFKC", re.sub(r"`", "", heading.strip())).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links(page: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_anchors():
    links = _relative_links(ROOT / "README.md")
    assert "docs/methods.md#when-to-use-which-method" in links and "docs/configuration.md" in links
    assert "when-to-use-which-method" in _anchors(ROOT / "docs" / "methods.md")
    assert _slug("SFT then GRPO: the HuatuoGPT-o1 recipe") == "sft-then-grpo-the-huatuogpt-o1-recipe"
    assert _slug("Checking before anything loads: `--dry-run`") == "checking-before-anything-loads---dry-run"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_as_many_cells_as_its_header(page):
    cells = lambda line: len(re.split(r"(?<!\\)\|", line.strip().strip("|")))  # noqa: E731
    lines = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M).splitlines()
    broken = []
    for i, line in enumerate(lines[1:], start=1):
        if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            width = cells(lines[i - 1])
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                if cells(row) != width:
                    broken.append(f"{row[:60]}... has {cells(row)} cells, its header {width}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def _installed_files(command: str) -> list[str]:
    return re.findall(r"pip install -r (\S+)", command)


def _requirement_lines(name: str) -> list[str]:
    return [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines() if line.split("#")[0].strip()]


def test_the_quick_start_and_the_test_install_read_the_same_cpu_torch():
    quick = re.search(r"## Quick start.*?```bash\n(.*?)\n```", README, re.S).group(1)
    tests = re.search(r"Run the tests.*?```bash\n(.*?)\n```", README, re.S).group(1)
    assert _installed_files(quick) == ["requirements-cpu.txt"] and _installed_files(tests) == ["requirements-dev.txt"]
    cpu = _requirement_lines("requirements-cpu.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu and "-r requirements.txt" in cpu
    assert [line for line in cpu if line.startswith("torch")] == ["torch==2.13.0"]
    assert cpu.index("torch==2.13.0") < cpu.index("-r requirements.txt")  # else pip fetches the range's newest first
    dev = _requirement_lines("requirements-dev.txt")
    assert "-r requirements-cpu.txt" in dev and not [line for line in dev if line.startswith(("torch", "-r requirements.txt"))]
