"""GRPO: TRL's GRPOTrainer (Unsloth's patched one on NVIDIA GPUs) with the verifiable rewards of rewards.py, the
format it rewards, its arguments, and what it logs: each reward's zero-variance share, the time spent generating,
a sample of completions with their rewards (grpo_samples.jsonl) and the rewards' first and last means."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from . import rewards
from .backends import Runtime
from .config import KitConfig, load_config
from .data import PreparedData
from .distributed import is_main
from .errors import ConfigError, MedQLoRAError
from .messages import log, say
from .run_files import Files
from .runs import RunDir
from .secrets import printable
from .trainer_args import common_args, one_gpu

ANSWER_FORMAT_ROWS = ("multiple_choice", "pubmedqa")


def format_style(cfg: KitConfig, depth: int = 0) -> str | None:
    """The reasoning format GRPO rewards: grpo.format_style, or (auto) the cot_style of the medical_o1 data this
    run trained on, else the reasoning format its init_adapter learnt (learnt_style); else the plain answer format
    ('C. ...') where the rows have options; none, or auto on prompt_answer rows alone: None."""
    chosen = cfg.grpo.format_style
    if chosen != "auto":
        return None if chosen == "none" else chosen
    for spec in cfg.data.datasets:
        if spec.format == "medical_o1":
            return spec.cot_style
    learnt = learnt_style(Path(cfg.training.init_adapter), depth) if cfg.training.init_adapter else None
    if learnt is not None:
        return learnt
    # the answer format is a reply opening with one of the item's options: prompt_answer rows have none
    return "answer" if answer_format_applies(cfg) else None


def learnt_style(adapter: Path, depth: int = 0) -> str | None:
    """The reasoning format (huatuo, tags) an adapter learnt, read from the config.yaml of its run (the run folder
    holding the adapter, or one of its checkpoints or exports): its medical_o1 data's cot_style, the
    format a GRPO run rewarded, or, in turn, what its own init_adapter learnt. None when it learnt none, or when
    the adapter is not the kit's (that is said: auto cannot know its format)."""
    from .adapter_origin import in_run_subfolder

    folders = [adapter.parent] + ([adapter.parent.parent] if in_run_subfolder(adapter) else [])
    run = next((f for f in folders if (f / Files.CONFIG).is_file() and not (f / Files.CONFIG).is_symlink()), None)
    if run is None:
        if depth == 0:
            say(f"warning: grpo.format_style auto: training.init_adapter {printable(adapter)} is not in a run folder "
                "of this kit, so the reasoning format it learnt is unknown and is not rewarded; if it learnt one, set "
                "grpo.format_style to it (huatuo or tags)")
        return None
    try:
        earlier = load_config(run / Files.CONFIG)
    except MedQLoRAError:
        return None
    if earlier.training.method != "grpo":  # only a GRPO run rewarded its grpo.format_style
        earlier = earlier.model_copy(update={"grpo": earlier.grpo.model_copy(update={"format_style": "auto"})})
    style = format_style(earlier, depth + 1) if depth < 8 else None
    return style if style not in (None, "answer") else None


def answer_format_applies(cfg: KitConfig) -> bool:
    """Whether the run trains on rows with options (multiple choice, PubMedQA) the answer format can be read on."""
    return any(spec.format in ANSWER_FORMAT_ROWS for spec in cfg.data.datasets if spec.use_for == "train")


def check_vllm(cfg: KitConfig, runtime: Runtime) -> None:
    """grpo.use_vllm on a GRPO run needs the unsloth backend and vllm (checked before a model loads, and by
    --dry-run)."""
    if cfg.training.method != "grpo" or not cfg.grpo.use_vllm:
        return
    import importlib.util

    vllm = importlib.util.find_spec("vllm") is not None
    if runtime.backend != "unsloth" or not vllm:
        raise ConfigError("grpo.use_vllm: generating with vLLM needs an NVIDIA GPU with Unsloth and vllm installed "
                          f"(here: {runtime.describe()}, vllm {'installed' if vllm else 'not installed'}). "
                          "Set grpo.use_vllm: false to generate with the model itself.")


def grpo_config(cfg: KitConfig, runtime: Runtime, run: RunDir) -> Any:
    from trl import GRPOConfig

    g = cfg.grpo
    extra: dict[str, Any] = {}
    if g.use_vllm:
        check_vllm(cfg, runtime)
        extra.update(use_vllm=True, vllm_mode="colocate")
    common = common_args(cfg, runtime, run)
    return one_gpu(GRPOConfig(
        **common,
        # TRL counts micro-steps here: one generation batch serves steps_per_generation optimizer steps
        steps_per_generation=g.steps_per_generation * common["gradient_accumulation_steps"],
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


def chosen_rewards(cfg: KitConfig, kinds: set[str]) -> tuple[list[rewards.Reward], list[float], str | None]:
    """The reward functions, their weights and the format style of a GRPO run on rows of ``kinds``."""
    style = format_style(cfg)
    funcs, weights = rewards.build(cfg.grpo, kinds, style)
    return funcs, weights, style


def idle_rewards(cfg: KitConfig, kinds: set[str]) -> dict[str, str]:
    """The answer rewards the config sets above 0 whose rows the training data does not hold (``kinds``: the row
    kinds it does): left out of the run, said in the plan and run.log, so that a weight the user set is not dropped
    without a word."""
    from .method_rows import KIND_OF_FORMAT
    from .methods import REWARD_OF_FORMAT

    weights = cfg.grpo.rewards
    return {name: f"{getattr(weights, name)}: left out, the training data holds no {fmt} rows"
            for fmt, name in REWARD_OF_FORMAT.items()
            if name in weights.model_fields_set and getattr(weights, name) > 0 and KIND_OF_FORMAT[fmt] not in kinds}


def reward_plan(cfg: KitConfig) -> dict[str, Any]:
    """What a GRPO run optimises, for --dry-run: its rewards and their weights (chosen_rewards, on the kinds of
    rows its training datasets hold), the format it rewards and how it samples."""
    from .method_rows import KIND_OF_FORMAT

    kinds = {KIND_OF_FORMAT[s.format] for s in cfg.data.datasets if s.use_for == "train" and s.format in KIND_OF_FORMAT}
    funcs, weights, style = chosen_rewards(cfg, kinds)
    g = cfg.grpo
    idle = idle_rewards(cfg, kinds)
    return {"rewards": {f.__name__: weight for f, weight in zip(funcs, weights, strict=True)},
            **({"rewards_never_scoring": idle} if idle else {}),
            "format_style": (style or "none") + (" (grpo.format_style auto)" if g.format_style == "auto" else ""),
            "num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
            "overlong_buffer": g.overlong_shown()}


def grpo_trainer(cfg: KitConfig, runtime: Runtime, model: Any, tokenizer: Any, prepared: PreparedData,
                 run: RunDir) -> Any:
    """TRL's GRPOTrainer (Unsloth's patched class when Unsloth was imported first, as backends.activate does on
    NVIDIA GPUs) with the run's rewards, their zero-variance share and a sample of completions logged."""
    funcs, weights, style = chosen_rewards(cfg, {r["kind"] for r in prepared.train})
    args = grpo_config(cfg, runtime, run)
    args.reward_weights = weights
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("GRPO rewards: %s (format style: %s; overlong buffer: %s tokens)",
             dict(zip([f.__name__ for f in funcs], weights)), style, cfg.grpo.overlong_shown())
    for name, why in idle_rewards(cfg, {r["kind"] for r in prepared.train}).items():
        log.info("GRPO reward %s (%s)", name, why)
    if style is None and cfg.grpo.format_style == "auto":
        log.info("GRPO: no format reward: prompt_answer rows have no options for a reply to open with "
                 "(grpo.format_style: huatuo or tags rewards a reasoning format)")
    return _grpo_class()(model=model, reward_funcs=funcs, args=args, train_dataset=_grpo_dataset(prepared.train),
                         processing_class=tokenizer, run=run, samples_every=cfg.grpo.samples_every,
                         samples_count=cfg.grpo.samples_count)


class _GenerationStats:
    """The time and tokens GRPO spends generating, logged beside the loss (generation/share_of_time,
    generation/tokens_per_second) and kept in generation_totals. Mixed into the GRPO trainer class, whose
    __init__ sets the counters."""

    def _generate(self, prompts: list) -> Any:
        began = time.perf_counter()
        result = super()._generate(prompts)
        self._generation_s += time.perf_counter() - began
        completion_ids = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        if isinstance(completion_ids, list):
            self._generated_tokens += sum(len(ids) for ids in completion_ids)
        return result

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


def _grpo_class() -> type:
    # On the unsloth backend, backends.activate imported Unsloth before TRL, so this import returns Unsloth's
    # patched GRPOTrainer (its generation, chunked log-probabilities and, with grpo.use_vllm, vLLM through
    # fast_inference). The overridden methods (_calculate_rewards below; _generate and log in _GenerationStats)
    # keep TRL's names and signatures, which Unsloth's patched source keeps too. GPU RUN PENDING: not yet run on
    # NVIDIA + Unsloth
    # (bench/grpo_gpu.sh, stages smollm2-grpo and 8b-unsloth-*).
    from trl import GRPOTrainer

    class KitGRPOTrainer(_GenerationStats, GRPOTrainer):
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
            self.kit_run.append_text(Files.GRPO_SAMPLES, "".join(lines))

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


def never_learned(cfg: KitConfig, history: list[dict[str, Any]]) -> str | None:
    """Why the adapter never moved, when every logged step had a gradient norm of 0 (None otherwise): with
    grpo.mask_truncated_completions, every completion running into grpo.max_completion_length is masked out."""
    norms = [e["grad_norm"] for e in history if isinstance(e.get("grad_norm"), (int, float))]
    if not norms or any(norm != 0 for norm in norms):
        return None
    clipped = [e["completions/clipped_ratio"] for e in history if isinstance(e.get("completions/clipped_ratio"),
                                                                             (int, float))]
    if cfg.training.method == "grpo" and cfg.grpo.mask_truncated_completions and clipped and min(clipped) >= 1:
        return (f"the adapter never changed: every completion ran into grpo.max_completion_length "
                f"({cfg.grpo.max_completion_length} tokens; completions/clipped_ratio 1 at every step) and "
                "grpo.mask_truncated_completions: true leaves them all out of the loss. Raise "
                "grpo.max_completion_length, or set grpo.mask_truncated_completions: false.")
    equal = [e["frac_reward_zero_std"] for e in history if isinstance(e.get("frac_reward_zero_std"), (int, float))]
    if cfg.training.method == "grpo" and equal and min(equal) >= 1:
        return (f"the adapter never changed: at each of the {len(norms)} logged steps every group of completions got "
                "equal rewards (frac_reward_zero_std 1), so there was nothing to prefer. Check that the rewards can "
                "tell replies apart on this data (grpo_samples.jsonl shows them), or start from a model that answers "
                "some items right (an SFT stage first).")
    return (f"the adapter never changed: the gradient norm was 0 at each of the {len(norms)} logged steps "
            "(nothing in the batches reached the loss). Check the data and the method's settings before using it.")


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
