"""Scaling: the same training with 1 process and with N (same effective batch), launched as users do.

    python bench/check_data_parallel.py --model /tmp/llama8b --gpus 2 [--set key=value ...]
    python bench/check_data_parallel.py --model /tmp/llama8b --gpus 2 --launcher fsdp --set backend=hf

--launcher torchrun: data parallel (a replica per GPU); fsdp / deepspeed: accelerate launch with
config/accelerate/fsdp_qlora.yaml / deepspeed_zero3.yaml (sharded; the 1-process run is the same
training unsharded). Prints, per run, the useful tokens/s after warm-up, the peak GPU memory of each
process, the final loss, and the largest difference between the two adapters; writes <launcher>.json
to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "backend": "unsloth", "model.max_seq_length": "2048", "training.packing": "true", "training.auto_fit": "false",
    "training.gradient_checkpointing": "false", "training.micro_batch_size": "4",
    "training.gradient_accumulation_steps": "4", "training.max_steps": "10", "training.save_steps": "0",
    "training.report_to": "[]",
}


CONFIGS = {"fsdp": "fsdp_qlora.yaml", "deepspeed": "deepspeed_zero3.yaml"}


def launcher(processes: int, args: argparse.Namespace) -> list[str]:
    if processes == 1:
        return [sys.executable]
    if args.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "config" / "accelerate" / CONFIGS[args.launcher]), "--num_processes", str(processes)]


def train(processes: int, args: argparse.Namespace) -> dict:
    name = f"{args.launcher}{processes}"
    values = {**DEFAULTS, "model.name": args.model, "output.run_name": name, **dict(s.split("=", 1) for s in args.set)}
    argv = ["--mode", "train", "--output-dir", str(args.out / "runs")]
    for key, value in values.items():
        argv += ["--set", f"{key}={value}"]
    runner = launcher(processes, args)
    began = time.time()
    with (args.out / f"{name}.log").open("w") as log:
        rc = subprocess.run(runner + [str(ROOT / "medical_qlora_finetuning.py")] + argv, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, check=False).returncode
    row = {"processes": processes, "rc": rc, "wall_s": round(time.time() - began, 1)}
    run = args.out / "runs" / name
    if rc == 0:
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
        memory = json.loads((run / "memory.json").read_text())["summary"]
        row.update(tokens_per_s=metrics.get("tokens_per_second_after_warmup"), tokens_seen=metrics["tokens_seen"],
                   steps=metrics["steps"], train_loss=metrics.get("train_loss"),
                   peak_reserved_gib_per_process=memory.get("peak_reserved_gib_per_process",
                                                             [memory.get("peak_reserved_gib")]),
                   reserved_after_load_gib_main_process=memory.get("reserved_after_load_gib"),
                   adapter=str(run / "adapter"))
    return row


def adapter_difference(a: str, b: str) -> dict:
    from safetensors.torch import load_file

    x, y = (load_file(f"{p}/adapter_model.safetensors") for p in (a, b))
    return {"max_abs_difference": max((x[k].float() - y[k].float()).abs().max().item() for k in x),
            "largest_weight": max(x[k].float().abs().max().item() for k in x)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--launcher", choices=["torchrun", *CONFIGS], default="torchrun")
    p.add_argument("--single-from", type=Path, help="reuse the 1-process row of an earlier result (same settings)")
    p.add_argument("--set", action="append", default=[], help="more config values, section.key=value")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "data_parallel")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    single = json.loads(args.single_from.read_text())["rows"][0] if args.single_from else train(1, args)
    rows = [single, train(args.gpus, args)]
    result = {"rows": rows}
    if all(r["rc"] == 0 for r in rows):
        result["scaling"] = round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
        result["adapters"] = adapter_difference(rows[0]["adapter"], rows[1]["adapter"])
    (args.out / f"{args.launcher}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
