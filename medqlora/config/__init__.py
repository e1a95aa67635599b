"""One typed schema for the kit, shared by the YAML file, ``--set`` overrides and the notebook.

Every problem is reported before anything heavy loads, naming the key, the file and line, and the
closest valid key when a name is misspelled.

Modules: ``base`` (kit files, caps, ``Section``), ``sections`` (model, lora, data, training), ``kit`` (generation,
eval, export, grpo, preference, output and ``KitConfig``), ``yaml_reader`` (the YAML boundary) and ``loading``
(file + preset + ``--set`` -> ``KitConfig``, with the error messages). Every name is importable from here.
"""

from __future__ import annotations

from .base import (  # noqa: F401
    KIT_ROOT, DEFAULT_CONFIG, PRESETS_DIR, ALL_LINEAR, KEY_ALIASES, YAML_MAX_BYTES, YAML_MAX_VALUES, CONFIG_TOO_MANY,
    YAML_MAX_DEPTH, MAX_STEPS, MAX_BATCH, MAX_NEW_TOKENS, MAX_CONTEXT, PATH_SHOWN, has_control_characters, PathText,
    PathValue, Section, hub_id_problem)
from .sections import (  # noqa: F401
    ModelSection, LoraSection, DatasetFormatName, BenchmarkKindName, DatasetSpec, TEMPLATE_FIELDS, template_fields,
    DataSection, TrainingSection, DEFAULT_WARMUP_RATIO, TRAINER_OPTIMIZERS, BITSANDBYTES_OPTIMIZERS,
    trainer_optimizers)
from .kit import (  # noqa: F401
    GenerationSection, BenchmarkSpec, MMLU_MEDICAL, LM_EVAL_TASKS, LmEvalSection, EvalSection, ExportSection,
    RewardWeights, GRPOSection, PreferenceSection, NAME_MAX_BYTES, OutputSection, KitConfig, has_validation)
from .yaml_reader import (  # noqa: F401
    YAMLRefused, KitLoader, load_yaml, read_yaml_file)
from .loading import (  # noqa: F401
    resolve_config_path, load_config, MAX_PROBLEMS, validate, revalidate)
