"""The adapter a mode works with, and the run folder its results go to.

--adapter (test, eval, export, chat) and training.init_adapter name an adapter: a run folder of the kit,
an adapter folder, 'latest' (the newest run with one) or 'none'. Each is checked at the adapter boundary
(safetensors, LoRA config, shapes that fit the base model) before any weight loads, and an adapter of a
run folder brings that run's model and data sections, so that its prompts are rendered as it was trained.

    python medical_qlora_finetuning.py --mode eval --adapter latest
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import adapter_base, adapters, backends, evaluate, json_text, model_files
from .adapter_origin import origin_record, origin_run, unrecorded_weights
from .config import KitConfig, LoraSection, load_config
from .errors import ModelError
from .messages import say
from .run_commands import on_run, recorded_resume_command
from .run_files import changed_training_items, manifest_value
from .run_lock import lock_holder
from .runs import Files, RunDir, latest_run_with_adapter
from .secrets import printable, redact, slug


def adapter_run_config(adapter: Path, cfg: KitConfig) -> KitConfig:
    """The model and data sections an adapter was trained with (from its run's config.yaml: base model, chat
    template, system prompt and prompt templates), so that its prompts are rendered as it was trained; eval,
    generation, export and output stay cfg's. A checkpoint or an export of a kit run brings that run's; an adapter
    outside the kit's run folders keeps cfg's model and data (model.name), whatever files lie beside it."""
    run_folder = origin_run(adapter)
    if run_folder is None:
        _note_run_without_config(adapter)
        return cfg
    run_cfg = load_config(run_folder / Files.CONFIG)
    trained = trained_model(adapter, cfg, say_trust=True)
    gone = _base_folder_gone(trained.name)
    if gone and _same_weights(run_folder, cfg.model.name):
        say(f"using base model {printable(cfg.model.name)} (model.name): the folder this adapter was trained on, "
            f"{printable(trained.name)}, is gone, and this one holds the same weight files (its run's manifest.json "
            "records them)")
        trained = trained.model_copy(update={"name": cfg.model.name})
        gone = False
    elif trained.name != cfg.model.name:
        say(f"using base model {printable(trained.name)}, the one this adapter was trained on (its run's "
            f"config.yaml), not model.name {printable(cfg.model.name)}: an adapter of a run is loaded onto its own "
            "base. To load it onto another model, copy the adapter folder out of its run folder and give the copy "
            "(an adapter from outside the kit's runs is loaded onto model.name)")
    changed, source = model_files.changed_since_training(run_folder)
    if gone:
        say(f"warning: the base model folder {printable(trained.name)} this adapter was trained on is gone (moved or "
            "deleted). Where this command needs the model, give its new place as --set model.name=NEW_FOLDER (taken "
            "when its weight files are the ones the run recorded).")
    elif changed:
        say(f"warning: the base model's files changed since the run {printable(run_folder.name)} trained: "
            f"{printable(model_files.describe_change(changed, source), 300)} (its manifest.json records their size and "
            "sha256): the adapter is applied to weights it was not trained on, and its results may not be its own.")
    _note_settings_of_run(run_cfg, cfg)
    return cfg.model_copy(update={"model": trained, "data": run_cfg.data})


# the settings of an adapter's run that replace the given ones and are named where they differ: how its prompts are
# rendered and its model loaded (model.name has its own note; data.datasets and the leakage guard's settings
# describe its training, which a default config's would differ from after any preset)
_RUN_SETTINGS_NAMED = {"data": ("system_prompt",),
                       "model": ("max_seq_length", "load_in_4bit", "dtype", "chat_template")}


def _note_settings_of_run(run_cfg: KitConfig, cfg: KitConfig) -> None:
    """The data and model settings given (config file or --set) that an adapter of a run replaces with its run's,
    named one by one: a --set data.system_prompt=... is said to be unused, not dropped without a word."""
    replaced = [f"{section}.{key}" for section, keys in _RUN_SETTINGS_NAMED.items() for key in keys
                if getattr(getattr(cfg, section), key) != getattr(getattr(run_cfg, section), key)]
    if replaced:
        shown = ", ".join(replaced)
        say(f"note: {shown}: the values this adapter was trained with are used (its run's config.yaml), not the ones "
            "given, so that its prompts are rendered as it was trained. To use other values, copy the adapter folder "
            "out of its run folder and give the copy (an adapter from outside the kit's runs takes the config's)")


def _base_folder_gone(name: str) -> bool:
    """A base model named by a local path (as a run's config.yaml records a model folder) that no longer exists."""
    path = Path(name).expanduser()
    return (path.is_absolute() or name.startswith(".")) and not path.exists()


def _same_weights(run_folder: Path, name: str) -> bool:
    """Whether the local model folder ``name`` holds the weight files the run recorded when it trained."""
    folder = Path(name).expanduser()
    recorded = manifest_value(run_folder, model_files.MANIFEST_KEY) if folder.is_dir() else None
    return bool(recorded) and not model_files.changed_files(recorded, str(folder))


def _note_run_without_config(adapter: Path) -> None:
    """An adapter whose run folder kept its manifest.json but lost its config.yaml (copied without it): the system
    prompt and prompt templates it was trained with cannot be read, which is said rather than left unsaid."""
    from .adapter_origin import OWN_ADAPTERS

    if adapter.name not in OWN_ADAPTERS:
        return
    run = adapter.parent
    manifest = run / Files.MANIFEST
    if manifest.is_symlink() or not manifest.is_file() or (run / Files.CONFIG).exists():
        return
    if manifest_value(run, "kit_version") is not None:
        say(f"warning: {printable(run)} holds the manifest.json of a kit run but no config.yaml (copied without it?): "
            "the system prompt, prompt templates and base model it was trained with cannot be read, so this "
            "command's are used, and its prompts may not be written as it was trained. Copy the run's config.yaml "
            "back into that folder to use its own.")


ANSWER_SETTINGS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")  # generation: how it answers


def generation_note(adapter: Path | None, cfg: KitConfig) -> str | None:
    """Where the adapter's run saved other answer settings (generation.max_new_tokens, temperature, top_p,
    repetition_penalty) in its config.yaml than the command uses, a note naming both and the command that uses the
    run's. A run's model and data sections come with its adapter (how its prompts are written, as it trained); how
    long and how freely it answers is the command's own setting (its --config, or the kit's default config), as
    for eval and export: the run's config.yaml applies where it is given, --config RUN/config.yaml."""
    run_folder = origin_run(adapter) if adapter is not None else None
    if run_folder is None:
        return None
    own = load_config(run_folder / Files.CONFIG).generation
    differ = [k for k in ANSWER_SETTINGS if getattr(own, k) != getattr(cfg.generation, k)]
    if not differ:
        return None
    now = ", ".join(f"{k} {getattr(cfg.generation, k)}" for k in differ)
    then = ", ".join(f"{k} {getattr(own, k)}" for k in differ)
    return (f"note: answering with generation {now} (this command's config), not the run "
            f"{printable(run_folder.name)}'s own ({then}, its config.yaml): an adapter brings its run's model and data "
            f"sections, not its generation settings. To answer with the run's: {on_run('--adapter', run_folder)}")


def start_adapter(adapter: Path | None) -> str | None:
    """The training.init_adapter the run of a kit adapter started from (its config.yaml), or None."""
    run_folder = origin_run(adapter) if adapter is not None else None
    return load_config(run_folder / Files.CONFIG).training.init_adapter if run_folder is not None else None


def trained_model(adapter: Path, cfg: KitConfig, say_trust: bool = False) -> Any:
    """The model section an adapter was trained with (its run's config.yaml; cfg's for an adapter from outside the
    kit's runs), whose model.trust_remote_code is always cfg's: a run folder given by path is not the user's word
    to run a model folder's own Python code (its config.yaml may say true)."""
    run_folder = origin_run(adapter)
    if run_folder is None:
        return cfg.model
    trained = load_config(run_folder / Files.CONFIG).model
    if say_trust and trained.trust_remote_code and not cfg.model.trust_remote_code:
        say(f"note: the run {printable(run_folder.name)} was trained with model.trust_remote_code: true (its "
            "config.yaml); the kit runs a model folder's own code only where the config given says so, and it is "
            "off here. If the model needs it, and you trust that folder's code: --set model.trust_remote_code=true")
    return trained.model_copy(update={"trust_remote_code": cfg.model.trust_remote_code})


def note_folder_of_the_word(word: str, output_dir: Path, flag: str) -> None:
    """``none`` and ``latest`` are words, never folder names: a folder of that name is said, with how to give it."""
    folders = [folder for folder in (Path(word), output_dir / word) if folder.is_dir()]
    if folders:
        meaning = {"none": "the base model alone", "latest": "the newest run"}[word]
        say(f"note: {flag} {word} means {meaning}, not the folder {printable(folders[0])}; to use that folder, give "
            f"its path: {flag} {printable(folders[0].absolute())}")


def find_adapter(cfg: KitConfig, adapter_arg: str | None, output_dir: str | None,
                 flag: str = "--adapter") -> Path | None:
    """The adapter folder of --adapter (None: the base model alone), checked at the adapter boundary: safetensors,
    a LoRA config, and shapes that fit the base model it will be loaded onto, before any weight loads."""
    if adapter_arg in ("none", "latest"):
        note_folder_of_the_word(adapter_arg, Path(output_dir or cfg.output.dir), flag)
    if adapter_arg == "none":
        return None
    if adapter_arg in (None, "latest"):
        folder = latest_run_with_adapter(Path(output_dir or cfg.output.dir), flag)
        check_latest_finished(folder, flag)
    else:
        _refuse_run_name_for_a_path(adapter_arg, Path(output_dir or cfg.output.dir), flag)
        folder = traced_link(adapters.locate(adapter_arg, flag), flag)
        if folder.name == Files.ADAPTER and (stopped := stopped_during_training(folder.parent)):
            finish = finishing_command(folder.parent)
            say(f"warning: {flag} {printable(folder.parent)}: its training stopped before its end ({stopped}), so "
                "its adapter is the one trained so far, not a finished run's (" +
                (f"to finish it: {finish})" if finish else f"{NO_CHECKPOINT}: train it again as a new run to finish "
                 "its training)"))
    adapter = adapters.find(folder)
    if (run := unrecorded_weights(adapter.folder)) is not None:
        say(f"note: {printable(adapter.folder)} holds other weights than the ones the run {printable(run)} saved "
            f"(their sha256 is not among those its {Files.MANIFEST} records: an adapter copied over it?), so that "
            "run's records do not describe it: it is used as an adapter from outside the kit's runs")
    origin = origin_run(adapter.folder)  # the run folder, also of a checkpoint or export, whose files are read
    if origin is not None:  # a link planted in its run folder stops here, before anything is read or loaded
        RunDir(origin).check_links()
    model = trained_model(adapter.folder, cfg)
    source = backends.config_source(model.name)
    adapter_base.check_base(adapter, model.name, source, model.trust_remote_code)
    adapters.check_finite(adapter.folder)  # read from its safetensors: --dry-run refuses what the run would
    adapters.check_change(adapter.folder, adapter.config)
    _check_own_tokenizer(adapter.folder, cfg.model_copy(update={"model": model}))
    named = adapter.config.get("base_model_name_or_path") or ""
    if adapter.run is None and named and not same_model(named, model.name, source):
        say(f"warning: the adapter's {adapters.CONFIG_NAME} names {printable(named, 120)} as its base model; it is "
            f"loaded onto model.name {printable(model.name, 120)}, whose shapes fit it. "
            f"{_base_advice(named, model.name)}")
    return adapter.folder


def _check_own_tokenizer(folder: Path, cfg: KitConfig) -> None:
    """An adapter saved with its own tokenizer (and chat template), which the modes load in place of the base
    model's: checked as the base model's is (its tokenizer_config.json's fields, a template that renders in time),
    so that --dry-run refuses what loading it would."""
    if not (folder / "tokenizer_config.json").is_file():
        return
    from transformers import AutoTokenizer

    from .backends.checkpoints import check_tokenizer_config
    from .backends.hf import tokenizer_load_errors
    from .backends.tokenizer import prepare_tokenizer

    check_tokenizer_config(folder, "the adapter's tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # a damaged tokenizer file of the adapter's: said as the model's would be
        raise tokenizer_load_errors(str(folder), err) from None
    prepare_tokenizer(tokenizer, cfg)


def _refuse_run_name_for_a_path(arg: str, root: Path, flag: str) -> None:
    """--adapter RUN_NAME (a run's output.run_name) where no such path is here, while output.dir holds a run of that
    name: the path to give, said."""
    from .adapter_advice import named_flag

    named = Path(arg).expanduser()
    try:
        if named.exists() or named.is_absolute() or not (root / arg / Files.MANIFEST).is_file():
            return
    except (OSError, ValueError):
        return
    raise ModelError(f"{flag} {printable(arg)}: no such file or folder here; a run of that name is under output.dir: "
                     f"{printable(root / arg)}. Give its path: {named_flag(flag)}{printable(root / arg)}")


def traced_link(folder: Path, flag: str) -> Path:
    """An adapter named by a link (a "best adapter" link to <run>/adapter, or a path through linked folders), whose
    path is in no run folder of the kit while the folder it leads to is: that folder, so that what its run trained
    on, the format it learnt and where its results go are read from the run it comes from. A path that is in a run
    folder as given is used as it is (that run's own checks apply)."""
    if origin_run(folder) is not None:
        return folder
    try:
        resolved = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return folder
    if resolved == folder.absolute() or origin_run(resolved) is None:
        return folder
    say(f"{flag} {printable(folder)} leads to {printable(resolved)} (through a symbolic link): the adapter of the run "
        f"{printable(origin_run(resolved))}, whose records say what it was trained on")
    return resolved


def _base_advice(named: str, model_name: str) -> str:
    """What to set when an adapter names another base model than model.name: that model, said so that it can be
    given (an exported adapter names a local base model by its folder name alone, no path); and a warning when
    model.name is a model the kit merged an adapter into, onto which this one may be applied a second time."""
    merged = Path(model_name).expanduser()
    twice = ("model.name is a model the kit exported with an adapter merged into it: if that was this adapter, its "
             "change would be applied twice; load it onto the base model it was trained on. "
             if merged.name == "merged" and merged.parent.name.startswith(Files.EXPORT)
             and (merged.parent / Files.EXPORT_REPORT).is_file() else "")
    shown = printable(named, 120)
    if "/" not in named and not Path(named).expanduser().exists():
        return (f"{twice}If it was trained on a local model folder named {shown} (an exported adapter names a local "
                "base model by its folder name alone), set model.name to that folder's path.")
    return f"{twice}If it was trained on {shown}, set --set model.name={shown}."


def check_latest_finished(adapter: Path, flag: str) -> None:
    """'latest' names the newest run with an adapter; one whose training stopped early (a signal, a failure) saved
    a half-trained adapter. training.init_adapter would build the next stage on it: refused; --adapter says it."""
    stopped = stopped_during_training(adapter.parent)
    if stopped is None:
        return
    run = printable(adapter.parent)
    if flag == "--adapter":
        say(f"warning: --adapter latest is {run}, whose training stopped before its end ({stopped}): its adapter "
            "is the one trained so far")
        return
    finish = finishing_command(adapter.parent)
    first = (f"Finish it first ({finish})" if finish else
             f"It has {NO_CHECKPOINT}: train it again as a new run first")
    raise ModelError(f"{flag} latest: the newest run with an adapter, {run}, stopped before its training ended "
                     f"({stopped}), so its adapter is half-trained. {first}, "
                     f"or set {flag} to {run} to start from that adapter as it is.")


NO_CHECKPOINT = "no checkpoint to continue from (it stopped before its first one, training.save_steps)"


def finishing_command(run_folder: Path) -> str | None:
    """The command that finishes a run whose training stopped (its --resume), or None where it has no checkpoint
    to continue from (--resume would refuse it)."""
    from .resume import latest_checkpoint

    return recorded_resume_command(run_folder) if latest_checkpoint(RunDir(run_folder)) is not None else None


def stopped_during_training(run_folder: Path) -> str | None:
    """Why a run's training stopped before its end (its manifest's status and error), or None: it finished
    training (a stop after training leaves the adapter whole), or it is not a run of the kit."""
    if adapters.kit_run_folder(run_folder / Files.ADAPTER) is None:
        return None
    try:
        manifest = json_text.loads((run_folder / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    status = manifest.get("status")
    if status not in ("interrupted", "failed") or "after training" in str(manifest.get("stage") or ""):
        return None
    reason = str(manifest.get("error") or status).split(":", 1)[0]
    return printable(f"status {status}: {reason}", 160)


def same_model(named: str, name: str, source: str | None) -> bool:
    """Whether an adapter's base_model_name_or_path names the model ``name`` (also by its local folder, or by the
    folder name alone that an exported adapter names a local base model by)."""
    if named in (name, source, backends.published_base_name(name)):
        return True
    try:
        return any(Path(named).expanduser().resolve() == Path(n).expanduser().resolve() for n in (name, source) if n)
    except (OSError, ValueError):
        return False


def run_folder_for(cfg: KitConfig, adapter: Path | None, output_dir: str | None, prefix: str) -> RunDir:
    """The adapter's own run folder; a new one under output.dir for the base model, or for an adapter that is not
    in a run folder of the kit (nothing is ever written beside a foreign adapter)."""
    origin = None
    if adapter is not None:
        run_folder = adapters.kit_run_folder(adapter)
        if run_folder is not None:
            run = RunDir(run_folder)
            run.start_log()
            return run
        origin = origin_run(adapter)
        named = slug(redact(adapter.parent.name if adapter.name == Files.ADAPTER else adapter.name))[:60] or "adapter"
        prefix = f"{slug(redact(origin.name))[:60]}-{named}" if origin is not None else f"foreign-{named}"
    name = cfg.output.run_name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunDir.create(cfg.model_copy(update={"output": cfg.output.model_copy(update={"run_name": name})}), output_dir,
                        generated_name=not cfg.output.run_name)  # a run of the same second: a -2 suffix
    if adapter is not None:
        if origin is not None:  # its records name the training run, which an export of its export follows
            run.write_json(Files.ORIGIN, origin_record(adapter, origin))
        say(f"{printable(adapter)} {_outside_run(adapter)}: its results go to {printable(run.path)}")
    return run


def _outside_run(adapter: Path) -> str:
    """Why an adapter's results go to a new run folder: it is a checkpoint or an export of a kit run (whose folder
    holds the results of the run's own adapter), or not from a kit run at all."""
    origin = origin_run(adapter)
    if origin is None:
        return ("holds weights its run did not save" if unrecorded_weights(adapter) is not None
                else "is not in a run folder of this kit")
    return (f"is a {'checkpoint' if adapter.parent.name == Files.CHECKPOINTS else 'export'} of the run "
            f"{printable(origin)} (what it was trained on is read there)")


def with_init_adapter(cfg: KitConfig, output_dir: str | None) -> KitConfig:
    """training.init_adapter resolved (latest: the newest run with an adapter) and checked at the adapter boundary
    (safetensors, LoRA config, shapes that fit this base model, finite weights), its path and its own LoRA settings
    written into the config the run saves, so that --resume starts from the same adapter. Used by the run and by
    --dry-run alike."""
    try:
        adapter = find_adapter(cfg, cfg.training.init_adapter, output_dir, flag="training.init_adapter")
        if adapter is None:
            return cfg.model_copy(update={"training": cfg.training.model_copy(update={"init_adapter": None})})
        refuse_checkpoint_of_running_training(adapter)
        return _started_from(adapter, cfg)
    except FileNotFoundError as err:  # removed while it was checked (a training's checkpoint rotation, a cleanup)
        raise ModelError(f"training.init_adapter {printable(cfg.training.init_adapter)}: "
                         f"{printable(err.filename or 'a file of the adapter')} vanished while the adapter was being "
                         "checked (deleted or moved meanwhile). Name an adapter folder that stays in place: a "
                         "finished run, or a copy of the checkpoint.") from None


def refuse_checkpoint_of_running_training(adapter: Path) -> None:
    """A checkpoint of a run that trains now (another process holds its lock): its training rotates checkpoints away
    (training.keep_checkpoints) and may delete this one before the new run loads it or resumes from it."""
    run = origin_run(adapter)
    if adapter.parent.name != Files.CHECKPOINTS or run is None or (holder := lock_holder(run)) is None:
        return
    who = f"process {printable(holder, 20)}" if holder else "another medqlora command"
    raise ModelError(f"training.init_adapter {printable(adapter)} is a checkpoint of the run {printable(run)}, which "
                     f"is training now ({who} holds its lock): that training deletes its older checkpoints "
                     "(training.keep_checkpoints) and may delete this one while this run reads it. Copy the "
                     f"checkpoint first (cp -r {printable(adapter)} <folder>) and name the copy, or wait for that "
                     "training to end and name its run folder.")


def _started_from(adapter: Path, cfg: KitConfig) -> KitConfig:
    """The config of a run that starts from ``adapter`` (checked): its path and its own LoRA settings."""
    trained = trained_model(adapter, cfg)
    if trained.name != cfg.model.name:
        raise ModelError(f"training.init_adapter {printable(adapter)} was trained on {printable(trained.name)}, not on "
                         f"model.name {printable(cfg.model.name)}: set model.name to the model it was trained on.")
    say(f"starting from the adapter of {printable(adapter)} (training.init_adapter)")
    gap = inherited_training_items(adapter)[1]
    if gap:
        say(f"warning: {gap}")
    lora = adapter_lora(adapters.read_config(adapter), cfg.lora)
    if lora != cfg.lora:
        changed = ", ".join(f"lora.{k} {getattr(cfg.lora, k)} -> {getattr(lora, k)}" for k in type(lora).model_fields
                            if getattr(lora, k) != getattr(cfg.lora, k))
        say(f"warning: training.init_adapter trains the adapter with its own LoRA settings, not lora: ({changed}); "
            "the run's config.yaml records the adapter's")
    return cfg.model_copy(update={"lora": lora, "training": cfg.training.model_copy(
        update={"init_adapter": str(adapter.resolve())})})


def adapter_lora(config: dict[str, Any], lora: LoraSection) -> LoraSection:
    """The LoRA settings an adapter was trained with (its adapter_config.json), in the shape of the lora: section;
    a value that section cannot hold (a regular expression of target modules) keeps lora:'s."""
    targets = config.get("target_modules")
    values = {"r": config.get("r"), "alpha": config.get("lora_alpha"), "dropout": config.get("lora_dropout"),
              "use_rslora": config.get("use_rslora"),
              "target_modules": ([m for m in lora.target_modules if m in targets] + sorted(set(targets) -
                                 set(lora.target_modules))) if isinstance(targets, list) else None}
    update = {}
    for key, value in values.items():
        try:
            update[key] = getattr(LoraSection.model_validate({**lora.model_dump(), key: value}), key)
        except ValueError:  # not a value of the lora: section: lora:'s stays
            continue
    return lora.model_copy(update=update)


def check_benchmarks_untrained(benchmarks: dict[str, list], adapter: Path) -> None:
    """The trained-on guard: an adapter of a kit run (its adapter, a checkpoint or an export of it) must have its
    run's training_items.jsonl."""
    run_folder = origin_run(adapter)
    folder = run_folder if run_folder is not None else adapter.parent
    record = folder / Files.TRAINING_ITEMS
    if run_folder is None and not record.is_file() and benchmarks:
        say(f"warning: the adapter {printable(adapter)} is not in a run folder of this kit and has no "
            f"{Files.TRAINING_ITEMS} beside it, so what it was trained on is unknown: its scores cannot be checked "
            "for items it trained on. For an adapter the kit trained (a copy of its export), evaluate its run "
            "folder instead (--adapter RUN), whose records the check reads.")
    evaluate.check_not_trained_on(benchmarks, record, required=run_folder is not None)


def inherited_training_items(adapter: Path) -> tuple[list[dict[str, Any]], str | None]:
    """What the start adapter (training.init_adapter) was trained on, which a run continuing it has learned too: its
    run's training_items.jsonl records (its own start adapter's included) and the evaluation questions its
    data_stats.json allowed it to train on, each marked with the run it comes from. The second value says why
    nothing can be carried over (a foreign adapter, a missing or damaged record), None when all is."""
    from .leakage import flagged_hashes

    run_folder = origin_run(adapter)
    if run_folder is None:
        return [], (f"training.init_adapter {printable(adapter)} is not in a run folder of this kit, so what it was "
                    "trained on is unknown: the trained-on check of --mode eval will cover this run's own rows only")
    source = f"training.init_adapter {run_folder.name}"
    records: list[dict[str, Any]] = []
    try:
        held = (run_folder / Files.TRAINING_ITEMS).read_bytes()
        if change := changed_training_items(run_folder, held):
            raise ValueError(change)
        for line in held.decode("utf-8").splitlines():
            if line.strip():
                record = json_text.loads(line)
                record["question_sha1_16"] = str(record["question_sha1_16"])
                records.append({**record, "inherited_from": record.get("inherited_from") or source})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], (f"{printable(run_folder / Files.TRAINING_ITEMS)} is missing, damaged or changed since its run "
                    "wrote it, so what training.init_"
                    "adapter was trained on cannot be carried into this run's record: the trained-on check of --mode "
                    "eval will not see it. Restore that file, or start from another adapter")
    try:
        allowed = flagged_hashes(json_text.loads((run_folder / Files.DATA_STATS).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        allowed = set()
    records += [{"source": f"{source} (an evaluation question it was allowed to train on)", "uid": None,
                 "question_sha1_16": h, "inherited_from": source} for h in sorted(allowed)]
    return records, None


def cot_style_mismatches(cfg: KitConfig, adapter: Path | None) -> list[str]:
    """Chain-of-thought benchmarks that score a reasoning format other than the one the adapter learnt (its run's
    medical_o1 cot_style, or the format a GRPO stage rewarded): its format compliance would measure the mismatch."""
    cot = [b for b in cfg.eval.benchmarks if b.kind == "cot"]
    if adapter is None or not cot:
        return []
    from .grpo import learnt_style

    learnt = learnt_style(adapter, depth=1)  # (depth 1: no word when it is not a kit run's: nothing is known then)
    return [f"eval.benchmarks {b.name} scores the {b.cot_style} reasoning format, but the adapter learnt {learnt}: "
            f"its format compliance and answers measure that mismatch; set cot_style: {learnt} on the benchmark to "
            "score the format it was trained to write" for b in cot if learnt and b.cot_style != learnt]

