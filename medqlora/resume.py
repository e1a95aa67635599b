"""--resume: which run folder and checkpoint a crashed or interrupted run continues from, and the checks that
it would continue the same training (its config.yaml and local data files unchanged since it started).

    python medical_qlora_finetuning.py --mode train --resume latest
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import adapters, data, model_files, run_files
from .checkpoint_files import check_checkpoint, checkpoint_folders, step_of
from .config import KitConfig, load_config
from .errors import ConfigError, ModelError
from .run_commands import command_on_run, on_run
from .run_names import refuse_secret_in_path
from .runs import Files, RunDir
from .secrets import printable


def resumable_run(resume: str, output_dir: str | None, cfg: KitConfig) -> tuple[RunDir, KitConfig, Path]:
    """The run folder to continue (a path, or 'latest'), its own config, and its newest checkpoint."""
    if resume == "latest":
        root = Path(output_dir or cfg.output.dir)
        from .adapter_runs import note_folder_of_the_word

        note_folder_of_the_word("latest", root, "--resume")
        candidates = [RunDir(p.parent) for p in root.glob(f"*/{Files.CHECKPOINTS}")] if root.is_dir() else []
        candidates = [r for r in candidates if latest_checkpoint(r) is not None]
        if not candidates:
            raise ModelError(f"--resume latest: no run under {root} has a checkpoint to continue from.")
        run = max(candidates, key=lambda r: latest_checkpoint(r).stat().st_mtime)
    else:
        run = RunDir(Path(resume))
    refuse_secret_in_path(run.path, "The run folder to resume")
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        status = _status(run)
        saved_adapter = (run.adapter / adapters.CONFIG_NAME).is_file()
        ended = "was interrupted" if status == "interrupted" else "crashed"
        stage = str(manifest_value(run, "stage") or "")
        if saved_adapter and status in ("interrupted", "failed") and "after training" in stage:
            mode, work = (("test", "the sample queries") if "sample queries" in stage else ("eval", "the evaluation"))
            why = (f", and needs none: its training is complete (its adapter is saved in {run.adapter}); the run "
                   f"stopped after it ({printable(stage.split(':', 1)[0], 120)}). Finish {work} with: "
                   f"{command_on_run(mode, '--adapter', run.path)}")
        elif saved_adapter and status == "interrupted":  # a signal saves the adapter trained so far
            why = (f"; it was interrupted before its first checkpoint (training.save_steps), with the adapter trained "
                   f"so far saved in {run.adapter}: train it again as a new run (another output.run_name: the "
                   f"kit never overwrites a run), or use that adapter as it is "
                   f"({on_run('--adapter', run.path)}, or training.init_adapter={run.path} to train on from it).")
        elif saved_adapter:
            why = " (it finished training: its adapter is saved)."
        else:
            why = (f"; it {ended} before its first checkpoint (training.save_steps), with nothing trained kept: "
                   f"train it again, as a new run (another output.run_name), or under the same name once the folder "
                   f"{printable(run.path)} is removed (the kit never overwrites a run).")
        raise ModelError(f"--resume {resume}: {run.path} has no checkpoint to continue from{why}")
    saved = run.path / Files.CONFIG
    if not saved.is_file():
        raise ModelError(f"--resume {resume}: {run.path} is not a run folder of this kit (no config.yaml).")
    given = cfg
    cfg = load_config(saved)
    _refuse_remote_code_not_given(run, cfg, given)
    check_checkpoint(checkpoint)
    _check_start_adapter(run, cfg, checkpoint)
    _check_resumable_config(run, cfg, checkpoint)
    _check_resumable_data(run, cfg)
    _check_resumable_model(run)
    return run, cfg, checkpoint


def _refuse_remote_code_not_given(run: RunDir, saved: KitConfig, given: KitConfig) -> None:
    """A run folder given by path whose config.yaml sets model.trust_remote_code: true would run its model folder's
    own Python code: only on the user's word, the run's config given as --config beside --resume."""
    if not saved.model.trust_remote_code or given.model.trust_remote_code:
        return
    config = printable(run.path / Files.CONFIG)
    raise ConfigError(f"--resume {printable(run.path)}: its config.yaml sets model.trust_remote_code: true, which runs "
                      f"the Python code of the model folder {printable(saved.model.name, 120)}. The kit does that only "
                      f"on your word: if you trust that code, give the run's config too: --resume "
                      f"{printable(run.path)} --config {config}")


def _check_start_adapter(run: RunDir, cfg: KitConfig, checkpoint: Path) -> None:
    """A run that started from training.init_adapter needs that adapter's folder again to resume: the model is built
    as the run began, with the start adapter's LoRA layers, before the checkpoint's weights are put over them."""
    start = cfg.training.init_adapter
    if not start or (Path(start) / adapters.CONFIG_NAME).is_file():
        return
    raise ModelError(
        f"--resume {printable(run.path)}: this run started from training.init_adapter {printable(start)} (its "
        "config.yaml), which holds no adapter any more (moved or deleted). Resuming builds the model as the run began, "
        "from that start adapter, and then puts the checkpoint's weights over it, so it reads that folder again. Put "
        f"the start adapter back at {printable(start)} (copy its run folder back) and resume; or train a new run "
        f"(without --resume) from the checkpoint: --set training.init_adapter={printable(checkpoint)}.")


# The config sections that shape the training a checkpoint continues (not output, generation, eval, export).
TRAINING_SECTIONS = ("backend", "model", "lora", "data", "training")


# What the manifest recorded when the run started training, kept by a resumed run until it records them again.
KEPT_ON_RESUME = ("trained_settings", "data", "model_source", model_files.MANIFEST_KEY)


def trained_settings(cfg: KitConfig) -> dict[str, Any]:
    """The settings a run trains with, flattened (training.max_steps: 4), as the manifest records them."""
    return flat_settings(cfg, TRAINING_SECTIONS)


def recorded_settings(run: RunDir, key: str = "trained_settings") -> dict[str, Any] | None:
    """The settings the run's manifest says its training started with (None: not recorded); key "data": the
    fingerprints of the data it trained on."""
    recorded = manifest_value(run, key)
    return recorded if isinstance(recorded, dict) else None


def manifest_value(run: RunDir, key: str) -> Any:
    """One field of the run's manifest.json (None: no manifest, not JSON, or no such field)."""
    return run_files.manifest_value(run.path, key)


def _status(run: RunDir) -> str | None:
    """The status the run's manifest records (training, interrupted, failed, trained), or None."""
    status = manifest_value(run, "status")
    return status if isinstance(status, str) else None


def _check_resumable_data(run: RunDir, cfg: KitConfig) -> None:
    """Every local data file the run trained on must still hold what it held (the manifest records its sha256):
    a checkpoint continues the data order of the rows it started with, not of another file."""
    recorded = recorded_settings(run, "data")
    for name, was in (recorded or {}).items():
        index = name.split(":", 1)[0]
        if not (isinstance(was, str) and was.startswith("sha256:") and index.isdigit()
                and int(index) < len(cfg.data.datasets)):
            continue
        spec = cfg.data.datasets[int(index)]
        try:
            now = data.fingerprint(spec)
        except OSError:
            now = None
        if now != was:
            how = "is gone" if now is None or data.resolve_local(spec.source) is None else "was changed"
            raise ModelError(
                f"--resume: the training data of data.datasets.{index} ({printable(spec.source, 160)}) {how} since "
                f"the run started training (its manifest records {was[:19]}...). A checkpoint continues the training "
                "of the rows it started with: restore that file, or train a new run on the new data (without "
                "--resume).")


def _check_resumable_model(run: RunDir) -> None:
    """The base model's weight files hold what they held when the run started training (its manifest records a
    fingerprint of each): a checkpoint's adapter continues on the weights it was trained on, not on another
    revision downloaded over them."""
    changed, source = model_files.changed_since_training(run.path)
    if changed:
        raise ModelError(
            f"--resume: the base model's weights changed since the run started training: "
            f"{printable(model_files.describe_change(changed, source), 300)} (changed, gone or added; its manifest "
            "records their size and sha256). A checkpoint continues the training of the weights it started on: "
            "restore those files, or train a new run on the new model (without --resume).")


def _check_resumable_config(run: RunDir, cfg: KitConfig, checkpoint: Path) -> None:
    """The run's config.yaml must still say what its training started with (the manifest records it), and its
    max_steps must lie beyond the checkpoint: an edited config.yaml would continue another training."""
    step = step_of(checkpoint) or 0
    shown = printable(run.path / Files.CONFIG)
    if 0 < cfg.training.max_steps < step:
        raise ModelError(f"--resume: {shown} says training.max_steps: {cfg.training.max_steps}, but its checkpoint "
                         f"{checkpoint.name} is already at step {step}. Restore the max_steps the run started with, or "
                         "train a new run (without --resume).")
    recorded = recorded_settings(run)
    if recorded is None:
        return  # a run of an earlier version: nothing recorded to compare with
    now = trained_settings(cfg)
    changed = [k for k in sorted(set(now) | set(recorded)) if now.get(k) != recorded.get(k)
               and not (k not in recorded and _is_schema_default(cfg, k, now[k]))]  # a newer kit's setting, unset
    if changed:
        leaves = [leaf for k in changed for leaf in differing_leaves(k, now.get(k), recorded.get(k))]
        listed = "; ".join(f"{k}: {printable(json.dumps(a), 60)} (the run started with "
                           f"{printable(json.dumps(b), 60)})" for k, a, b in leaves[:3])
        more = f" and {len(leaves) - 3} more" if len(leaves) > 3 else ""
        raise ModelError(f"--resume: {shown} was changed since the run started training: {listed}{more}. A checkpoint "
                         "continues the training it was saved from: restore those values, or train a new run with "
                         "the new ones (without --resume).")


# Settings a resumed run takes from the config given to it, not from its config.yaml: where runs go, and whether
# --mode full evaluates (recipe.full reads it before the run's own config).
GIVEN_ON_RESUME = ("output.", "eval.in_full_mode")


def refuse_other_config(given: KitConfig, run: RunDir, saved: KitConfig, config_flag: str | None = None) -> None:
    """run_mode(resume=RUN), or --resume RUN --config FILE (``config_flag``: FILE), with a config other than the
    run's own config.yaml: refused, naming the settings that differ, as the command line refuses --set beside
    --resume (a resumed run trains with its config.yaml alone). The same values (the run's own file, a copy of
    it) are taken."""
    now, was = flat_settings(data.with_anchored_sources(given)), flat_settings(saved)
    resolved = _resolved_at_start(given, saved)
    changed = [k for k in sorted(set(now) | set(was)) if now.get(k) != was.get(k)
               and not k.startswith(GIVEN_ON_RESUME) and not k.startswith(resolved)]
    if not changed:
        return
    leaves = [leaf for k in changed for leaf in differing_leaves(k, now.get(k), was.get(k))]
    listed = "; ".join(f"{k}: {printable(json.dumps(a), 60)} (the run's: {printable(json.dumps(b), 60)})"
                       for k, a, b in leaves[:3])
    more = f" and {len(leaves) - 3} more" if len(leaves) > 3 else ""
    config = printable(run.path / Files.CONFIG)
    if config_flag is not None:
        raise ConfigError(f"--resume {printable(run.path)} continues the run with its own config.yaml, and --config "
                          f"{printable(config_flag)} differs from it: {listed}{more}. Leave out --config (as --set is "
                          "left out beside --resume), or train a new run with the new values (without --resume).")
    raise ConfigError(f"run_mode(resume={printable(run.path)}): the cfg given differs from the run's own config.yaml, "
                      f"which a resumed run trains with: {listed}{more}. Pass the run's config, "
                      f"load_config({config!r}), to continue it (the command line refuses --set beside --resume), or "
                      "train a new run with the new values (without resume).")


def differing_leaves(key: str, now: Any, was: Any) -> list[tuple[str, Any, Any]]:
    """The settings under ``key`` whose values differ, named down to the value itself (data.datasets.0.max_samples,
    not the whole list of datasets, whose start may read the same)."""
    if isinstance(now, dict) and isinstance(was, dict):
        return [leaf for k in sorted(set(now) | set(was), key=str) if now.get(k) != was.get(k)
                for leaf in differing_leaves(f"{key}.{k}", now.get(k), was.get(k))]
    if isinstance(now, list) and isinstance(was, list) and len(now) == len(was):
        return [leaf for i, (a, b) in enumerate(zip(now, was)) if a != b
                for leaf in differing_leaves(f"{key}.{i}", a, b)]
    return [(key, now, was)]


def _resolved_at_start(given: KitConfig, saved: KitConfig) -> tuple[str, ...]:
    """The settings the run resolved when it started and its config.yaml holds resolved: auto-fit's micro-batch,
    accumulation and checkpointing (auto_fit: false after it), init_adapter's path and the adapter's LoRA settings."""
    resolved: tuple[str, ...] = ()
    if given.training.auto_fit and not saved.training.auto_fit:
        resolved += ("training.auto_fit", "training.micro_batch_size", "training.gradient_accumulation_steps",
                     "training.gradient_checkpointing")
    if given.training.init_adapter:
        resolved += ("training.init_adapter", "lora.")
    return resolved


def flat_settings(cfg: KitConfig, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The settings of ``cfg`` (of ``sections`` only, if given), flattened: training.max_steps: 4."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        else:
            flat[key] = value

    dumped = cfg.model_dump(mode="json")
    walk({k: v for k, v in dumped.items() if sections is None or k in sections}, "")
    return flat


def _is_schema_default(cfg: KitConfig, key: str, value: Any) -> bool:
    """Whether ``value`` is the schema's default of the flattened setting ``key`` (training.kernels): a setting a
    later version of the kit added has that value in a run started before it, which never set it."""
    *sections, name = key.split(".")
    section: Any = cfg
    for part in sections:
        section = getattr(section, part, None)
    field = getattr(type(section), "model_fields", {}).get(name)
    if field is None:
        return False
    default = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(default, default=str)) == value


def latest_checkpoint(run: RunDir) -> Path | None:
    """The newest complete checkpoint of a run (HF Trainer writes trainer_state.json last)."""
    found = [p for p in checkpoint_folders(run.path / Files.CHECKPOINTS) if (p / "trainer_state.json").is_file()]
    return found[-1] if found else None
