"""A trainer's run, guarded: Ctrl-C, SIGTERM and SIGHUP save the adapter trained so far; a non-finite loss or
gradient norm stops training; out of memory and a damaged resume checkpoint are explained with what to change;
and the adapter is saved in one rename (safetensors, with its tokenizer). Used by SFT (train.py) and the methods
after it (rl.py)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from .adapter_weights import record_saved
from .checkpoint_files import checkpoint_folders, trainer_state
from .config import KitConfig
from .distributed import is_main, sharding
from .errors import MedQLoRAError, TrainingInterrupted
from .messages import log
from .run_commands import continue_advice, resume_command
from .run_files import Files
from .runs import RunDir
from .secrets import printable
from .sharded import write_gathered_adapter
from .write_errors import is_write_error, library_os_errors, write_advice


def run_trainer(trainer: Any, cfg: KitConfig, model: Any, tokenizer: Any, run: RunDir, resume_from: Path | None,
                speed: Any) -> Any:
    """trainer.train(), with Ctrl-C/SIGTERM, out-of-memory and a damaged resume checkpoint explained."""
    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        _remove_incomplete_checkpoints(run)  # a signal in the middle of writing one
        raise _interrupted(model, tokenizer, run, trainer.state.global_step) from None
    except Exception as err:
        _remove_incomplete_checkpoints(run)
        memory = _out_of_memory(err)
        if memory:
            raise _oom_error(cfg, model, tokenizer, run, trainer.state.global_step, memory) from None
        if is_write_error(err):
            raise _write_failed(err, run, trainer.state.global_step) from None
        if resume_from is not None and speed.steps_here == 0 and _is_damaged_file(err):
            raise MedQLoRAError(
                f"{resume_from} is damaged ({type(err).__name__}: {printable(str(err), 160)}): its state cannot be "
                f"loaded. Move it out of {run.path / 'checkpoints'} to resume from the checkpoint before it, or "
                "train again without --resume.") from None
        raise


def _write_failed(err: OSError, run: RunDir, step: int) -> MedQLoRAError:
    """A write into the run folder failed during training (a checkpoint, its tokenizer files, the TensorBoard log)."""
    kept = [p for p in checkpoint_folders(run.path / Files.CHECKPOINTS) if (p / "trainer_state.json").is_file()]
    again = (f"then continue from its last checkpoint: {resume_command(run.path)}" if kept
             else "then train again (the run had no checkpoint yet)")
    return MedQLoRAError(f"Training stopped at step {step}: cannot write in the run folder {printable(run.path)} "
                         f"({err.strerror}); a checkpoint being written was removed. {write_advice(err)}, {again}.")


def _interrupted(model: Any, tokenizer: Any, run: RunDir, step: int) -> TrainingInterrupted:
    """Ctrl-C, SIGTERM or SIGHUP during training: save the adapter trained so far (when it is finite)."""
    from .signals import name, received

    how = f"Interrupted ({name(received())}) at step {step}"
    if sharding():  # gathering the shards needs every process, and they are all being interrupted
        return TrainingInterrupted(
            f"{how}. A sharded run cannot gather its adapter when interrupted: continue it from its last "
            f"checkpoint (training.save_steps) with {resume_command(run.path)}.")
    if step == 0:
        return TrainingInterrupted(f"{how}: nothing was trained yet, so no adapter was saved.")
    if not adapter_is_finite(model):
        return TrainingInterrupted(f"{how}: the adapter's weights are no longer finite (NaN or infinite), so it was "
                                   "not saved. Lower training.learning_rate and train again.")
    if is_main():
        save_adapter(model, tokenizer, run)
    return TrainingInterrupted(f"{how}: the adapter trained so far is saved in {run.adapter}. "
                               f"{continue_advice(run.path)}.")


class NonFiniteTraining(MedQLoRAError):
    """The loss or the gradient norm became NaN or infinite: the weights are lost from that step on."""


def stop_on_non_finite(cfg: KitConfig) -> Any:
    """A callback that stops training at the first logged non-finite loss or gradient norm (the Trainer logs
    both every training.logging_steps; no extra host sync), with the step and what to change."""
    from transformers import TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise NonFiniteTraining(non_finite_message(cfg, state.global_step, key.replace("_", " "), value))

    return StopOnNonFinite()


def non_finite_message(cfg: KitConfig, step: int, what: str, value: float) -> str:
    """Why training stopped at ``step`` and what to change. The loss and gradient norm logged at step 1 were
    computed with the weights as loaded, before the optimizer's first update: the learning rate cannot be the
    cause there, the base model (its weights, its dtype) or the rows can."""
    t = cfg.training
    said = f"Training stopped at step {step}: the {what} is {value}."
    if step <= 1:
        return (f"{said} It was computed with the weights as loaded, before the learning rate could act, so the "
                f"base model is the likely cause: {printable(cfg.model.name)} may hold NaN or infinite weights "
                "(4-bit weights are checked only in part when they load: a damaged download or conversion), or "
                "overflow in float16 (on a GPU with bfloat16, model.dtype: bf16); else look for empty or garbled "
                "training rows. No adapter was saved.")
    return (f"{said} The weights are no longer finite, so no adapter was saved. Train again with a lower learning "
            f"rate (--set training.learning_rate={t.learning_rate / 10:g}; now {t.learning_rate:g}), gradient "
            f"clipping at 1.0 or less (training.max_grad_norm, now {t.max_grad_norm:g}), and on a GPU with "
            "bfloat16, model.dtype: bf16 (fp16 overflows more easily). If it happens at the first steps, look for "
            "empty or garbled training rows.")


def adapter_is_finite(model: Any, weights: dict[str, Any] | None = None) -> bool:
    """True when every trainable weight (or every gathered weight) is a finite number."""
    import torch

    tensors = weights.values() if weights is not None else (p for p in model.parameters() if p.requires_grad)
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _remove_incomplete_checkpoints(run: RunDir) -> None:
    """A checkpoint the Trainer was writing when it failed (disk full...) or was interrupted (a signal) holds no
    whole trainer_state.json, which it writes last: remove it, so that neither --resume nor a user takes it for a
    checkpoint."""
    if not is_main():
        return
    for folder in checkpoint_folders(run.path / Files.CHECKPOINTS):
        if not folder.is_symlink() and trainer_state(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)


def save_adapter(model: Any, tokenizer: Any, run: RunDir, weights: dict[str, Any] | None = None) -> None:
    """Write the adapter (safetensors) and tokenizer next to it, then move it in place in one rename.
    weights: the gathered state of a sharded model (the adapter's own parameters hold only a shard)."""
    if not adapter_is_finite(model, weights):
        raise NonFiniteTraining("The trained adapter holds NaN or infinite weights, so it was not saved. Train again "
                                "with a lower training.learning_rate (and training.max_grad_norm at 1.0 or less).")
    partial = run.path / Files.ADAPTER_PARTIAL
    try:
        partial = run.fresh_dir(Files.ADAPTER_PARTIAL)  # a leftover of a crash (or a link there) is removed first
        if run.adapter.exists() or run.adapter.is_symlink():  # saved at Ctrl-C, before this resumed run: keep it aside
            run.adapter.rename(run.inside(run.unique(Files.ADAPTER_INTERRUPTED)))
        with library_os_errors():  # safetensors and the tokenizers library report a failed write their own way
            if weights is None:
                model.save_pretrained(str(partial), safe_serialization=True)
            else:
                write_gathered_adapter(model, weights, partial)
            tokenizer.save_pretrained(str(partial))
        _usual_permissions(partial)
        record_saved(run, partial)  # manifest.json: the weights this run wrote, to tell them from a copy over them
        partial.rename(run.adapter)
    except OSError as err:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)  # an incomplete adapter is worth nothing
        raise MedQLoRAError(f"Cannot save the adapter in {run.path}: {err.strerror}. {write_advice(err)} and train "
                            "again; the incomplete files were removed.") from None
    log.info("adapter saved to %s", run.adapter)


def _usual_permissions(folder: Path) -> None:
    """Files as the user's umask makes them (safetensors writes its file owner-only, unlike every other file)."""
    mask = os.umask(0)
    os.umask(mask)
    for file in folder.iterdir():
        if file.is_file() and not file.is_symlink():
            file.chmod(0o666 & ~mask)


def _is_damaged_file(err: BaseException) -> bool:
    """What loading a damaged checkpoint raises: bad JSON (trainer_state.json), a pickle torch's safe loader
    refuses or cannot read (optimizer.pt, scheduler.pt, rng_state.pth), a truncated file or safetensors header."""
    import pickle

    text = str(err)
    return isinstance(err, (ValueError, pickle.UnpicklingError, EOFError, KeyError)) or any(
        marker in text for marker in ("Weights only load failed", "PytorchStreamReader", "Error while deserializing",
                                      "invalid load key", "HeaderTooLarge", "MetadataIncompleteBuffer"))


def _out_of_memory(err: BaseException) -> str | None:
    """Which memory a training step ran out of: "CUDA" (the GPU's), "CPU" (the machine's RAM: torch's CPU allocator
    or Python's MemoryError, under a memory limit or on a small machine), or None."""
    import torch

    if isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in str(err):
        return "CUDA"
    if isinstance(err, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(err):
        return "CPU"
    return None


def _oom_error(cfg: KitConfig, model: Any, tokenizer: Any, run: RunDir, step: int,
               memory: str = "CUDA") -> MedQLoRAError:
    import torch

    figures = ""
    if memory == "CUDA" and torch.cuda.is_available():
        peak = torch.cuda.max_memory_reserved() / 1024**3
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        figures = f": peak {peak:.1f} of {total:.1f} GiB"
        torch.cuda.empty_cache()
    saved = ""
    if step > 0 and is_main() and not sharding():
        try:
            save_adapter(model, tokenizer, run)
            saved = f" The adapter after {step} steps is saved in {run.adapter}."
        except Exception:  # saving is best effort after an OOM
            saved = ""
    t = cfg.training
    what = ("CUDA out of memory" if memory == "CUDA" else
            "The machine ran out of memory (RAM, or the process's memory limit)")
    last = ("--set training.gradient_checkpointing=unsloth; --set model.load_in_4bit=true." if memory == "CUDA" else
            "--set training.gradient_checkpointing=true; or close other programs, or use a machine with more memory.")
    return MedQLoRAError(
        f"{what} at step {step}{figures}.{saved}\nTry one of: "
        f"--set training.micro_batch_size={max(1, t.micro_batch_size // 2)} "
        f"--set training.gradient_accumulation_steps={t.gradient_accumulation_steps * 2} (same effective batch); "
        f"--set model.max_seq_length={max(128, cfg.model.max_seq_length // 2)}; {last}"
    )
