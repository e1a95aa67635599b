"""The kit's training step against a plain PyTorch loop on the same batches: what the kit's trainer costs per step.

In one process, the kit runs exactly as `medical_qlora_finetuning.py --mode train` would (its config, data, model,
trainer with its callbacks, sampler and collator) for --warmup + --steps optimizer steps. A wrapped data collator
records each micro-batch the trainer trains, and the measured steps are timed between two synchronizations. Then
the same model and the trainer's own optimizer train the same batches again in a plain loop: each batch moved to
the device, forward with labels, loss / accumulation steps, backward, gradient clipping where
training.max_grad_norm asks for it (and the fp16 loss scaler where the trainer has one), optimizer.step and
zero_grad; the same warm-up steps first, then the measured steps between two synchronizations. The two windows see
the same tokens (checked: the trainer's count of tokens seen against the recorded batches').

    # CPU, the tiny random model of the tests (a few minutes on 2 cores):
    python -m medqlora.random_model --shape tiny --out /tmp/tiny-llama
    python bench/plain_loop.py --out /tmp/plain-loop --backend hf --steps 4 --warmup 2 \\
        --set model.name=/tmp/tiny-llama --set model.max_seq_length=256 --set data.datasets.0.max_samples=64 \\
        --set training.micro_batch_size=2 --set training.gradient_accumulation_steps=2
    # GPU, Unsloth, the 8B shape with packed 4,096-token rows (the profile in docs/benchmarks.md):
    python -m medqlora.random_model --shape llama-3.1-8b --out /tmp/llama31-8b-random --device cuda
    python bench/plain_loop.py --out bench/results/plain-loop-unsloth --backend unsloth --steps 10 --warmup 3 \\
        --set model.name=/tmp/llama31-8b-random --set training.packing=true --set training.auto_fit=true \\
        --set model.max_seq_length=4096

Writes OUT/plain_loop.json and OUT/plain_loop.md: ms per optimizer step of both loops, their ratio (kit / plain),
tokens per second (padding excluded) and the settings that shape a step (micro-batch, accumulation, logging steps).

With packed rows (training.packing: true, one flattened sequence per micro-batch), `--shapes` times the plain loop
again on the same tokens laid out otherwise, to separate what a packed step costs:
    fixed   each micro-batch padded at its end to one length for the whole run (a pad segment of its own, its
            labels ignored): is it the changing sequence length from batch to batch?
    dense   the micro-batch's tokens cut into rows of model.max_seq_length without position ids: one sequence a
            row, no per-example attention: what do the examples' boundaries cost?
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Recording:
    """What the kit's trainer trained: every collated micro-batch in order, the micro-batches before each measured
    optimizer step began and after it ended, and the kit's measured window."""

    batches: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0  # micro-batches trained so far
    step_ends: list[int] = field(default_factory=list)  # micro-batches trained at the end of each step
    window_start: int | None = None
    wall_s: float | None = None
    tokens: int | None = None
    trainer: Any = None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def install_recorder(rec: Recording, warmup: int, steps: int) -> None:
    """Every Trainer made from now on records its collated batches into ``rec`` and times steps warmup+1 ..
    warmup+steps (its tokens seen read at both ends, where the synchronization is anyway)."""
    import transformers

    class MeasureSteps(transformers.TrainerCallback):
        started = 0.0
        tokens_at_start = 0

        def on_substep_end(self, args, state, control, **kwargs):
            rec.trained += 1

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                _sync()
                self.tokens_at_start = rec.trainer.tokens_seen()
                rec.window_start = rec.trained
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            rec.trained += 1
            rec.step_ends.append(rec.trained)
            if state.global_step == warmup + steps:
                _sync()
                rec.wall_s = time.perf_counter() - self.started
                rec.tokens = rec.trainer.tokens_seen() - self.tokens_at_start
                control.should_training_stop = True

    original = transformers.Trainer.__init__

    def init_recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        collate = self.data_collator

        def recording_collator(features):
            batch = collate(features)
            rec.batches.append(dict(batch))  # the trainer adds keys to the batch it trains
            return batch

        self.data_collator = recording_collator
        rec.trainer = self
        self.add_callback(MeasureSteps())

    transformers.Trainer.__init__ = init_recording


def tokens_in(batch: dict[str, Any], pad_token_id: int | None) -> int:
    """Input tokens without padding, counted as the kit's trainer counts them."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if pad_token_id is not None:
        return int((batch["input_ids"] != pad_token_id).sum())
    return batch["input_ids"].numel()


def steps_of(rec: Recording, warmup: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """The recorded micro-batches grouped by optimizer step: the warm-up steps and the measured ones."""
    bounds = [0, *rec.step_ends]
    grouped = [rec.batches[a:b] for a, b in itertools.pairwise(bounds)]
    return grouped[:warmup], grouped[warmup:]


def plain_loop(trainer: Any, warm: list[list[dict]], measured: list[list[dict]]) -> float:
    """The batches through a plain training loop on the trainer's model and optimizer; seconds for ``measured``."""
    import torch

    model, device = trainer.model_wrapped, trainer.args.device  # as prepared by accelerate (mixed precision)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # the optimizer accelerate wraps
    scaler = getattr(trainer.accelerator, "scaler", None)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = trainer.args.max_grad_norm
    model.train()

    def step(batches: list[dict]) -> None:
        for batch in batches:
            inputs = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = model(**inputs, use_cache=False).loss / len(batches)
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if max_norm and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if torch.cuda.is_available():  # as the trainer's loader pins them, so that copies need not wait
        warm, measured = _pinned(warm), _pinned(measured)
    for batches in warm:
        step(batches)
    _sync()
    started = time.perf_counter()
    for batches in measured:
        step(batches)
    _sync()
    return time.perf_counter() - started


def _pinned(steps: list[list[dict]]) -> list[list[dict]]:
    import torch

    return [[{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()} for b in step] for step in steps]


def packed_lengths(steps: list[list[dict]]) -> list[int]:
    return [int(b["input_ids"].shape[1]) for batches in steps for b in batches]


def fixed_length(steps: list[list[dict]], length: int) -> list[list[dict]]:
    """Every flattened micro-batch padded at its end to ``length`` tokens: the padding is one more packed segment
    (positions from 0, labels ignored), so the examples before it see the same attention as before."""
    import torch

    def pad(b: dict) -> dict:
        extra = length - b["input_ids"].shape[1]
        if extra <= 0:
            return b
        fill = {"input_ids": torch.zeros(1, extra, dtype=b["input_ids"].dtype),
                "labels": torch.full((1, extra), -100, dtype=b["labels"].dtype),
                "position_ids": torch.arange(extra, dtype=b["position_ids"].dtype)[None]}
        return {k: torch.cat([v, fill[k]], dim=1) if k in fill else v for k, v in b.items()}

    return [[pad(b) for b in batches] for batches in steps]


def dense_rows(steps: list[list[dict]], row: int, rows_per_batch: int) -> list[list[dict]]:
    """Each step's tokens cut into full rows of ``row`` tokens, ``rows_per_batch`` rows a micro-batch, with no
    position ids (one attention span a row, as dense unpacked rows have); the tail that fills no micro-batch is
    left out (tokens_in counts what remains)."""
    import torch

    def cut(batches: list[dict]) -> list[dict]:
        ids = torch.cat([b["input_ids"][0] for b in batches])
        labels = torch.cat([b["labels"][0] for b in batches])
        size = row * rows_per_batch
        return [{"input_ids": ids[i:i + size].view(rows_per_batch, row),
                 "labels": labels[i:i + size].view(rows_per_batch, row)} for i in range(0, len(ids) - size + 1, size)]

    return [cut(batches) for batches in steps]


def shape_variants(trainer: Any, warm: list[list[dict]], measured: list[list[dict]], names: list[str],
                   tokens: int) -> dict[str, Any]:
    """The plain loop on the measured tokens laid out as ``names`` say (see the module's docstring)."""
    lengths = packed_lengths(warm + measured)
    if not all("position_ids" in b and b["input_ids"].shape[0] == 1 for s in warm + measured for b in s):
        raise SystemExit("--shapes needs packed rows (training.packing: true): one flattened sequence a micro-batch")
    row, per_batch = trainer.args.max_length, trainer.args.per_device_train_batch_size
    layouts = {"fixed": lambda s: fixed_length(s, max(lengths)), "dense": lambda s: dense_rows(s, row, per_batch)}
    out: dict[str, Any] = {"packed_lengths": {"min": min(lengths), "max": max(lengths),
                                              "distinct": len(set(lengths))}}
    for name in names:
        laid_out = layouts[name](measured)
        seconds = plain_loop(trainer, layouts[name](warm), laid_out)
        held = tokens if name == "fixed" else sum(b["input_ids"].numel() for batches in laid_out for b in batches)
        out[name] = {"ms_per_step": round(1000 * seconds / len(measured), 2),
                     "tokens_per_second": round(held / seconds, 1), "tokens": held}
    return out


def compare(rec: Recording, warmup: int, backend: str, shapes: list[str]) -> dict[str, Any]:
    trainer = rec.trainer
    warm, measured = steps_of(rec, warmup)
    pad = getattr(trainer.processing_class, "pad_token_id", None)
    tokens = sum(tokens_in(b, pad) for batches in measured for b in batches)
    if tokens != rec.tokens:
        raise SystemExit(f"the plain loop's batches hold {tokens} tokens, the kit's measured steps {rec.tokens}")
    plain_s = plain_loop(trainer, warm, measured)
    steps, args = len(measured), trainer.args
    kit_ms, plain_ms = 1000 * rec.wall_s / steps, 1000 * plain_s / steps
    variants = {"shapes": shape_variants(trainer, warm, measured, shapes, tokens)} if shapes else {}
    return variants | {
        "backend": backend, "device": str(args.device), "steps": steps, "warmup_steps": warmup,
        "micro_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "logging_steps": args.logging_steps,
        "micro_batches": sum(len(b) for b in measured), "tokens": tokens,
        "kit_ms_per_step": round(kit_ms, 2), "plain_ms_per_step": round(plain_ms, 2),
        "kit_over_plain": round(kit_ms / plain_ms, 4),
        "kit_tokens_per_second": round(tokens / rec.wall_s, 1), "plain_tokens_per_second": round(tokens / plain_s, 1),
    }


def markdown(result: dict[str, Any], title: str) -> str:
    r = result
    return "\n".join([
        f"### {title}", "",
        (f"{r['steps']} measured optimizer steps after {r['warmup_steps']} warm-up steps on {r['device']}: micro-batch "
         f"{r['micro_batch_size']} x {r['gradient_accumulation_steps']} accumulation, {r['tokens']} tokens (padding "
         f"excluded) in {r['micro_batches']} micro-batches, logging every {r['logging_steps']} steps"), "",
        "| loop | ms per step | tokens/s |", "|---|---|---|",
        f"| kit (trainer, callbacks, sampler, collator) | {r['kit_ms_per_step']} | {r['kit_tokens_per_second']} |",
        f"| plain (same batches, model and optimizer) | {r['plain_ms_per_step']} | {r['plain_tokens_per_second']} |",
        *[f"| plain, {name} (same tokens, see --shapes) | {r['shapes'][name]['ms_per_step']} | "
          f"{r['shapes'][name]['tokens_per_second']} |" for name in r.get("shapes", {}) if name != "packed_lengths"],
        "", f"kit / plain: **{r['kit_over_plain']}**", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps measured")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps before measuring (compilation, allocator)")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--shapes", default="", help="comma-separated: fixed, dense (packed rows only; see above)")
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    if set(shapes) - {"fixed", "dense"}:
        p.error(f"--shapes takes fixed and dense, not {args.shapes}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers, as the kit does)
    rec = Recording()
    install_recorder(rec, args.warmup, args.steps)
    from medqlora.cli import main as kit

    kit_args = ["--mode", "train", "--output-dir", str(out / "runs"), "--set", f"backend={args.backend}",
                "--set", f"training.max_steps={args.warmup + args.steps}", "--set", "training.save_steps=0"]
    if args.config:
        kit_args += ["--config", args.config]
    for item in args.overrides:
        kit_args += ["--set", item]
    code = kit(kit_args)
    if code != 0 or rec.wall_s is None:
        print(f"the kit's measured steps did not all run (it exited {code})", file=sys.stderr)
        return 1
    result = compare(rec, args.warmup, args.backend, shapes)
    (out / "plain_loop.json").write_text(json.dumps(result, indent=2))
    (out / "plain_loop.md").write_text(markdown(result, f"{args.backend}: {' '.join(args.overrides)}"))
    print((out / "plain_loop.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
