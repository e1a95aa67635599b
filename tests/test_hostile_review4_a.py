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
