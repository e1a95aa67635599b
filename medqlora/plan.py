"""--dry-run: what a mode would do, checked as the run would check it, without loading a model or training.

    python medical_qlora_finetuning.py --mode full --dry-run

The plan is a JSON object on stdout (notes while planning go to stderr): backend, model, data sizes and
training examples, batch and steps, validation, prompts, trackers, GPU memory (and what auto-fit would
choose), the processes of a launch, the evaluation and the run folder's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import adapter_base, adapters, backends, data, distributed, evaluate, fit, generate, harness, tracking
from .adapter_runs import (
    adapter_run_config,
    check_benchmarks_untrained,
    cot_style_mismatches,
    find_adapter,
    generation_note,
)
from .commands import ANSWERING_MODES
from .config import KitConfig
from .errors import ModelError
from .export import left_for_export_mode
from .grpo import check_vllm, reward_plan
from .methods import unused_method_settings
from .inputs import (
    benchmark_guard_items,
    benchmark_counts,
    benchmark_plan,
    cot_validation_planned,
    evaluates_in_full_mode,
    local_benchmarks,
    planned_examples,
)
from .messages import say
from .run_names import check_name_fits, run_name_stem
from .runs import Files, check_output_dir, check_run_folder_free, check_run_name


def _check_planned_run_name(cfg: KitConfig, output_dir: str | None, resuming: bool) -> None:
    """output.run_name refused as the run refuses it: a path, a credential's value, a name longer than the output
    folder's file system takes, or (a new run) the name of an existing run."""
    if cfg.output.run_name:
        check_run_name(cfg.output.run_name)
        check_name_fits(Path(output_dir or cfg.output.dir).expanduser(), cfg.output.run_name)
        if not resuming:
            check_run_folder_free(Path(output_dir or cfg.output.dir).expanduser(), cfg.output.run_name)


def _run_files(cfg: KitConfig, output_dir: str | None, evaluated: bool, lm_eval: bool, answered: bool) -> str:
    """The run folder a training run creates and the files and folders it writes there, its trackers' included."""
    folder = Path(output_dir or cfg.output.dir) / (cfg.output.run_name or f"{run_name_stem(cfg)}-<timestamp>")
    listed = Files.listed(evaluated, lm_eval, cfg.training.method, answered, tracking.tracker_folders(cfg))
    return f"{folder}/ {{{listed}}}"


def _check_planned_output(cfg: KitConfig, output_dir: str | None) -> None:
    """The output folder, checked as the run checks it: writable, and not inside a data folder."""
    check_output_dir(Path(output_dir or cfg.output.dir).expanduser())
    data.refuse_output_inside_data(cfg.data, Path(output_dir or cfg.output.dir))


def training_plan(cfg: KitConfig, mode: str, output_dir: str | None, resuming: bool = False) -> dict[str, Any]:
    """What a run would do, without loading any model (for --dry-run)."""
    from .train import batch_notes, check_optimizer, logging_note, planned_steps

    _check_planned_run_name(cfg, output_dir, resuming)
    runtime = backends.detect(cfg)
    check_vllm(cfg, runtime)  # vLLM generation where it cannot run, refused as the run refuses it
    tracker_notes = tracking.check_trackers(cfg)  # a tracker without its key or package stops here, as in a run
    optimizer = check_optimizer(cfg, runtime)  # a bitsandbytes optimizer without bitsandbytes too
    source = _checked_model_source(cfg)
    backends.check_planned_target_modules(cfg, source)  # the modules LoRA targets, checked as the run checks them
    kernels = backends.planned_kernels(cfg, runtime, _model_type(cfg, source))  # liger where it cannot run: refused
    tokenizer = local_tokenizer(cfg, source)  # checked, and the data tokenized with it as a run does
    _check_planned_output(cfg, output_dir)
    with_eval = mode == "full" and evaluates_in_full_mode(cfg)
    answered = mode in ANSWERING_MODES  # --mode train writes no sample answers
    benchmarks, lm_eval_tasks, sizes, n_train = _planned_data(cfg, tokenizer, with_eval)
    if answered and tokenizer is not None:  # the sample queries' texts, as the run checks them before it trains
        generate.check_query_texts(cfg, tokenizer, generate.load_queries(cfg.generation.queries_file))
    t = cfg.training
    gpu_only = backends.gpu_only_checkpoint(cfg.model.name) if runtime.device != "cuda" else None
    if gpu_only:
        say(f"warning: a run on this machine would stop: {gpu_only}")  # on stderr: stdout carries the plan
    return {
        "mode": mode,
        **({"runs_here": f"no: {gpu_only}"} if gpu_only else {}),
        "backend": runtime.describe(),
        "model": cfg.model.name,
        "quantization": "4-bit NF4" if cfg.model.load_in_4bit and runtime.device == "cuda" else "none",
        "lora": _lora_text(cfg),
        "datasets": sizes,
        "training_examples": n_train if n_train is not None else "unknown until hub data is downloaded",
        "effective_batch": f"{t.micro_batch_size} x {t.gradient_accumulation_steps} = "
        f"{t.micro_batch_size * t.gradient_accumulation_steps}" + "".join(
            f"; {note}" for note in batch_notes(cfg, n_train) if note),
        "optimizer_steps": planned_steps(cfg, n_train) if n_train is not None or t.max_steps > 0 else "unknown",
        **({"logging": note} if (n_train is not None or t.max_steps > 0) and (note := logging_note(cfg, n_train))
           else {}),
        "max_seq_length": cfg.model.max_seq_length,
        "training": _training_section(cfg, runtime, optimizer) | {"kernels": kernels},
        "validation": validation_plan(cfg),
        "prompts": prompt_plan(cfg),
        "trackers": {"report_to": t.report_to, **({"notes": tracker_notes} if tracker_notes else {})},
        "gpu_memory": memory_plan(cfg, runtime, source),
        "processes": distributed.process_plan(cfg, n_train, benchmark_counts(cfg, benchmarks) if with_eval else {},
                                              evaluated=with_eval, answered=answered),
        "evaluation": _evaluation_plan(cfg, with_eval, lm_eval_tasks, benchmarks),
        "outputs": _run_files(cfg, output_dir, with_eval, bool(lm_eval_tasks), answered),
        **({"export": f"not in this mode: {later}"} if (later := left_for_export_mode(cfg, mode)) else {}),
        **({"unused": unused} if (unused := unused_method_settings(cfg) + harness.unused_harness_settings(cfg, mode))
           else {}),
    }


def _planned_data(cfg: KitConfig, tokenizer: Any,
                  with_eval: bool) -> tuple[dict[str, list], list | None, dict[str, Any], int | None]:
    """The rows and the leakage guard a run would check, benchmarks (local ones) included, tokenized with the
    local tokenizer where there is one: the local benchmarks' items, the lm-eval tasks, the datasets' sizes and
    the training examples."""
    from .train import check_steps_against_data

    benchmarks = local_benchmarks(cfg) if with_eval else {}
    lm_eval_tasks = harness.load_tasks(cfg) if with_eval else None
    guarded = {**benchmarks, **harness.items_by_task(lm_eval_tasks)}
    sizes, n_train = planned_examples(cfg, tokenizer, benchmark_guard_items(guarded))
    if n_train is not None:
        check_steps_against_data(cfg, n_train)
    evaluate.check_prompts_fit(cfg, tokenizer, benchmarks)
    return benchmarks, lm_eval_tasks, sizes, n_train


def _lora_text(cfg: KitConfig) -> str:
    return (f"r={cfg.lora.r} alpha={cfg.lora.alpha} dropout={cfg.lora.dropout} on "
            f"{','.join(cfg.lora.target_modules)}"
            + (f" (the settings of training.init_adapter {cfg.training.init_adapter})"
               if cfg.training.init_adapter not in (None, "latest") else ""))


def _evaluation_plan(cfg: KitConfig, with_eval: bool, lm_eval_tasks: list | None,
                     benchmarks: dict[str, list]) -> list[str]:
    return ([benchmark_plan(cfg, b, benchmarks) for b in cfg.eval.benchmarks] + _cot_plan(cfg) + harness.plan(cfg, lm_eval_tasks)
            if with_eval else [])


def _training_section(cfg: KitConfig, runtime: backends.Runtime, optimizer: str) -> dict[str, Any]:
    t = cfg.training
    return {
        "method": method_text(cfg),
        "length": f"max_steps {t.max_steps}" if t.max_steps > 0 else f"{t.num_epochs:g} epochs",
        "learning_rate": t.learning_rate,
        "lr_scheduler": t.scheduler() if t.scheduler_note() is None else f"{t.scheduler()} ({t.scheduler_note()})",
        "warmup": t.warmup_text(),
        "optimizer": optimizer,
        "weight_decay": t.weight_decay,
        "precision": runtime.dtype if cfg.model.dtype in ("auto", runtime.dtype) or runtime.device == "cuda"
        else f"{runtime.dtype} here; model.dtype {cfg.model.dtype} on a GPU",
        "gradient_checkpointing": backends.checkpointing_plan(cfg, runtime),
        **({"grpo": reward_plan(cfg)} if t.method == "grpo" else {}),
    }


def method_text(cfg: KitConfig) -> str:
    """training.method with the settings it trains by (dpo / orpo: beta, the DPO loss, the prompt tokens kept)."""
    method, p = cfg.training.method, cfg.preference
    if method not in ("dpo", "orpo"):
        return method
    loss = f", loss_type {p.loss_type}" if method == "dpo" else ""
    return f"{method} (beta {p.beta:g}{loss}; prompts kept to {p.max_prompt_length} tokens)"


def _cot_plan(cfg: KitConfig) -> list[str]:
    """--mode full on medical-o1 rows with a validation set: their generation before and after training."""
    if not (cfg.eval.in_full_mode and cot_validation_planned(cfg)):
        return []
    return [f"{evaluate.COT_VALIDATION} (up to {cfg.eval.cot_items} held-out medical-o1 rows, generated before and "
            "after training: format compliance, reasoning length, ROUGE-L of the final response)"]


def validation_plan(cfg: KitConfig) -> dict[str, Any]:
    """Where the validation items come from, and when their loss is computed."""
    sources = [f"data.val_ratio {cfg.data.val_ratio} of the training rows, drawn at random (seeded)"] \
        if cfg.data.val_ratio else []
    for i, spec in enumerate(cfg.data.datasets):
        name = f"{i}:{spec.source}"
        if spec.val_first_n:
            sources.append(f"the first {spec.val_first_n} rows of {name} (file order)")
        if spec.cv_fold is not None:
            sources.append(f"PubMedQA CV fold {spec.cv_fold} of {name}")
        if spec.use_for == "validation":
            sources.append(f"all of {name}")
    every = cfg.training.eval_steps
    return {"items": sources or ["none"],
            "loss": (f"every {every} steps during training, and before and after" if every else "before and after "
                     "training") if sources else "none"}


def prompt_plan(cfg: KitConfig) -> list[dict[str, Any]]:
    """How each dataset's prompt is written: chat template, system prompt, prompt template."""
    chat = {False: "none (plain text, model.chat_template: false)", "auto": "the tokenizer's own (ChatML if none)"}
    shown = []
    for i, spec in enumerate(cfg.data.datasets):
        system = data.system_prompt_of(cfg.data, spec)
        shown.append({"dataset": f"{i}:{spec.source}",
                      "chat_template": chat.get(cfg.model.chat_template, cfg.model.chat_template),
                      "system_prompt": system if system else "none",
                      "prompt_template": spec.prompt_template if spec.prompt_template is not None
                      else f"the {spec.format} format's own"})
    return shown


def adapter_mode_plan(cfg: KitConfig, mode: str, adapter_arg: str | None, output_dir: str | None) -> dict[str, Any]:
    """--dry-run of test, eval and export: the adapter checked as the mode would check it, the base model its run
    was trained on, and what the mode would write (nothing is trained)."""
    adapter = find_adapter(cfg, adapter_arg, output_dir)
    if adapter is None and mode == "export":
        raise ModelError("--mode export needs an adapter: --adapter RUN_FOLDER (or latest), not none.")
    if adapter is not None:
        cfg = adapter_run_config(adapter, cfg)
    backends.check_model_source(cfg.model.name)
    source = backends.config_source(cfg.model.name)
    lm_eval_tasks, benchmarks = None, {}
    if mode == "eval":  # local benchmark rows are read and checked, as the run reads them
        evaluate.check_something_to_score(cfg)
        benchmarks = local_benchmarks(cfg)
        lm_eval_tasks = harness.load_tasks(cfg)
        if adapter is not None:
            check_benchmarks_untrained({**benchmarks, **harness.items_by_task(lm_eval_tasks)}, adapter)
        for mismatch in cot_style_mismatches(cfg, adapter):
            say(f"warning: {mismatch}")
        evaluate.check_prompts_fit(cfg, local_tokenizer(cfg, source), benchmarks)
    if mode in ("test", "chat"):
        if note := generation_note(adapter, cfg):
            say(note)
        check_prompt_room(cfg, mode, source)
        tokenizer = local_tokenizer(cfg, source)  # None where reading it would convert or download
        questions = generate.load_queries(cfg.generation.queries_file) if mode == "test" else []
        generate.check_query_texts(cfg, tokenizer, questions)
    if mode == "export":
        from .export import check_before_export

        check_before_export(cfg, adapter)  # what the export refuses before it writes anything is refused here
    run_folder = adapters.kit_run_folder(adapter) if adapter is not None else None
    does = {"test": f"answers the {len(generate.load_queries(cfg.generation.queries_file))} queries of "
                    f"{cfg.generation.queries_file}",
            "eval": "scores " + ", ".join([benchmark_plan(cfg, b, benchmarks) for b in cfg.eval.benchmarks]
                                          + harness.plan(cfg, lm_eval_tasks or [])),
            "export": f"writes {', '.join(cfg.export.formats)} into an export folder" + _push_plan(cfg),
            "chat": "talks with the model (history, streamed replies; --prompt: one answer to stdout)"}[mode]
    return {
        "mode": mode,
        "backend": backends.detect(cfg).describe(),
        "model": cfg.model.name,
        "adapter": str(adapter) if adapter is not None else "none: the base model alone",
        "does": does + "; trains nothing",
        "outputs": "none: a conversation writes no file" if mode == "chat" else str(run_folder)
        if run_folder is not None else str(Path(output_dir or cfg.output.dir) / "<new run folder>"),
        **({"unused": unused} if (unused := harness.unused_harness_settings(cfg, mode)) else {}),
    }


def _checked_model_source(cfg: KitConfig) -> str | None:
    """Where the model is read from locally (None: not without downloading), refused as a run refuses it: a
    damaged model file, or a max_seq_length beyond the context of its config.json."""
    backends.check_model_source(cfg.model.name)
    source = backends.config_source(cfg.model.name)
    base = adapter_base.base_config(source, cfg.model.trust_remote_code)
    if base is not None:
        backends.check_context_length(base, cfg)
    return source


def _model_type(cfg: KitConfig, source: str | None) -> str | None:
    """The model_type of the model's config.json, where it can be read locally."""
    base = adapter_base.base_config(source, cfg.model.trust_remote_code)
    model_type = base.get("model_type") if base is not None else None
    return model_type if isinstance(model_type, str) else None


def check_prompt_room(cfg: KitConfig, mode: str, source: str | None) -> None:
    """generation.max_new_tokens against the context in the model's config.json, as test and chat check it against
    the loaded model (nothing to check when config.json cannot be read locally). --mode full checks it before it
    evaluates and trains (Recipe.check_inputs), not after."""
    from .chat import chat_context

    base = adapter_base.base_config(source, cfg.model.trust_remote_code)
    context = None if base is None else chat_context(cfg, base) if mode == "chat" else generate.model_context(base)
    if context is not None:
        generate.prompt_room(cfg, context)


def _push_plan(cfg: KitConfig) -> str:
    repo = cfg.export.push_to_hub
    return (f", then uploads it to the Hub repository {repo} ({'private' if cfg.export.hub_private else 'public'}, "
            "with the token in the environment)") if repo else ""


def local_tokenizer(cfg: KitConfig, source: str | None) -> Any:
    """The tokenizer of a model in a local folder (it loads in a second), else None. ``source``: where
    backends.config_source reads the model, without converting or downloading anything."""
    return backends.load_tokenizer(cfg, source) if source and Path(source).is_dir() else None


def memory_plan(cfg: KitConfig, runtime: backends.Runtime, source: str | None) -> dict[str, Any] | str:
    """The preflight for --dry-run: estimated peak GPU memory (every micro-batch max_seq_length long), and
    what auto-fit would choose. Refuses, with the options to change, when training cannot fit."""
    card = fit.card_gib(cfg)
    if runtime.device != "cuda" and card is None:
        return ("not used: this machine has no CUDA GPU, so the run trains on the CPU (hf backend). "
                "--set training.gpu_memory_gib=15 plans the GPU memory of a 15 GiB card (a Colab T4) instead")
    shape, unknown = fit.model_shape_offline_first(source, cfg.model.trust_remote_code) if source else (
        None, "the model is converted from its GGUF file when the run starts")
    if shape is None:
        return f"unknown: {unknown}"
    backend = runtime.backend if runtime.device == "cuda" or distributed.sharding() else (
        "hf" if cfg.backend == "hf" else "unsloth")
    t = cfg.training
    configured = fit.estimate(shape, cfg, backend, t.micro_batch_size, t.gradient_checkpointing)
    planned: dict[str, Any] = {"backend": backend if runtime.device == "cuda" else f"{backend} (on the planned GPU)",
                               "configured": configured.describe()}
    if distributed.sharding():
        n = distributed.world_size()
        spread = (configured.weights_gib + configured.lora_gib) * (1 - 1 / n)
        planned["sharded"] = (f"loading holds the whole model on each GPU ({configured.weights_gib:.1f} GiB of "
                              f"weights); training then keeps 1/{n} of the weights, LoRA and optimizer state: about "
                              f"{configured.total_gib - spread:.1f} GiB a GPU (the figures above are for one GPU)")
    planned["card_gib"] = round(card, 1)
    if t.auto_fit:
        choice = fit.auto_fit(shape, cfg, backend, card)
        planned["auto_fit"] = (f"micro-batch {choice.micro_batch_size} x {choice.gradient_accumulation_steps} "
                               f"accumulation, checkpointing {fit.checkpointing_name(choice.gradient_checkpointing)}: "
                               f"{choice.estimate.describe()}")
    else:
        fit.refuse_if_it_cannot_fit(configured, card, cfg, backend)
    return planned
