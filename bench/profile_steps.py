"""Where a training step's time goes: a torch profiler trace of steady-state steps through the kit's own trainer.

The kit runs in this process exactly as `medical_qlora_finetuning.py --mode train` would (same config, same
trainer, callbacks and collator); a trainer callback starts the profiler after the warm-up steps and records
the next ones. The trace is sorted into what a step spends its time on:

    dequantize    4-bit weights dequantized for each matmul (bitsandbytes / Unsloth kernels)
    matmul        GEMMs (forward, input gradients, LoRA)
    attention     flash / memory-efficient / SDPA kernels (varlen with packed rows)
    norm+act      RMSNorm, SwiGLU/SiLU, RoPE and other elementwise kernels
    loss          cross-entropy (chunked or fused)
    optimizer     the optimizer step (8-bit or fused Adam)
    copy          memory copies and fills
    other         every other kernel
    gpu idle      step wall time with no kernel running: host-side work (collation, callbacks, logging,
                  Python overhead, syncs) the GPU waits for

    python bench/profile_steps.py --out bench/results/profile-unsloth --backend unsloth --steps 4 --warmup 3 \
        --set model.name=/tmp/llama31-8b-random --set training.packing=true --set training.auto_fit=true

Writes OUT/trace.json (open in chrome://tracing or Perfetto), OUT/breakdown.json and OUT/breakdown.md.
On a GPU only CUDA activity is recorded (CPU operator tracing slows the host several times over and inflates the
GPU's idle time; --cpu-trace adds it, to see what the host does), and the profiled steps' wall time is measured
between two synchronizations. On a CPU the same categories are read from CPU operators (no idle time); that is
what the tests use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (  # first match wins; lower-case substrings of names
    ("dequantize", ("dequant", "kdequantize", "nf4", "fp4", "int4", "4bit")),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa", "softmax")),
    ("loss", ("cross_entropy", "crossentropy", "nll_loss", "nllloss", "log_softmax", "logsumexp")),
    ("optimizer", ("adam", "optimizer", "multi_tensor", "foreach", "lerp", "_fused_")),
    ("matmul", ("gemm", "matmul", "mm_", "addmm", "mmbackward", "bmmbackward", "aten::mm", "aten::bmm", "cutlass", "xmma", "sm90", "sm80",
                "cublas", "linear", "ampere", "hopper")),
    ("norm+act", ("rms", "norm", "silu", "swiglu", "gelu", "rope", "rotary", "_fg_", "_dwf", "elementwise",
                  "vectorized", "mul", "add", "sigmoid", "exp", "pow", "rsqrt")),
    ("copy", ("memcpy", "memset", "copy", "fill", "cat", "contiguous", "index")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def breakdown(trace: dict[str, Any], window: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time per category (ms) inside the profiled steps, from a chrome trace; GPU kernels where present,
    else top-level CPU operators. ``window`` (wall_ms, steps: measured by the host between synchronizations)
    gives the steps' wall time when the trace holds no host-side step annotations (CUDA-only tracing)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    steps = [e for e in events  # the host-side annotation only (kineto mirrors it on the GPU timeline)
             if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#")]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    device = bool(kernels)
    if not device:  # CPU: operators that are not inside another operator of the same thread
        ops = sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: (e["tid"], e["ts"]))
        kernels, open_until = [], {}
        for op in ops:
            if op["ts"] >= open_until.get(op["tid"], float("-inf")):
                kernels.append(op)
                open_until[op["tid"]] = op["ts"] + op["dur"]
    if steps:
        wall = sum(s["dur"] for s in steps)
    elif window:
        wall = window["wall_ms"] * 1000
    else:
        wall = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    steps_counted = len(steps) or (window or {}).get("steps", 0)
    per: dict[str, float] = {}
    for kernel in kernels:
        label = "copy" if kernel.get("cat") in ("gpu_memcpy", "gpu_memset") else category(str(kernel["name"]))
        per[label] = per.get(label, 0.0) + kernel["dur"]
    busy = _union_length([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
    result = {"device": "gpu" if device else "cpu", "steps": steps_counted, "wall_ms": round(wall / 1000, 2),
              "busy_ms": round(busy / 1000, 2),
              "categories_ms": {k: round(v / 1000, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}}
    if device:
        result["gpu_idle_ms"] = round(max(0.0, wall - busy) / 1000, 2)
    return result


def markdown(result: dict[str, Any], title: str) -> str:
    wall = result["wall_ms"] or 1.0
    lines = [f"### {title}", "", f"{result['steps']} profiled steps, {result['wall_ms']} ms in all "
             f"({result['device']} time; kernels may overlap, so shares of the step can add past 100%)", "",
             "| where | ms | share of step time |", "|---|---|---|"]
    rows = dict(result["categories_ms"])
    if "gpu_idle_ms" in result:
        rows["gpu idle"] = result["gpu_idle_ms"]
    for name, ms in rows.items():
        lines.append(f"| {name} | {ms} | {100 * ms / wall:.1f}% |")
    return "\n".join(lines) + "\n"


def install_profiler(out: Path, warmup: int, steps: int, cpu_trace: bool = False) -> None:
    """Every Trainer made from now on records steps warmup+1 .. warmup+steps into out/trace.json (and their wall
    time, between two synchronizations, into out/window.json)."""
    import time

    import torch
    import transformers

    cuda = torch.cuda.is_available()

    class ProfileSteps(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.profiler = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and self.profiler is None:
                activities = [torch.profiler.ProfilerActivity.CUDA] if cuda else []
                if cpu_trace or not cuda:
                    activities.append(torch.profiler.ProfilerActivity.CPU)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()
                if cuda:
                    torch.cuda.synchronize()
                self.started = time.perf_counter()
            if self.profiler is not None:
                self.step = torch.profiler.record_function(f"ProfilerStep#{state.global_step + 1}")
                self.step.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is None:
                return
            self.step.__exit__(None, None, None)
            if state.global_step >= warmup + steps:
                if cuda:
                    torch.cuda.synchronize()
                window = {"wall_ms": round(1000 * (time.perf_counter() - self.started), 2), "steps": steps}
                (out / "window.json").write_text(json.dumps(window))
                self.profiler.__exit__(None, None, None)
                self.profiler.export_chrome_trace(str(out / "trace.json"))
                self.profiler = None
                control.should_training_stop = True

    original = transformers.Trainer.__init__

    def init_with_profiler(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(ProfileSteps())

    transformers.Trainer.__init__ = init_with_profiler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--steps", type=int, default=4, help="steps profiled")
    p.add_argument("--warmup", type=int, default=3, help="steps run before profiling (compilation, allocator)")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--cpu-trace", action="store_true", help="on a GPU, trace CPU operators too (slows the host)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as the kit does)
    install_profiler(out, args.warmup, args.steps, args.cpu_trace)
    from medqlora.cli import main as kit

    kit_args = ["--mode", "train", "--output-dir", str(out / "runs"), "--set", f"backend={args.backend}",
                "--set", f"training.max_steps={args.warmup + args.steps + 1}", "--set", "training.save_steps=0"]
    if args.config:
        kit_args += ["--config", args.config]
    for item in args.overrides:
        kit_args += ["--set", item]
    code = kit(kit_args)
    if not (out / "trace.json").is_file():
        print(f"no trace written (the kit exited {code})", file=sys.stderr)
        return 1
    window = json.loads((out / "window.json").read_text()) if (out / "window.json").is_file() else None
    result = breakdown(json.loads((out / "trace.json").read_text()), window)
    (out / "breakdown.json").write_text(json.dumps(result, indent=2))
    (out / "breakdown.md").write_text(markdown(result, f"{args.backend}: {' '.join(args.overrides)}"))
    print((out / "breakdown.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
