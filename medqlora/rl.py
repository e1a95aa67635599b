"""The methods after SFT: GRPO (TRL's GRPOTrainer, Unsloth's patched one on NVIDIA GPUs) with the verifiable
rewards of rewards.py, and DPO / ORPO (TRL) on preference rows.

The recipe runs them as it runs SFT (run folder, manifest, leakage guard, evaluation before and after,
samples, export, resume): ``prepare`` replaces the SFT tokenization and ``train_method`` the SFTTrainer.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from . import data as kit_data
from . import report, rewards
from .backends import Runtime
from .config import KitConfig, load_config
from .data import Collected, Example, PreparedData, leakage, length_stats, tokenize_example
from .distributed import barrier, is_main, world_size
from .errors import ConfigError, DataError, MedQLoRAError
from .memory import snapshot
from .messages import log
from .optimizers import optimizer_name
from .runs import RunDir
from .tracking import add_tracking
from .train import TrainResult
from .trainer_run import run_trainer, save_adapter, stop_on_non_finite

SAMPLES_FILE = "grpo_samples.jsonl"
CURVES_FILE = "reward_curves.png"
KIND_OF_FORMAT = {"multiple_choice": rewards.MULTIPLE_CHOICE, "pubmedqa": rewards.PUBMEDQA,
                  "prompt_answer": rewards.ANSWER}


# ---------------------------------------------------------------- rows


def target(example: Example, fmt: str) -> dict[str, Any]:
    """What a reward checks for one example: its kind, gold answer, choices and option texts."""
    kind = KIND_OF_FORMAT[fmt]
    if kind == rewards.MULTIPLE_CHOICE:
        options = {name.removeprefix("options."): text for name, text in example.texts if name.startswith("options.")}
        gold = example.response.split(".", 1)[0]  # "C. the option's text", as the evaluation reads it
        return {"kind": kind, "answer": gold, "choices": sorted(options), "option_texts": json.dumps(options)}
    if kind == rewards.PUBMEDQA:
        return {"kind": kind, "answer": example.answer_texts[0][1], "choices": ["yes", "no", "maybe"],
                "option_texts": "{}"}
    return {"kind": kind, "answer": example.response, "choices": [], "option_texts": "{}"}


def prompt_text(tokenizer: Any, ids: list[int]) -> str:
    """The prompt as text for TRL, which tokenizes it again: without the BOS token when the tokenizer adds one
    itself (the chat template writes it too, and a prompt would otherwise start with two)."""
    text = tokenizer.decode(ids)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


def prepare_method_rows(cfg: KitConfig, collected: list[Collected], tokenizer: Any) -> PreparedData:
    """The RL or preference rows of a run: rendered with the model's chat template and the system prompt as in
    SFT and evaluation, fitted to max_seq_length (a GRPO prompt keeps room for grpo.max_completion_length)."""
    method = cfg.training.method
    room = cfg.model.max_seq_length - (cfg.grpo.max_completion_length if method == "grpo" else 0)
    end = kit_data.turn_end(tokenizer)
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for c in collected:
        lengths, outcomes = [], {}
        for ex in c.examples:
            if ex.role == "validation":
                continue
            prompt_only = Example(prompt=ex.prompt, response="", context=ex.context, prompt_template=ex.prompt_template)
            system = getattr(ex, "system", "") or kit_data.system_prompt_of(cfg.data, c.spec)  # a row's own first
            fitted, outcome = tokenize_example(prompt_only, tokenizer, system,
                                               room if method == "grpo" else cfg.preference.max_prompt_length,
                                               cfg.data.too_long, "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if fitted is None:
                continue
            ids = fitted["input_ids"]
            record = {"input_ids": ids, "prompt": prompt_text(tokenizer, ids), "source": c.name, "uid": ex.uid,
                      "role": ex.role, "question_hash": leakage.question_hash(ex.question), "example": ex,
                      "format": c.spec.format, "cot_style": c.spec.cot_style}
            if method == "grpo":
                record.update(target(ex, c.spec.format))
                lengths.append(len(ids))
            else:
                record.update(chosen=ex.response + end, rejected=getattr(ex, "rejected", "") + end)
                chosen_ids = tokenizer(record["chosen"], add_special_tokens=False)["input_ids"]
                record["input_ids"] = ids + chosen_ids  # the longest row the memory preflight plans for
                lengths.append(len(record["input_ids"]))
            records.append(record)
        stats[c.name] = {**c.info, "prompt_tokens" if method == "grpo" else "tokens": length_stats(lengths, room),
                         "fitting": outcomes}
    if not records:
        raise DataError(f"No {method} rows fit model.max_seq_length={cfg.model.max_seq_length}"
                        + (f" beside grpo.max_completion_length={cfg.grpo.max_completion_length}" if method == "grpo"
                           else "") + ". Raise model.max_seq_length, or set data.too_long: truncate.")
    import random

    random.Random(cfg.training.seed).shuffle(records)
    stats["total"] = {"train": len(records), "validation": 0, "warnings": [],
                      "train_tokens": sum(len(r["input_ids"]) for r in records), "method": method}
    return PreparedData(train=records, validation=[], stats=stats,
                        fingerprints={c.name: kit_data.fingerprint(c.spec) for c in collected})


def format_style(cfg: KitConfig) -> str | None:
    """The reasoning format GRPO rewards: grpo.format_style, or (auto) the cot_style of the medical_o1 data this
    run, or the run of its init_adapter, trained on; else the plain answer format ('C. ...'); none: None."""
    chosen = cfg.grpo.format_style
    if chosen != "auto":
        return None if chosen == "none" else chosen
    for spec in cfg.data.datasets:
        if spec.format == "medical_o1":
            return spec.cot_style
    if cfg.training.init_adapter:
        saved = Path(cfg.training.init_adapter).parent / "config.yaml"
        if saved.is_file():
            try:
                earlier = load_config(saved)
            except MedQLoRAError:
                return None
            for spec in earlier.data.datasets:
                if spec.format == "medical_o1":
                    return spec.cot_style
    return "answer"


# ---------------------------------------------------------------- training


def train_method(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData, run: RunDir,
                 resume_from: Path | None) -> TrainResult:
    if cfg.training.method == "grpo":
        trainer = grpo_trainer(cfg, runtime, model, tokenizer, prepared, run)
    else:
        trainer = preference_trainer(cfg, runtime, model, tokenizer, prepared, run)
    speed = add_tracking(trainer, cfg, run)
    trainer.add_callback(stop_on_non_finite(cfg))
    started = time.perf_counter()
    output = run_trainer(trainer, cfg, model, tokenizer, run, resume_from, speed)
    metrics = dict(output.metrics)
    metrics["method"] = cfg.training.method
    metrics["train_wall_s"] = round(time.perf_counter() - started, 2)
    metrics["steps"] = trainer.state.global_step
    metrics["seconds_per_step"] = round(metrics["train_wall_s"] / max(1, metrics["steps"]), 2)
    metrics["tokens_seen"] = trainer.state.num_input_tokens_seen
    metrics["first_step_unix"] = speed.first_step_unix
    metrics["train_examples"] = len(prepared.train)
    metrics["resumed_from_step"] = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else None
    history = trainer.state.log_history
    if cfg.training.method == "grpo":
        metrics["rewards"] = reward_summary(history)
        metrics["generation"] = getattr(trainer, "generation_totals", {})
    if is_main():
        report.plot_reward_curves(history, run.path / CURVES_FILE)
    memory = snapshot()
    if is_main():
        save_adapter(model, tokenizer, run)
        shutil.rmtree(run.path / "checkpoints", ignore_errors=True)
    barrier()
    return TrainResult(metrics=metrics, log_history=history, memory_after_train=memory)


def _common_args(cfg: KitConfig, runtime: Runtime, run: RunDir) -> dict[str, Any]:
    """The Trainer settings every method shares with SFT (train.sft_config)."""
    t = cfg.training
    return dict(
        output_dir=str(run.path / "checkpoints"),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler(),
        warmup_steps=t.warmup(),
        optim=optimizer_name(cfg, runtime),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.keep_checkpoints,
        eval_strategy="no",
        bf16=runtime.dtype == "bf16",
        fp16=runtime.dtype == "fp16",
        use_cpu=runtime.device == "cpu",
        gradient_checkpointing=False,  # already set up on the model by the backend
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
        run_name=run.path.name,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _one_gpu(config: Any, runtime: Runtime) -> Any:
    if runtime.device == "cuda" and world_size() == 1:
        _ = config.device  # as in train.sft_config: one process trains on one GPU with the configured batch
        config._n_gpu = 1
    return config


def grpo_config(cfg: KitConfig, runtime: Runtime, run: RunDir) -> Any:
    from trl import GRPOConfig

    g = cfg.grpo
    extra: dict[str, Any] = {}
    if g.use_vllm:
        import importlib.util

        if runtime.backend != "unsloth" or importlib.util.find_spec("vllm") is None:
            raise ConfigError("grpo.use_vllm: generating with vLLM needs an NVIDIA GPU with Unsloth and vllm installed "
                              f"(here: {runtime.describe()}, vllm {'installed' if importlib.util.find_spec('vllm') else 'not installed'}). "
                              "Set grpo.use_vllm: false to generate with the model itself.")
        extra.update(use_vllm=True, vllm_mode="colocate")
    return _one_gpu(GRPOConfig(
        **_common_args(cfg, runtime, run),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        beta=g.beta,
        temperature=g.temperature,
        top_p=g.top_p,
        loss_type=g.loss_type,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        scale_rewards=g.scale_rewards,
        num_iterations=g.num_iterations,
        mask_truncated_completions=g.mask_truncated_completions,
        shuffle_dataset=True,
        log_completions=False,  # the kit writes its own sample (grpo.samples_every) into the run folder
        **extra,
    ), runtime)


def _grpo_dataset(records: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    keys = ("prompt", "kind", "answer", "choices", "option_texts", "uid")
    return Dataset.from_dict({k: [r[k] if k != "uid" else (r[k] or "") for r in records] for k in keys})


def grpo_trainer(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData,
                 run: RunDir) -> Any:
    """TRL's GRPOTrainer (Unsloth's patched class when Unsloth was imported first, as backends.activate does on
    NVIDIA GPUs) with the run's rewards, their zero-variance share and a sample of completions logged."""
    kinds = {r["kind"] for r in prepared.train}
    style = format_style(cfg)
    funcs, weights = rewards.build(cfg.grpo, kinds, style)
    args = grpo_config(cfg, runtime, run)
    args.reward_weights = weights
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("GRPO rewards: %s (format style: %s)", dict(zip([f.__name__ for f in funcs], weights)), style)
    return _grpo_class()(model=model, reward_funcs=funcs, args=args, train_dataset=_grpo_dataset(prepared.train),
                         processing_class=tokenizer, run=run, samples_every=cfg.grpo.samples_every,
                         samples_count=cfg.grpo.samples_count)


def _grpo_class() -> type:
    # On the unsloth backend, backends.activate imported Unsloth before TRL, so this import returns Unsloth's
    # patched GRPOTrainer (its generation, chunked log-probabilities and, with grpo.use_vllm, vLLM through
    # fast_inference). The overridden methods below (_generate, _calculate_rewards, log) keep TRL's names and
    # signatures, which Unsloth's patched source keeps too. GPU RUN PENDING: not yet run on NVIDIA + Unsloth
    # (bench/grpo_gpu.sh, stages smollm2-grpo and 8b-unsloth-*).
    from trl import GRPOTrainer

    class KitGRPOTrainer(GRPOTrainer):
        """Adds, per reward function, the share of groups whose completions all scored the same (no signal);
        the time and tokens spent generating; and completions with their rewards every samples_every steps."""

        def __init__(self, *args: Any, run: RunDir, samples_every: int, samples_count: int, **kwargs: Any) -> None:
            self.kit_run, self.samples_every, self.samples_count = run, samples_every, samples_count
            self._written_at: int | None = None
            self._generation_s = 0.0
            self._generated_tokens = 0
            self._since = {"t": time.perf_counter(), "gen": 0.0, "tokens": 0}
            self.generation_totals: dict[str, Any] = {}
            super().__init__(*args, **kwargs)

        def _generate(self, prompts: list) -> Any:
            began = time.perf_counter()
            result = super()._generate(prompts)
            self._generation_s += time.perf_counter() - began
            completion_ids = result[1] if isinstance(result, tuple) and len(result) > 1 else None
            if isinstance(completion_ids, list):
                self._generated_tokens += sum(len(ids) for ids in completion_ids)
            return result

        def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            mode = "train" if self.model.training else "eval"
            for name, fraction in _zero_std_fractions(per_func, self.num_generations, self.reward_func_names):
                self._metrics[mode][f"rewards/{name}/zero_std_frac"].append(fraction)
            if mode == "train" and is_main():
                self._write_samples(inputs, completions, per_func)
            return per_func

        def _write_samples(self, inputs: Any, completions: Any, per_func: Any) -> None:
            step = self.state.global_step
            if step % self.samples_every or self._written_at == step:
                return
            self._written_at = step
            lines = _sample_lines(step, inputs, completions, per_func, self.reward_func_names, self.samples_count)
            with open(self.kit_run.inside(SAMPLES_FILE), "a", encoding="utf-8") as handle:
                handle.writelines(lines)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            now = time.perf_counter()
            wall = now - self._since["t"]
            gen = self._generation_s - self._since["gen"]
            tokens = self._generated_tokens - self._since["tokens"]
            if "loss" in logs and wall > 0:
                logs["generation/share_of_time"] = round(gen / wall, 4)
                logs["generation/tokens_per_second"] = round(tokens / max(gen, 1e-9), 1)
                self._since = {"t": now, "gen": self._generation_s, "tokens": self._generated_tokens}
            self.generation_totals = {"seconds": round(self._generation_s, 2), "tokens": self._generated_tokens,
                                      "tokens_per_second": round(self._generated_tokens / max(self._generation_s, 1e-9),
                                                                 1)}
            super().log(logs, start_time)

    return KitGRPOTrainer


def _zero_std_fractions(per_func: Any, group_size: int, names: list[str]) -> list[tuple[str, float]]:
    """Per reward function, the share of groups whose completions all scored the same (no learning signal)."""
    import torch

    groups = per_func.view(-1, group_size, per_func.shape[1])
    fractions = []
    for i, name in enumerate(names):
        values = groups[:, :, i]
        scored = ~torch.isnan(values).all(dim=1)
        if scored.any():
            spread = torch.nan_to_num(values[scored], nan=0.0)
            flat = (spread.max(dim=1).values - spread.min(dim=1).values) == 0
            fractions.append((name, flat.float().mean().item()))
    return fractions


def _sample_lines(step: int, inputs: Any, completions: Any, per_func: Any, names: list[str], count: int) -> list[str]:
    """grpo_samples.jsonl lines: the first ``count`` completions of a step, with their rewards."""
    lines = []
    for i in range(min(count, len(completions))):
        reply = completions[i] if isinstance(completions[i], str) else json.dumps(completions[i])
        lines.append(json.dumps({
            "step": step, "uid": inputs[i].get("uid"), "kind": inputs[i].get("kind"),
            "answer": inputs[i].get("answer"), "completion": reply,
            "rewards": {name: (None if math.isnan(v) else round(v, 4)) for name, v in
                        zip(names, per_func[i].tolist(), strict=True)},
            "prompt_tail": inputs[i]["prompt"][-300:]}, ensure_ascii=False) + "\n")
    return lines


def reward_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Each logged reward and KL: the mean of the first and the last fifth of the logged steps."""
    keys = sorted({k for e in history for k in e if k.startswith("rewards/") and k.endswith("/mean")}
                  | {k for e in history for k in ("reward", "kl", "completions/mean_length",
                                                    "frac_reward_zero_std") if k in e})
    summary = {}
    for key in keys:
        values = [e[key] for e in history if key in e and "train_runtime" not in e and e[key] is not None
                  and not (isinstance(e[key], float) and math.isnan(e[key]))]
        if not values:
            continue
        k = max(1, len(values) // 5)
        summary[key] = {"first": round(sum(values[:k]) / k, 4), "last": round(sum(values[-k:]) / k, 4),
                        "logged": len(values)}
    return summary


# ---------------------------------------------------------------- DPO / ORPO


def preference_trainer(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData,
                       run: RunDir) -> Any:
    """TRL's DPOTrainer or ORPOTrainer (trl.experimental in TRL 1.x) on prompt / chosen / rejected text, the
    prompt already rendered with the chat template and the replies ending with the end-of-turn text. DPO's
    reference is the model with the adapter switched off (or the init_adapter's copy), as TRL does for PEFT."""
    from datasets import Dataset

    p = cfg.preference
    rows = Dataset.from_dict({k: [r[k] for r in prepared.train] for k in ("prompt", "chosen", "rejected")})
    common = _common_args(cfg, runtime, run)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.training.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = _one_gpu(DPOConfig(**common, beta=p.beta, loss_type=[p.loss_type], max_length=cfg.model.max_seq_length,
                                  truncation_mode="keep_start"), runtime)
        return DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = _one_gpu(ORPOConfig(**common, beta=p.beta, max_length=cfg.model.max_seq_length,
                               max_completion_length=max(1, cfg.model.max_seq_length - p.max_prompt_length)), runtime)
    return ORPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
