"""Bad inputs to the methods after SFT (GRPO, DPO, ORPO) and to training.init_adapter: each is refused with one
message that says what to change, or what the kit does is said."""

import json

import pytest

from medqlora import data
from medqlora.config import DatasetSpec, load_config
from medqlora.errors import ConfigError, DataError


def _preference_config(tmp_path, **extra: str):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    values = {"training.method": "dpo", "model.max_seq_length": "256",
              "data.datasets": f"[{{source: {path}, format: preference}}]", **extra}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def _rows(tmp_path, *rows: dict):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(source=str(path), format="preference")
    return data.format_rows(spec, data.load_rows(spec))


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_a_prompt_template_on_preference_rows_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="the preference format uses the row's own prompt"):
        _preference_config(tmp_path, **{"data.datasets.0.prompt_template": "'Q: {question} A:'"})


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_prompt_length_that_leaves_no_room_for_the_replies_is_refused(tmp_path, method):
    with pytest.raises(ConfigError, match=r"preference.max_prompt_length \(256\) leaves 0 of model.max_seq_length "
                                          r"\(256\) tokens.*at most 224"):
        _preference_config(tmp_path, **{"training.method": method})
    with pytest.raises(ConfigError, match=r"max_prompt_length \(100000\) leaves 0"):
        _preference_config(tmp_path, **{"preference.max_prompt_length": "100000"})
    assert _preference_config(tmp_path, **{"preference.max_prompt_length": "128"}).preference.max_prompt_length == 128


def test_orpo_refuses_a_dpo_loss_type(tmp_path):
    with pytest.raises(ConfigError, match="preference.loss_type: ipo is a DPO loss"):
        _preference_config(tmp_path, **{"training.method": "orpo", "preference.loss_type": "ipo",
                                        "preference.max_prompt_length": "128"})


@pytest.mark.parametrize("method", ["grpo", "dpo"])
@pytest.mark.parametrize("setting, fragment", [
    ({"data.val_ratio": "0.2"}, "data.val_ratio 0.2 would be unused"),
    ({"data.val_ratio": "0.2", "training.eval_steps": "2"}, "data.val_ratio 0.2, training.eval_steps 2"),
    ({"data.datasets.0.val_first_n": "2"}, "data.datasets.0.val_first_n"),
])
def test_a_method_without_validation_loss_refuses_a_validation_set(tmp_path, method, setting, fragment):
    extra = {"preference.max_prompt_length": "128"} if method == "dpo" else {
        "data.datasets": "[{source: x.jsonl, format: prompt_answer}]"}
    with pytest.raises(ConfigError, match=f"training.method: {method} computes no validation loss") as err:
        _preference_config(tmp_path, **{"training.method": method, **extra, **setting})
    assert fragment in str(err.value)


def test_preference_replies_that_differ_only_in_spacing_are_the_same_text(tmp_path):
    with pytest.raises(DataError, match="row 1: the chosen and rejected replies are the same text"):
        _rows(tmp_path, {"prompt": "q", "chosen": "Answer 0.", "rejected": "Answer 0. "})


def test_preference_conversations_with_different_questions_are_refused(tmp_path):
    with pytest.raises(DataError, match="row 1: 'chosen' and 'rejected' hold different user questions"):
        _rows(tmp_path, {"chosen": [_user("Aspirin dose?"), _assistant("81 mg.")],
                         "rejected": [_user("Sky colour?"), _assistant("Green.")]})


def test_a_prompt_field_and_a_different_user_turn_are_refused(tmp_path):
    with pytest.raises(DataError, match="field 'prompt' .* and the user turn of 'chosen' .* differ"):
        _rows(tmp_path, {"prompt": "Dose of drug 0?", "chosen": [_user("Tell me a joke"), _assistant("Ten mg.")],
                         "rejected": "Ninety mg."})
    same = _rows(tmp_path, {"prompt": "Dose of drug 0?", "chosen": [_user("Dose of drug 0?"), _assistant("Ten mg.")],
                            "rejected": "Ninety mg."})
    assert same[0].prompt == "Dose of drug 0?"


def test_a_system_turn_of_preference_conversations_is_kept(tmp_path):
    system = {"role": "system", "content": "Always answer in French."}
    [example] = _rows(tmp_path, {"chosen": [system, _user("Dose?"), _assistant("Dix mg.")],
                                 "rejected": [system, _user("Dose?"), _assistant("Cent mg.")]})
    assert example.system == "Always answer in French." and example.prompt == "Dose?"
    other = {"role": "system", "content": "Answer in German."}
    with pytest.raises(DataError, match="different system turns"):
        _rows(tmp_path, {"chosen": [system, _user("Dose?"), _assistant("Dix mg.")],
                         "rejected": [other, _user("Dose?"), _assistant("Cent mg.")]})


def test_preference_roles_are_read_as_the_chat_format_reads_them(tmp_path):
    [example] = _rows(tmp_path, {"chosen": [{"role": "human", "content": "Dose?"}, {"role": "gpt", "content": "Ten."}],
                                 "rejected": [{"role": "human", "content": "Dose?"}, _assistant("Ninety.")]})
    assert example.prompt == "Dose?" and example.rejected == "Ninety."
    with pytest.raises(DataError, match=r"field 'chosen\[0\]' has role 'doctor'; expected system, user or assistant"):
        _rows(tmp_path, {"chosen": [{"role": "doctor", "content": "Dose?"}, _assistant("Ten.")], "rejected": "x"})


def test_the_plan_names_the_preference_method_and_its_settings(tmp_path):
    from medqlora.plan import method_text

    cfg = _preference_config(tmp_path, **{"preference.max_prompt_length": "128", "preference.loss_type": "ipo"})
    assert method_text(cfg) == "dpo (beta 0.1, loss_type ipo; prompts kept to 128 tokens)"
    orpo = _preference_config(tmp_path, **{"training.method": "orpo", "preference.max_prompt_length": "128"})
    assert method_text(orpo) == "orpo (beta 0.1; prompts kept to 128 tokens)"


# ---------------------------------------------------------------- training.init_adapter


def test_an_empty_init_adapter_is_refused():
    with pytest.raises(ConfigError, match="training.init_adapter.*is empty: name a run folder"):
        load_config(None, ["training.init_adapter=''"])


def test_init_adapter_messages_name_the_setting_not_adapter_flag(tmp_path):
    from medqlora import adapters
    from medqlora.errors import MedQLoRAError, ModelError
    from medqlora.runs import latest_run_with_adapter

    with pytest.raises(MedQLoRAError, match="or set training.init_adapter to a run folder") as err:
        latest_run_with_adapter(tmp_path, "training.init_adapter")
    assert "--adapter" not in str(err.value)
    weights = make_adapter(tmp_path / "a", "base") / "adapter_model.safetensors"
    with pytest.raises(ModelError, match=r"training.init_adapter \S+ is a file .* training.init_adapter=") as err:
        adapters.locate(str(weights), "training.init_adapter")
    assert "--adapter" not in str(err.value)


def test_an_adapter_with_a_nan_weight_is_refused_without_a_model(tmp_path):
    from medqlora import adapters
    from medqlora.errors import ModelError

    folder = make_adapter(tmp_path / "a", "base")
    adapters.check_finite(folder)
    make_adapter(folder, "base", nan=True)
    with pytest.raises(ModelError, match="holds NaN or infinite weights"):
        adapters.check_finite(folder)


def test_the_adapters_own_lora_settings_replace_the_lora_section():
    from medqlora.adapter_runs import adapter_lora
    from medqlora.config import LoraSection

    lora = LoraSection(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj"])
    own = adapter_lora({"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj"]},
                       lora)
    assert (own.r, own.alpha, own.dropout, own.target_modules) == (16, 32, 0.05, ["q_proj", "v_proj"])
    regex = adapter_lora({"r": 4, "lora_alpha": 8, "target_modules": ".*proj"}, lora)
    assert regex.r == 4 and regex.target_modules == lora.target_modules


def test_dry_run_finds_and_checks_the_init_adapter_as_the_run_does(tiny_model_dir, tmp_path, capsys):
    from .conftest import kit_argv, run_cli

    modules = ("q_proj", "k_proj", "v_proj", "o_proj")
    folder = make_adapter(tmp_path / "a", str(tiny_model_dir), r=4, modules=modules)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                    **{"training.init_adapter": str(folder), "lora.r": "8"})
    done = run_cli(capsys, argv)
    assert done.code == 0, done.err[-2000:]
    assert "with its own LoRA settings, not lora: (lora.r 8 -> 4" in done.err
    assert json.loads(done.out)["lora"].startswith("r=4 alpha=8 ")
    make_adapter(folder, str(tiny_model_dir), r=4, modules=modules, nan=True)
    done = run_cli(capsys, argv)
    assert done.code == 2 and "holds NaN or infinite weights" in done.err
    empty = kit_argv(tiny_model_dir, tmp_path / "none", "--mode", "train", "--dry-run",
                     **{"training.init_adapter": "latest"})
    done = run_cli(capsys, empty)
    assert done.code == 2 and "set training.init_adapter to a run folder" in done.err


def test_a_run_from_an_init_adapter_records_the_adapters_lora_settings(tiny_model_dir, tmp_path, capsys):
    from .conftest import kit_argv, only_run, run_cli

    folder = make_adapter(tmp_path / "a", str(tiny_model_dir), r=4, modules=("q_proj", "v_proj"))
    done = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **{
        "training.init_adapter": str(folder), "lora.r": "8", "training.max_steps": "1"}))
    assert done.code == 0, done.err[-2000:]
    run = only_run(tmp_path / "out")
    saved = load_config(run / "config.yaml")
    assert (saved.lora.r, saved.lora.alpha, saved.lora.target_modules) == (4, 8, ["q_proj", "v_proj"])
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4


def make_adapter(folder, base: str, r: int = 4, modules=("q_proj", "v_proj"), nan: bool = False):
    """A LoRA adapter for the tiny model of conftest (hidden 64, 2 key/value heads of 16, 2 layers)."""
    import torch
    from safetensors.torch import save_file

    shapes = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64)}
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(2):
        for module in modules:
            n_in, n_out = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.zeros(r, n_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(n_out, r)
    if nan:
        tensors[next(iter(tensors))][0, 0] = float("nan")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(modules),
         "base_model_name_or_path": base}))
    return folder


def test_the_rows_own_system_turn_prompts_the_preference_pair(tmp_path, smol_tokenizer):
    from medqlora import rl

    system = {"role": "system", "content": "Always answer in French."}
    path = tmp_path / "system.jsonl"
    path.write_text(json.dumps({"chosen": [system, _user("Dose?"), _assistant("Dix mg.")],
                                "rejected": [system, _user("Dose?"), _assistant("Cent mg.")]}) + "\n")
    cfg = load_config(None, ["training.method=dpo", "preference.max_prompt_length=128",
                             f"data.datasets=[{{source: {path}, format: preference}}]"])
    [row] = rl.prepare_method_rows(cfg, data.collect(cfg.data, cfg.training.seed), smol_tokenizer).train
    assert row["prompt"].startswith("<|im_start|>system\nAlways answer in French.<|im_end|>"), row["prompt"]
    assert cfg.data.system_prompt not in row["prompt"]
