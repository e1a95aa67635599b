"""Hostile and unlucky inputs: LoRA target modules that are no linear layers, a config.json whose layer count is not
the weights', lm-eval's chat template against model.chat_template, and the card written with an adapter.

Findings handled here: 037, 038, 054, 055, 072, 066, 096.
"""

import json
import shutil
from pathlib import Path

import pytest

from medqlora.cli import main
from medqlora.config import load_config

from .conftest import assert_one_message, kit_argv, run_cli, tiny_overrides


# ---------------------------------------------------------------- 037 / 038: lora.target_modules


@pytest.mark.parametrize("targets, fragment", [
    ("[self_attn]", "lora.target_modules: 'self_attn' in"),
    ("[q_proj, mlp]", "lora.target_modules: 'mlp' in"),
])
def test_a_container_module_as_lora_target_is_refused_at_dry_run_and_before_training(tiny_model_dir, tmp_path, capsys,
                                                                                      targets, fragment):
    for mode in (["--mode", "train", "--dry-run"], ["--mode", "train"]):
        result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", *mode, **{"lora.target_modules": targets}))
        assert result.code == 2, result.err
        assert_one_message(result.err, fragment)
        assert "modules, not linear layers" in result.err
        assert "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']" in result.err
    run = next((tmp_path / "out").iterdir())  # the run stopped before training: its manifest says why, no adapter
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "adapter").exists()


def test_lm_head_as_lora_target_is_refused_saying_why_and_embed_tokens_trains(tiny_model_dir, tmp_path, capsys):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"lora.target_modules": "[lm_head, embed_tokens]"}))
    assert result.code == 2
    assert_one_message(result.err, "lora.target_modules: 'lm_head' in")
    assert "is the output layer (lm_head)" in result.err and "embed_tokens, the input embedding, takes LoRA" in result.err

    assert main(kit_argv(tiny_model_dir, tmp_path / "ok", "--mode", "train", **{
        "lora.target_modules": "[embed_tokens, self_attn.q_proj]", "training.max_steps": "1",
        "output.run_name": "emb"})) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok" / "emb" / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert any("embed_tokens.lora_embedding_A" in n for n in names)
    assert any("self_attn.q_proj.lora_A" in n for n in names)  # a dotted name is matched as PEFT matches it
    assert not any("k_proj" in n or "lm_head" in n for n in names)


# ---------------------------------------------------------------- 054 / 055: layers of config.json vs the weights


def _with_layers(tiny_model_dir: Path, folder: Path, layers: int) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("layers, outcome", [
    (4, "the other 2 layers would start from random weights"),
    (1, "the weights of the other 1 layer would be left out without a word"),
])
def test_a_config_whose_layer_count_is_not_the_weights_is_refused_before_loading(tiny_model_dir, tmp_path, capsys,
                                                                                  layers, outcome):
    model = _with_layers(tiny_model_dir, tmp_path / "model", layers)
    for mode in (["--mode", "train", "--dry-run"], ["--mode", "train"]):
        result = run_cli(capsys, kit_argv(model, tmp_path / "out", *mode))
        assert result.code == 2, result.err
        assert_one_message(result.err, f"config.json describes {layers} layer")
        assert "but the safetensors files hold 2 layers (layers.0 to layers.1)" in result.err
        assert outcome in result.err and "(num_hidden_layers 2)" in result.err


def test_a_sharded_checkpoint_is_counted_over_all_its_files(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = _with_layers(tiny_model_dir, tmp_path / "model", 1)
    tensors = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    first = {k: v for k, v in tensors.items() if ".layers.1." not in k}
    save_file(first, str(model / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({k: v for k, v in tensors.items() if k not in first}, str(model / "model-00002-of-00002.safetensors"),
              metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if k in first else 2}-of-00002.safetensors"
                                            for k in tensors}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--mode", "train", "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, "describes 1 layer (layers.0 to layers.0; num_hidden_layers 1), but the "
                                   "safetensors files hold 2 layers")


# ---------------------------------------------------------------- 072: lm-eval and model.chat_template


def test_lm_eval_renders_prompts_with_the_template_model_chat_template_chooses(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import lm_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqlora import harness
    from medqlora.data.tokenize import render_prompt

    contexts: list[str] = []
    original = lm_eval.simple_evaluate

    def recorded(**kwargs):
        output = original(**kwargs)
        contexts.extend(s["arguments"][0][0] for samples in output["samples"].values() for s in samples)
        return output

    monkeypatch.setattr(lm_eval, "simple_evaluate", recorded)
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "out") + [
        "eval.harness=lm-eval", "eval.lm_eval.tasks=[pubmedqa]", "eval.lm_eval.max_items=2",
        "eval.lm_eval.apply_chat_template=true", "model.chat_template=false"])
    tasks = harness.load_tasks(cfg)
    harness.write_task_folder(tmp_path, tasks)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # its own template: ChatML
    assert "<|im_start|>" in tokenizer.chat_template
    harness.run_tasks(cfg, model, tokenizer, tmp_path, tasks)

    assert len(contexts) == 2
    for context in contexts:
        assert "<|im_start|>user" not in context and "<|im_start|>assistant" not in context, context[:300]
        question = context.split(cfg.data.system_prompt + "\n\n", 1)[1]
        assert context == render_prompt(tokenizer, cfg.data.system_prompt, question)  # the kit's own rendering


# ---------------------------------------------------------------- 066 / 096: the card written with the adapter


def test_an_interrupted_cpu_grpo_run_is_carded_as_such_with_its_method_and_no_quantization(tiny_model_dir, tmp_path,
                                                                                           monkeypatch):
    import trl

    from medqlora import report
    from medqlora.runs import RunDir

    original, calls = trl.GRPOTrainer._generate, []

    def interrupted_at_the_third(self, prompts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (SIGTERM is turned into the same) after two optimizer steps
        return original(self, prompts)

    monkeypatch.setattr(trl.GRPOTrainer, "_generate", interrupted_at_the_third)
    argv = kit_argv(tiny_model_dir, tmp_path, "--mode", "train", **{
        "data.datasets": "[{source: data/medmcqa/train.jsonl, format: multiple_choice, max_samples: 8}]",
        "training.method": "grpo", "training.max_steps": "6", "grpo.num_generations": "2",
        "grpo.max_completion_length": "8", "grpo.overlong_buffer": "4", "output.run_name": "cut"})
    assert main(argv) != 0
    run = tmp_path / "cut"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    card = (run / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "# LoRA adapter for" in card and "QLoRA" not in card
    assert "- Method: group relative policy optimization (GRPO)" in card
    assert "- Quantization of the base model in training: none: LoRA on fp32 weights on the CPU" in card
    assert "- Training: **interrupted**: Interrupted (Ctrl-C) at step 2." in card
    assert "- qlora" not in card and "- grpo" in card
    assert "More Information Needed" not in card  # PEFT's empty template is replaced

    assert main(["--mode", "export", "--adapter", str(run), "--set", "export.formats=[adapter]"]) == 0
    exported = next(run.glob("export*/adapter/README.md")).read_text()
    assert "group relative policy optimization (GRPO)" in exported and "**interrupted**" in exported
    assert "QLoRA" not in exported
    hub_card = report.model_card(load_config(run / "config.yaml"), RunDir(run), {"formats": ["adapter"]},
                                 run / "adapter")
    assert "fine-tuned on medical data (LoRA)" in hub_card and "QLoRA" not in hub_card
    assert "**interrupted**: Interrupted (Ctrl-C) at step 2" in hub_card and "(GRPO)" in hub_card


@pytest.mark.parametrize("facts, kind, quantization, status", [
    ({"runtime": {"device": "cuda", "dtype": "bf16"}, "status": "trained",
      "trained_settings": {"training.method": "dpo", "model.load_in_4bit": True}},
     "QLoRA", "4-bit NF4 (bitsandbytes), LoRA on top: QLoRA", "complete (every planned step)"),
    ({"runtime": {"device": "cuda", "dtype": "bf16"}, "status": "trained",
      "trained_settings": {"training.method": "orpo", "model.load_in_4bit": False}},
     "LoRA", "none: LoRA on bf16 weights (model.load_in_4bit: false)", "complete"),
    ({"runtime": {"device": "cuda", "dtype": "bf16"}, "status": "interrupted", "error": "interrupted (SIGTERM) during "
      "the evaluation after training. This run's adapter is saved", "stage": "interrupted during evaluation after "
      "training: the adapter is saved", "trained_settings": {"training.method": "sft", "model.load_in_4bit": True}},
     "QLoRA", "4-bit NF4", "complete"),
])
def test_the_card_says_the_quantization_actually_used_and_whether_training_ran_to_its_end(facts, kind, quantization,
                                                                                           status):
    from medqlora.report.adapter_card import record_of

    record = record_of(facts)
    assert record.kind == kind
    lines = "\n".join(record.lines())
    assert f"Quantization of the base model in training: {quantization}" in lines
    assert f"- Training: {status}" in lines
    assert facts["trained_settings"]["training.method"].upper() in lines
