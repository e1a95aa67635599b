"""DPO and ORPO through TRL on a tiny random Llama (CPU): prompt / chosen / rejected rows in the common hub
layouts, rendered with the chat template, trained into a complete run folder."""

import json

import pytest

from medqlora import data, rl
from medqlora.cli import main
from medqlora.config import DatasetSpec, load_config
from medqlora.errors import DataError

from .conftest import tiny_overrides

ROWS = [
    {"prompt": f"Patient {i}: which drug reverses warfarin?", "chosen": "Vitamin K (and prothrombin complex).",
     "rejected": "Aspirin."} for i in range(6)
] + [
    {"chosen": [{"role": "user", "content": f"Case {i}: first-line drug for anaphylaxis?"},
                {"role": "assistant", "content": "Intramuscular adrenaline."}],
     "rejected": [{"role": "user", "content": f"Case {i}: first-line drug for anaphylaxis?"},
                  {"role": "assistant", "content": "An oral antihistamine."}]} for i in range(6)
]


@pytest.fixture
def preference_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_preference_rows_in_text_and_message_layouts(preference_file):
    spec = DatasetSpec(source=str(preference_file), format="preference")
    examples = data.format_rows(spec, data.load_rows(spec))
    assert examples[0].prompt.startswith("Patient 0") and examples[0].rejected == "Aspirin."
    assert examples[6].prompt == "Case 0: first-line drug for anaphylaxis?"
    assert examples[6].response == "Intramuscular adrenaline." and examples[6].rejected == "An oral antihistamine."


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "the same text"),
    ({"prompt": "q", "chosen": "a"}, "rejected"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "no prompt"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "not the assistant's reply"),
])
def test_bad_preference_rows_are_refused_with_the_row(tmp_path, row, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    spec = DatasetSpec(source=str(path), format="preference")
    with pytest.raises(DataError, match="row 1") as err:
        data.format_rows(spec, data.load_rows(spec))
    assert fragment in str(err.value)


def test_preference_rows_are_rendered_with_the_chat_template(tiny_model_dir, preference_file, smol_tokenizer, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, **{
        "training.method": "dpo", "preference.max_prompt_length": "128",
        "data.datasets": f"[{{source: {preference_file}, format: preference}}]"}))
    prepared = rl.prepare_method_rows(cfg, data.collect(cfg.data, cfg.training.seed), smol_tokenizer)
    row = next(r for r in prepared.train if r["prompt"].count("Patient 0"))
    assert row["prompt"].startswith("<|im_start|>system") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["chosen"] == "Vitamin K (and prothrombin complex).<|im_end|>\n"
    assert row["rejected"] == "Aspirin.<|im_end|>\n"


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_method_trains_a_complete_run(tiny_model_dir, preference_file, tmp_path, method):
    argv = ["--mode", "train"]
    for item in tiny_overrides(tiny_model_dir, tmp_path, **{
            "training.method": method, "training.max_steps": "3", "training.learning_rate": "0.001",
            "preference.max_prompt_length": "128",
            "data.datasets": f"[{{source: {preference_file}, format: preference}}]", "output.run_name": method}):
        argv += ["--set", item]
    assert main(argv) == 0
    run = tmp_path / method
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["method"] == method and metrics["metrics"]["steps"] == 3
    logged = [e for e in metrics["log_history"] if "loss" in e]
    assert len(logged) == 3
    assert any(k.startswith("rewards/") or "log_odds" in k or "logps" in k for k in logged[0])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "manifest.json").read_text())["status"] == "trained"
