"""bench/speed.py runs through the kit's command line on the CPU (a smoke run: it must not rot; no timings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_bench_script_trains_each_configuration_and_writes_its_table(smol_dir, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--shape", "tiny", "--backends", "hf", "--data",
         "pubmedqa,random", "--settings", "seed,auto", "--steps", "3", "--max-seq", "128", "--random-rows", "8",
         "--extra", '{"data.datasets.0.max_samples": 24}', "--out", str(out)],  # 3 steps of 2 x 4 rows
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert [(r["data"], r["setting"]) for r in result["rows"]] == [
        ("pubmedqa", "seed"), ("pubmedqa", "auto"), ("random", "seed"), ("random", "auto")]
    for row in result["rows"]:
        assert row["rc"] == 0 and row["steps"] == 3 and row["tokens_per_s"] > 0
        assert row["micro_x_accum"] == "2x4"  # on a CPU auto-fit leaves the config alone
    random_seed = result["rows"][2]
    assert random_seed["padding_percent"] == 0.0  # every random row is max_seq_length long
    assert result["params"] > 6_000_000
    table = (out / "bench.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| hf | pubmedqa | seed | 2x4 |")


def _profile_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import profile_steps
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return profile_steps


def test_profile_breakdown_sorts_kernels_and_counts_gpu_idle_time():
    """Two 1000-us steps; kernels: a GEMM, a dequantize overlapping it, a flash kernel, an Adam step, a copy."""
    breakdown = _profile_module().breakdown

    def kernel(name, ts, dur, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": 7}

    trace = {"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#4", "ts": 0, "dur": 1000, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#5", "ts": 1000, "dur": 1000, "tid": 1},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#5", "ts": 1000, "dur": 1000, "tid": 9},
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 0, 400), kernel("kDequantizeBlockwise<nf4>", 300, 200),
        kernel("flash_fwd_kernel", 1000, 300), kernel("multi_tensor_apply_kernel<AdamFunctor>", 1400, 100),
        kernel("Memcpy HtoD", 1600, 50, cat="gpu_memcpy"),
    ]}
    result = breakdown(trace)
    assert result["device"] == "gpu" and result["steps"] == 2 and result["wall_ms"] == 2.0
    assert result["categories_ms"] == {"matmul": 0.4, "attention": 0.3, "dequantize": 0.2, "optimizer": 0.1,
                                       "copy": 0.05}
    assert result["busy_ms"] == 0.95 and result["gpu_idle_ms"] == 1.05  # the overlap counted once


def test_profile_breakdown_of_a_cuda_only_trace_takes_the_steps_wall_time_from_the_host():
    """CUDA-only tracing records no host-side step annotations: the window measured between two synchronizations
    gives the steps' wall time, and the idle time is what the kernels leave of it."""
    breakdown = _profile_module().breakdown
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16bf16_bf16f32", "ts": 0, "dur": 2500, "tid": 7},
        {"ph": "X", "cat": "kernel", "name": "flash_fwd_kernel", "ts": 2500, "dur": 500, "tid": 7},
    ]}
    result = breakdown(trace, {"wall_ms": 4.0, "steps": 2})
    assert result["steps"] == 2 and result["wall_ms"] == 4.0
    assert result["busy_ms"] == 3.0 and result["gpu_idle_ms"] == 1.0
    assert breakdown(trace)["wall_ms"] == 3.0  # without the window: the kernels' span, no idle time seen


@pytest.mark.slow
def test_profile_script_records_steps_through_the_kits_trainer(tiny_model_dir, tmp_path):
    out = tmp_path / "profile"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_steps.py"), "--out", str(out), "--steps", "2", "--warmup", "1",
         "--set", f"model.name={tiny_model_dir}", "--set", "model.max_seq_length=128",
         "--set", "data.datasets.0.max_samples=8", "--set", "training.micro_batch_size=4",
         "--set", "generation.max_new_tokens=4", "--set", "eval.benchmarks.0.max_items=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "breakdown.json").read_text())
    assert result["steps"] == 2 and result["device"] == "cpu"
    assert result["categories_ms"]["matmul"] > 0 and result["categories_ms"]["loss"] > 0
    assert "| matmul |" in (out / "breakdown.md").read_text()


def test_generation_bench_answers_along_both_paths_and_compares_their_texts(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "generation.py"), "--model", str(tiny_model_dir), "--prompts", "2",
         "--max-new-tokens", "4", "--batch-size", "2", "--alone", "2", "--also-batch-sizes", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "generation.json").read_text())
    assert (result["before"]["by_length"], result["after"]["by_length"]) == (False, True)
    assert result["after"]["static_cache"] is False  # auto, the default, is off on a CPU
    for path in ("before", "after"):
        assert 0 < result[path]["generated_tokens"] <= 2 * 4 and result[path]["tokens_per_s"] > 0
    assert result["prompt_tokens_max"] > 3 * result["prompt_tokens_min"]  # an abstract beside a question alone
    assert result["after_vs_before"]["identical"] and result["after_vs_alone"]["identical_prompts"] == "2/2"
    assert (out / "generation.md").read_text().startswith("| path | ordered by length |")
    [one] = result["other_batch_sizes"]  # the after path again, a prompt a batch: the same texts in fp32
    assert (one["batch_size"], one["vs_after"]["identical_prompts"]) == (1, "2/2") and one["tokens_per_s"] > 0


def _bench_module(name: str):
    """A script of bench/ imported as a module (bench/ is no package)."""
    import importlib

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_the_hf_backend_is_measured_with_and_without_liger_side_by_side():
    speed = _bench_module("speed")
    assert speed.BACKENDS["hf"] == {"backend": "hf", "training.kernels": "none"}
    assert speed.BACKENDS["hf+liger"] == {"backend": "hf", "training.kernels": "liger"}
    with pytest.raises(SystemExit, match="unknown backend 'liger'"):
        speed.check_backends(["hf", "liger"])

    def row(backend, tokens, reserved, losses):
        return {"backend": backend, "data": "random", "setting": "auto", "rc": 0, "tokens_per_s": tokens,
                "peak_reserved_gib": reserved, "micro_x_accum": "4x2", "losses": losses}

    lines = speed.comparisons([row("hf", 1000.0, 80.0, [2.0, 1.0]), row("hf+liger", 1500.0, 60.0, [2.0, 1.01])])
    expected = ("- hf+liger vs hf, random / auto: useful tokens/s x1.50, peak reserved 80.0 -> 60.0 GiB, "
                "micro x accum 4x2 -> 4x2, loss curves at most 1.00% apart over 2 steps")
    assert lines == ["", expected]
    assert speed.comparisons([row("hf", 1000.0, 80.0, [2.0])]) == []


def test_plain_loop_groups_the_recorded_micro_batches_by_the_optimizer_step_that_trained_them():
    plain_loop = _bench_module("plain_loop")
    # an epoch's last step may take fewer micro-batches; a batch collated ahead (the loader prefetches) is left out
    rec = plain_loop.Recording(batches=list(range(8)), step_ends=[2, 4, 6, 7])
    assert plain_loop.steps_of(rec, warmup=1) == ([[0, 1]], [[2, 3], [4, 5], [6]])


def test_plain_loop_times_the_kits_steps_and_a_plain_loop_on_the_same_tokens(tiny_model_dir, tmp_path):
    out = tmp_path / "plain"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plain_loop.py"), "--out", str(out), "--backend", "hf", "--steps", "2",
         "--warmup", "1", "--set", f"model.name={tiny_model_dir}", "--set", "model.max_seq_length=128",
         "--set", "data.datasets.0.max_samples=16", "--set", "training.micro_batch_size=2",
         "--set", "training.gradient_accumulation_steps=2"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "plain_loop.json").read_text())
    assert result["steps"] == 2 and result["micro_batches"] == 4 and result["tokens"] > 0
    assert result["kit_over_plain"] == pytest.approx(result["kit_ms_per_step"] / result["plain_ms_per_step"], rel=1e-2)
    assert "kit / plain" in (out / "plain_loop.md").read_text()


def test_plain_loop_lays_the_same_packed_tokens_out_at_one_length_and_as_dense_rows():
    import torch

    plain_loop = _bench_module("plain_loop")

    def packed(n: int) -> dict:
        return {"input_ids": torch.arange(1, n + 1)[None], "labels": torch.arange(1, n + 1)[None],
                "position_ids": torch.arange(n)[None]}

    steps = [[packed(7), packed(5)], [packed(9), packed(3)]]
    fixed = plain_loop.fixed_length(steps, 9)
    assert [b["input_ids"].shape[1] for s in fixed for b in s] == [9, 9, 9, 9]
    # the padding is a segment of its own: positions restart, its labels are ignored, the tokens before unchanged
    assert fixed[0][1]["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert fixed[0][1]["labels"][0].tolist() == [1, 2, 3, 4, 5, -100, -100, -100, -100]
    assert fixed[1][0] is steps[1][0]
    dense = plain_loop.dense_rows(steps, row=3, rows_per_batch=2)
    assert [[tuple(b["input_ids"].shape) for b in s] for s in dense] == [[(2, 3), (2, 3)], [(2, 3), (2, 3)]]
    assert all("position_ids" not in b for s in dense for b in s)
    assert dense[0][0]["input_ids"].flatten().tolist() == [1, 2, 3, 4, 5, 6]  # the step's tokens in order
    assert dense[0][1]["input_ids"].flatten().tolist() == [7, 1, 2, 3, 4, 5]
