"""The options the published setups need: any Trainer optimizer, warm-up steps, a dataset's own prompt
(with or without a chat template), validation by position, validation loss during training, and W&B's
offline mode without a key."""

import json
from types import SimpleNamespace

import pytest

from medqlora import backends, data, evaluate, plan, report, tracking
from medqlora.cli import main
from medqlora.config import BITSANDBYTES_OPTIMIZERS, TRAINER_OPTIMIZERS, load_config
from medqlora.errors import ConfigError, DataError
from medqlora.optimizers import check_optimizer
from medqlora.train import sft_config

from .conftest import kit_argv, tiny_overrides

MINIMAL = "data:\n  datasets:\n    - source: data/pubmedqa/ori_pqal.json\n      format: pubmedqa\n"
CPU = backends.Runtime("hf", "cpu", "fp32", "test")
GPU = backends.Runtime("unsloth", "cuda", "bf16", "test")


def config(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return load_config(path)


def refused(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, text)
    return str(err.value)


# ---------------------------------------------------------------- optimizer


def test_the_kit_knows_every_optimizer_name_of_the_installed_transformers():
    from transformers.training_args import OptimizerNames

    assert TRAINER_OPTIMIZERS == {o.value for o in OptimizerNames}
    assert BITSANDBYTES_OPTIMIZERS <= TRAINER_OPTIMIZERS


@pytest.mark.parametrize("name", ["paged_adamw_32bit", "adamw_torch_fused", "adafactor", "lion_8bit", "sgd"])
def test_any_trainer_optimizer_is_accepted_and_reaches_the_trainer(name, tmp_path):
    cfg = config(tmp_path, MINIMAL + f"training:\n  optimizer: {name}\n")
    expected = "adamw_torch" if name in BITSANDBYTES_OPTIMIZERS else name  # bitsandbytes needs CUDA
    assert sft_config(cfg, CPU, SimpleNamespace(path=tmp_path)).optim == expected


def test_an_unknown_optimizer_is_refused_with_the_closest_names(tmp_path):
    message = refused(tmp_path, MINIMAL + "training:\n  optimizer: paged_adamw_32\n")
    assert "'paged_adamw_32' is not an optimizer transformers' Trainer accepts" in message
    assert "paged_adamw_32bit" in message and "cfg.yaml:6" in message


@pytest.mark.slow
def test_a_bitsandbytes_optimizer_without_bitsandbytes_is_refused_on_a_gpu_and_named_on_a_cpu(monkeypatch, tmp_path,
                                                                                              capsys):
    monkeypatch.setattr("medqlora.optimizers.bitsandbytes_importable", lambda: False)
    cfg = config(tmp_path, MINIMAL + "training:\n  optimizer: paged_adamw_32bit\n")
    with pytest.raises(ConfigError, match="bitsandbytes cannot be imported here: pip install bitsandbytes"):
        check_optimizer(cfg, GPU)
    assert check_optimizer(cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"optimizer": "adamw_torch_fused"})}), GPU) == "adamw_torch_fused"
    # the dry run on this CPU says what the run will use, and that bitsandbytes is missing
    assert main(["--dry-run", "--config", str(tmp_path / "cfg.yaml")]) == 0
    shown = json.loads(capsys.readouterr().out)["training"]["optimizer"]
    assert shown.startswith("paged_adamw_32bit needs bitsandbytes and a CUDA GPU: this CPU run trains with adamw_torch")
    assert "bitsandbytes is not installed here" in shown


def test_the_memory_model_counts_each_optimizers_state():
    from medqlora.fit import optimizer_state_bytes

    assert [optimizer_state_bytes(n) for n in ("adamw_8bit", "paged_adamw_32bit", "adamw_torch_fused", "adafactor",
                                               "lion_32bit", "lion_8bit", "sgd")] == [2, 8, 8, 0, 4, 1, 0]


# ---------------------------------------------------------------- warm-up


def test_warmup_steps_or_ratio_never_both(tmp_path):
    assert config(tmp_path, MINIMAL).training.warmup_ratio == 0.03  # neither: the documented default ratio
    cfg = config(tmp_path, MINIMAL + "training:\n  warmup_steps: 25\n")
    assert (cfg.training.warmup_steps, cfg.training.warmup_ratio) == (25, None)
    assert sft_config(cfg, CPU, SimpleNamespace(path=tmp_path)).warmup_steps == 25
    assert load_config(None, ["training.warmup_ratio=0.1"]).training.warmup_text() == "ratio 0.1"
    message = refused(tmp_path, MINIMAL + "training:\n  warmup_steps: 25\n  warmup_ratio: 0.1\n")
    assert "warmup_steps (25) and warmup_ratio (0.1) are both set; keep one" in message
    # a saved run config (both keys written, one null) loads again: --resume and --config <run>/config.yaml
    (tmp_path / "saved.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "saved.yaml").training.warmup_steps == 25


# ---------------------------------------------------------------- prompt templates


@pytest.mark.parametrize("template, fragment", [
    ("Q: {question} {foo}", "unknown placeholder {foo}: the pubmedqa format fills {context}, {question}"),
    ("Context only: {context}", "has no {question} placeholder"),
    ("{question:>20}", "is not a plain name such as {question}"),
    ("{question", "is not a valid template"),
])
def test_a_prompt_template_is_checked_against_its_formats_fields(tmp_path, template, fragment):
    message = refused(tmp_path, MINIMAL + f"      prompt_template: {json.dumps(template)}\n")
    assert fragment in message and "data.datasets.0.prompt_template" in message


def test_chat_template_false_is_a_boolean_not_a_number(tmp_path):
    assert config(tmp_path, MINIMAL + "model:\n  chat_template: false\n").model.chat_template is False
    assert "got a number" in refused(tmp_path, MINIMAL + "model:\n  chat_template: 0\n")


def test_chat_rows_take_no_prompt_template(tmp_path):
    message = refused(tmp_path, "data:\n  datasets:\n    - {source: x.jsonl, format: chat, prompt_template: '{question}'}\n")
    assert "the chat format takes its prompt from the conversation" in message


def test_a_template_writes_the_prompt_and_the_abstract_is_still_what_is_shortened(smol_tokenizer):
    spec = data.DatasetSpec(source="data/pubmedqa/ori_pqal.json", format="pubmedqa", long_answer=False,
                            prompt_template="{{Study}} {context}\nMEDICAL QUESTION: {question}\nANSWER: ")
    example = data.format_rows(spec, data.load_rows(spec))[0]
    question = example.question
    full, _ = data.tokenize_example(example, smol_tokenizer, None, 10**6, "truncate", "")
    text = smol_tokenizer.decode(full["input_ids"])
    assert "<|im_start|>user\n{Study} " in text  # literal braces written once
    assert f"\nMEDICAL QUESTION: {question}\nANSWER: <|im_end|>" in text
    short, outcome = data.tokenize_example(example, smol_tokenizer, None, 120, "truncate", "")
    assert outcome == "context_truncated"
    assert f"MEDICAL QUESTION: {question}\nANSWER: " in smol_tokenizer.decode(short["input_ids"])


def test_without_a_chat_template_the_prompt_is_plain_text(tiny_model_dir, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path) + [
        "model.chat_template=false", "data.system_prompt=null",
        'data.datasets.0.prompt_template="MEDICAL QUESTION: {question}\\nANSWER: "'])  # YAML: quoted
    tokenizer = backends.load_tokenizer(cfg, str(tiny_model_dir))
    prepared = data.prepare(cfg.data, tokenizer, 512, cfg.training.seed)
    record = prepared.train[0]
    text = tokenizer.decode(record["input_ids"])
    example = record["example"]
    bos = tokenizer.bos_token or ""  # the tokenizer's own start token, as a base model was trained with
    assert text == f"{bos}MEDICAL QUESTION: {example.question}\nANSWER: {example.response}{tokenizer.eos_token}"
    prompt_len = record["labels"].index(next(x for x in record["labels"] if x != -100))
    assert tokenizer.decode(record["input_ids"][:prompt_len]) == f"{bos}MEDICAL QUESTION: {example.question}\nANSWER: "
    # the sample queries get the same prompt
    assert data.query_prompt(cfg.data, "Is aspirin useful?") == (None, "MEDICAL QUESTION: Is aspirin useful?\nANSWER: ")


@pytest.mark.slow
def test_a_datasets_own_system_prompt_replaces_the_shared_one(smol_tokenizer, tmp_path):
    cfg = config(tmp_path, MINIMAL + "      max_samples: 4\n      system_prompt: Answer as a pathologist.\n"
                 "    - source: data/pubmedqa/ori_pqal.json\n      format: pubmedqa\n      max_samples: 4\n"
                 "      system_prompt: ''\n")
    prepared = data.prepare(cfg.data, smol_tokenizer, 512, cfg.training.seed)
    texts = {r["source"]: smol_tokenizer.decode(r["input_ids"]) for r in prepared.train}
    assert texts["0:data/pubmedqa/ori_pqal.json"].startswith("<|im_start|>system\nAnswer as a pathologist.")
    assert "pathologist" not in texts["1:data/pubmedqa/ori_pqal.json"]
    assert cfg.data.system_prompt not in texts["1:data/pubmedqa/ori_pqal.json"]  # '': no system prompt of the kit's


def test_the_leakage_guard_sees_the_rendered_prompt(tmp_path):
    """An evaluation question written into a prompt template reaches every prompt: refused."""
    rows = json.loads(open("data/pubmedqa/ori_pqal.json").read())
    test_pmid = sorted(data.pubmedqa_test_ids())[0]
    leaked = rows[test_pmid]["QUESTION"]
    (tmp_path / "o1.json").write_text(json.dumps([{"Question": "What causes gout?", "Complex_CoT": "Urate.",
                                                    "Response": "Uric acid crystals."}]))
    template = "Known case: " + leaked.replace("{", "{{").replace("}", "}}") + "\n{question}"
    cfg = config(tmp_path, f"data:\n  datasets:\n    - source: {tmp_path / 'o1.json'}\n      format: medical_o1\n"
                 f"      prompt_template: {json.dumps(template)}\n")
    with pytest.raises(DataError, match="prompt_template"):
        data.collect(cfg.data, cfg.training.seed)


def test_evaluation_items_use_the_prompt_of_the_training_dataset_of_their_format(tmp_path):
    cfg = config(tmp_path, MINIMAL + "      prompt_template: \"MEDICAL QUESTION: {question}\\nANSWER: \"\n"
                 "      system_prompt: ''\n")
    item = evaluate.load_items(cfg.eval.benchmarks[0], 0)[0]
    system, example = evaluate.item_prompt(cfg, item)
    assert system is None and example.prompt == f"MEDICAL QUESTION: {item.example.question}\nANSWER: "


# ---------------------------------------------------------------- validation by position, loss during training


@pytest.mark.slow
def test_the_first_rows_of_a_dataset_are_the_validation_set(tmp_path, smol_tokenizer):
    rows = [{"Question": f"Question number {i}?", "Complex_CoT": "Think.", "Response": f"Answer {i}."}
            for i in range(30)]
    (tmp_path / "o1.json").write_text(json.dumps(rows))
    cfg = config(tmp_path, f"data:\n  datasets:\n    - source: {tmp_path / 'o1.json'}\n      format: medical_o1\n"
                 "      val_first_n: 10\n      max_samples: 5\ntraining:\n  eval_steps: 2\n")
    prepared = data.prepare(cfg.data, smol_tokenizer, 512, cfg.training.seed)
    assert sorted(r["example"].question for r in prepared.validation) == sorted(
        f"Question number {i}?" for i in range(10))
    assert len(prepared.train) == 5  # max_samples caps the training rows only
    planned = plan.training_plan(cfg, "train", str(tmp_path / "out"))
    assert planned["training_examples"] == 5
    assert planned["validation"] == {"items": [f"the first 10 rows of 0:{tmp_path / 'o1.json'} (file order)"],
                                     "loss": "every 2 steps during training, and before and after"}


def test_val_first_n_must_leave_rows_to_train_on_and_choose_alone(tmp_path):
    (tmp_path / "o1.json").write_text(json.dumps([{"Question": "Q?", "Complex_CoT": "T.", "Response": "A."}] * 3))
    cfg = config(tmp_path, f"data:\n  datasets:\n    - source: {tmp_path / 'o1.json'}\n      format: medical_o1\n"
                 "      val_first_n: 3\n")
    with pytest.raises(DataError, match="val_first_n=3 holds out every one of its 3 rows"):
        data.collect(cfg.data, 0)
    assert "val_first_n and cv_fold both choose" in refused(tmp_path, MINIMAL + "      val_first_n: 5\n      cv_fold: 1\n")


def test_eval_steps_needs_a_validation_set(tmp_path):
    assert "training.eval_steps needs a validation set" in refused(tmp_path, MINIMAL + "training:\n  eval_steps: 5\n")


def test_validation_loss_is_logged_during_training_beside_the_training_loss(tiny_model_dir, tmp_path, capsys):
    argv = kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "data.val_ratio": "0.25", "training.eval_steps": "2", "output.run_name": "run", "training.save_steps": "0"})
    assert main(argv) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e][:2] == [2, 4]
    assert len(report.eval_loss_curve(history)) >= 2
    assert "validation loss" in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("eval/loss")) >= 2
    # the setups' memory table: trainable parameters, QLoRA against full fine-tuning (an estimate, so labelled)
    table = json.loads((tmp_path / "run" / "memory.json").read_text())["qlora_vs_full_finetuning"]
    assert table["trainable_parameters"] == table["lora_parameters_by_shape"] > 0
    assert table["full_finetuning_estimated_gib"] > table["qlora_estimated_gib"]
    text = (tmp_path / "run" / "memory_table.md").read_text()
    assert "| full fine-tuning, ESTIMATED |" in text and "not measured (no GPU)" in text


# ---------------------------------------------------------------- W&B without a key


@pytest.mark.slow
def test_wandb_without_a_key_falls_back_to_offline_mode_where_the_config_allows_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(None, ["training.report_to=[tensorboard, wandb]", "training.wandb_offline_without_key=true"])
    notes = tracking.check_trackers(cfg)
    assert notes and "no WANDB_API_KEY in the environment, so the run logs in W&B's offline mode" in notes[0]
    run = SimpleNamespace(path=tmp_path)
    import os

    monkeypatch.setattr("wandb.finish", lambda: None)
    with tracking.tracking_env(cfg, run):
        assert os.environ["WANDB_MODE"] == "offline"
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # with a key: online, as configured
    assert tracking.check_trackers(cfg) == []
    monkeypatch.delenv("WANDB_API_KEY")
    strict = load_config(None, ["training.report_to=[wandb]"])  # without the setting: refused as before
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        tracking.check_trackers(strict)
    assert main(["--dry-run", "--set", "training.report_to=[wandb]", "--set",
                 "training.wandb_offline_without_key=true"]) == 0
    assert "W&B's offline mode" in json.loads(capsys.readouterr().out)["trackers"]["notes"][0]


# ---------------------------------------------------------------- a reasoning format that was not learned


def test_a_run_whose_format_compliance_stays_near_zero_says_what_to_change():
    cfg = load_config(None, ["training.max_steps=60"])
    advice = report.format_not_learned(cfg, {"medical-o1 validation:huatuo": {"format_compliance": 0.0},
                                               "pubmedqa": {"accuracy": 50.0}}, 60)
    assert "chain-of-thought format was not learned (medical-o1 validation:huatuo 0.0%" in advice
    assert "--set training.max_steps=150 --set training.learning_rate=0.001" in advice
    assert report.format_not_learned(cfg, {"medical-o1 validation:huatuo": {"format_compliance": 75.0}}, 150) is None
