"""Kill a training run with SIGKILL after a checkpoint, --resume it, and compare its adapter with an
uninterrupted run of the same config (any backend; tests/test_resume.py does the same on the CPU).

    python bench/check_resume.py --model /tmp/llama32-1b-random --backend unsloth --out /tmp/resume-check
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200, help="enough that the run is still going when it is killed")
    p.add_argument("--save-steps", type=int, default=20)
    args = p.parse_args()
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def argv(name: str) -> list[str]:
        sets = {"model.name": args.model, "backend": args.backend, "training.max_steps": args.steps,
                "training.save_steps": args.save_steps, "data.datasets.0.max_samples": 64,
                "output.run_name": name, "output.dir": str(args.out)}
        return ["--mode", "train"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]

    cli = [sys.executable, str(ROOT / "medical_qlora_finetuning.py")]
    subprocess.run(cli + argv("whole"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cli + argv("cut"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = args.out / "cut" / "checkpoints"
    mark = checkpoints / f"checkpoint-{2 * args.save_steps}" / "trainer_state.json"
    while not mark.exists() and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit(f"the run ended (exit {proc.returncode}) before it could be killed: raise --steps")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.rsplit("-", 1)[1]) for p in checkpoints.glob("checkpoint-*"))
    began = time.perf_counter()
    subprocess.run(cli + ["--mode", "train", "--resume", str(args.out / "cut")], env=env, check=True,
                   capture_output=True)
    resume_s = time.perf_counter() - began

    from safetensors.torch import load_file

    whole = load_file(args.out / "whole" / "adapter" / "adapter_model.safetensors")
    cut = load_file(args.out / "cut" / "adapter" / "adapter_model.safetensors")
    metrics = {run: json.loads((args.out / run / "metrics.json").read_text()) for run in ("whole", "cut")}
    loss = {run: [e["loss"] for e in m["log_history"] if "loss" in e][-1] for run, m in metrics.items()}
    print(json.dumps({
        "backend": args.backend, "newest_checkpoint_at_kill": killed_at,
        "resumed_from_step": metrics["cut"]["metrics"]["resumed_from_step"],
        "final_step": metrics["cut"]["metrics"]["steps"], "resume_wall_s": round(resume_s, 1),
        "max_abs_adapter_difference": max((whole[k].float() - cut[k].float()).abs().max().item() for k in whole),
        "max_abs_adapter_weight": max(whole[k].float().abs().max().item() for k in whole),
        "final_loss_uninterrupted": loss["whole"], "final_loss_resumed": loss["cut"],
    }))


if __name__ == "__main__":
    main()
