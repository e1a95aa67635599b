"""Experiment tracking: TensorBoard in the run folder by default, W&B and MLflow when asked for.

Credentials come from the environment only (WANDB_API_KEY, MLFLOW_TRACKING_*); the kit never
writes them anywhere, and masks them in everything it writes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from .config import KitConfig
from .distributed import is_main
from .errors import ConfigError
from .messages import log
from .runs import Files, RunDir
from .secrets import printable

def wandb_falls_back_offline(cfg: KitConfig) -> bool:
    """wandb without a key and without a chosen WANDB_MODE, where the config allows W&B's offline mode."""
    return ("wandb" in cfg.training.report_to and cfg.training.wandb_offline_without_key
            and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"))


WANDB_OFFLINE_NOTE = ("W&B: no WANDB_API_KEY in the environment, so the run logs in W&B's offline mode "
                      "(WANDB_MODE=offline, training.wandb_offline_without_key) into the run folder's wandb/; "
                      "upload it later with: wandb sync <run folder>/wandb/offline-run-*")


def wandb_switched_off(cfg: KitConfig) -> bool:
    """wandb asked for, while the environment switches W&B off (WANDB_MODE=disabled, left over in a notebook)."""
    return "wandb" in cfg.training.report_to and os.environ.get("WANDB_MODE", "").strip().lower() == "disabled"


WANDB_OFF_NOTE = ("warning: W&B: training.report_to lists wandb, but WANDB_MODE=disabled in the environment switches "
                  "it off: this run records nothing in W&B. To track it, unset WANDB_MODE (or set it to online or "
                  "offline) and run again; to say so in the config, leave wandb out of training.report_to.")


def check_trackers(cfg: KitConfig) -> list[str]:
    """Before the model loads: each tracker is installed and has its credentials in the environment.
    Returns what the run will do differently, to be said (W&B's offline mode without a key)."""
    for name in cfg.training.report_to:
        if importlib.util.find_spec(name) is None:  # each tracker's package has its name
            raise ConfigError(f"training.report_to: {name} is not installed: pip install {name} "
                              f"(or remove it from training.report_to).")
    if wandb_falls_back_offline(cfg):
        return [WANDB_OFFLINE_NOTE]
    if wandb_switched_off(cfg):
        return [WANDB_OFF_NOTE]
    if "wandb" in cfg.training.report_to:
        mode = os.environ.get("WANDB_MODE", "").lower()
        if not os.environ.get("WANDB_API_KEY") and mode not in ("offline", "disabled"):
            raise ConfigError(
                "training.report_to: wandb needs WANDB_API_KEY in the environment (export WANDB_API_KEY=...; in "
                "Colab, a secret), or WANDB_MODE=offline to log locally (or set training.wandb_offline_without_key: "
                "true). The kit never reads keys from the config."
            )
    return []


def tracker_folders(cfg: KitConfig) -> tuple[str, ...]:
    """The folders training.report_to's trackers write into the run folder, as tracking_env places them: W&B's
    and MLflow's only where the environment does not send them elsewhere (WANDB_DIR, MLFLOW_TRACKING_URI)."""
    report_to = cfg.training.report_to
    folders = [f"{Files.TENSORBOARD}/"] if "tensorboard" in report_to else []
    if "wandb" in report_to and "WANDB_DIR" not in os.environ and not wandb_switched_off(cfg):
        folders.append(f"{Files.WANDB}/")
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in os.environ:
        folders.append(f"{Files.MLFLOW}/")
    return tuple(folders)


# what to change when a tracker fails as training begins (its server unreachable, the key refused)
TRACKER_ADVICE = {
    "wandb": "Without the network, log locally with WANDB_MODE=offline (upload later with: wandb sync <run "
             "folder>/wandb/offline-run-*), check WANDB_API_KEY and WANDB_BASE_URL, or leave wandb out of "
             "training.report_to.",
    "mlflow": "Check MLFLOW_TRACKING_URI (unset, the kit logs into the run folder's mlruns/), or leave mlflow out of "
              "training.report_to.",
}


@contextlib.contextmanager
def tracking_env(cfg: KitConfig, run: RunDir) -> Iterator[None]:
    """While training: W&B and MLflow keep their local files in the run folder (unless the user chose a place),
    and their runs are closed at the end, so a notebook's next run starts a new one."""
    defaults: dict[str, str] = {}
    if "wandb" in cfg.training.report_to:
        defaults |= {"WANDB_DIR": str(run.path), "WANDB_PROJECT": "medqlora"}
        if wandb_falls_back_offline(cfg):
            defaults["WANDB_MODE"] = "offline"
    if "mlflow" in cfg.training.report_to:
        defaults |= {"MLFLOW_TRACKING_URI": (run.path / Files.MLFLOW).as_uri(), "MLFLOW_EXPERIMENT_NAME": "medqlora"}
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    except Exception as err:
        tracker = type(err).__module__.split(".")[0]
        if tracker not in TRACKER_ADVICE or tracker not in cfg.training.report_to:
            raise
        raise ConfigError(f"training.report_to: {tracker} failed as training began ({type(err).__name__}: "
                          f"{printable(str(err).splitlines()[0] if str(err) else '', 240)}). "
                          f"{TRACKER_ADVICE[tracker]}") from None
    finally:
        if "wandb" in cfg.training.report_to:
            import wandb

            wandb.finish()
        if "mlflow" in cfg.training.report_to:
            import mlflow

            mlflow.end_run()
        for key in added:
            os.environ.pop(key, None)


def add_tracking(trainer: Any, cfg: KitConfig, run: RunDir) -> Any:
    """TensorBoard events in run/tensorboard; tokens/s and GPU memory added to every logged step.
    Returns the speed callback (its first-step time and steady tokens/s go into metrics.json)."""
    from transformers.integrations import TensorBoardCallback

    handler = trainer.callback_handler
    if "tensorboard" in cfg.training.report_to and is_main():  # the writer creates its file at once
        from torch.utils.tensorboard import SummaryWriter

        handler.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(run.path / Files.TENSORBOARD))))
    # first, so that every tracker (and the progress bar) sees the figures it adds
    speed = speed_and_memory_callback(getattr(trainer, "tokens_seen", None))
    handler.callbacks.insert(0, speed)
    return speed


WARMUP_STEPS = 2  # compilation and allocator warm-up happen in the first steps


def speed_and_memory_callback(tokens_seen: Callable[[], int] | None = None) -> Any:
    """A callback adding tokens/s (padding excluded) and GPU memory to every training log, and keeping the
    time of the first step and the steady tokens/s after the warm-up steps (for metrics.json and the bench).
    tokens_seen: the trainer's count brought up to date, where it keeps it on the device between logging steps
    (read here once, at the end of the warm-up)."""
    import torch
    from transformers import TrainerCallback  # only once training starts: after Unsloth is imported

    class SpeedAndMemory(TrainerCallback):
        started, tokens_at_start = time.perf_counter(), 0
        first_step_unix: float | None = None
        warm: tuple[float, int] | None = None
        steady_tokens_per_second: float | None = None
        steps_here = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps_here += 1  # in this process: a resumed run starts at a later global step
            if self.first_step_unix is None:
                self.first_step_unix = time.time()
            if self.steps_here == WARMUP_STEPS:
                tokens = tokens_seen() if tokens_seen else state.num_input_tokens_seen
                self.warm = (time.perf_counter(), tokens)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.warm is not None and self.steps_here > WARMUP_STEPS:
                elapsed = max(time.perf_counter() - self.warm[0], 1e-9)
                self.steady_tokens_per_second = round((state.num_input_tokens_seen - self.warm[1]) / elapsed, 1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not logs:
                return
            if "loss" in logs:
                elapsed = max(time.perf_counter() - self.started, 1e-9)
                logs["tokens_per_second"] = round((state.num_input_tokens_seen - self.tokens_at_start) / elapsed, 1)
                if torch.cuda.is_available():
                    logs["gpu_allocated_gib"] = round(torch.cuda.memory_allocated() / 1024**3, 3)
                    logs["gpu_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 1024**3, 3)
            if is_main():  # the Trainer prints its logs on screen only: run.log keeps them too
                log.info("step %d: %s", state.global_step, ", ".join(f"{k} {_shown(v)}" for k, v in logs.items()))

    return SpeedAndMemory()


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
