"""GRPO end to end on a tiny random Llama (hf backend, CPU): the run folder, the per-reward logs, samples,
evaluation before and after, resume, starting from an earlier run's adapter, the memory preflight, and the
config refusals of the methods."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from medqlora import fit, rl
from medqlora.cli import main
from medqlora.config import load_config
from medqlora.errors import ConfigError
from medqlora.run_files import Files

from .conftest import kit_argv, tiny_overrides

MEDMCQA = {"data.datasets": "[{source: data/medmcqa/train.jsonl, format: multiple_choice, max_samples: 8}]",
           "data.eval_sets": "[{source: data/medmcqa/heldout.jsonl, format: multiple_choice}]",
           "eval.benchmarks": "[{name: medmcqa-heldout, kind: multiple_choice, source: data/medmcqa/heldout.jsonl, "
                              "max_items: 4}]",
           "eval.method": "generate", "eval.max_new_tokens": "8",
           "training.method": "grpo", "training.max_steps": "2", "training.micro_batch_size": "4",
           "grpo.num_generations": "2", "grpo.max_completion_length": "8", "grpo.beta": "0.05",
           "grpo.samples_every": "1", "grpo.overlong_buffer": "4", "generation.max_new_tokens": "8"}


def grpo_argv(model_dir, out, mode="full", **extra):
    return kit_argv(model_dir, out, "--mode", mode, **{**MEDMCQA, **extra})


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    assert main(grpo_argv(tiny_model_dir, out, **{"output.run_name": "grpo"})) == 0
    return out / "grpo"


def test_grpo_run_logs_each_reward_with_kl_and_completion_length(grpo_run):
    history = json.loads((grpo_run / "metrics.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert len(steps) == 2
    for key in ("rewards/multiple_choice/mean", "rewards/multiple_choice/zero_std_frac", "rewards/format_answer/mean",
                "rewards/format_answer/zero_std_frac", "rewards/overlong/mean", "kl", "completions/mean_length",
                "frac_reward_zero_std", "generation/share_of_time", "generation/tokens_per_second"):
        assert all(key in e for e in steps), key
    assert all(0 <= e["rewards/multiple_choice/zero_std_frac"] <= 1 for e in steps)
    metrics = json.loads((grpo_run / "metrics.json").read_text())["metrics"]
    assert metrics["method"] == "grpo" and metrics["steps"] == 2
    assert "rewards/multiple_choice/mean" in metrics["rewards"] and metrics["generation"]["tokens"] > 0
    assert (grpo_run / Files.REWARD_CURVES).stat().st_size > 0


def test_steps_per_generation_trains_several_steps_on_one_generated_batch(tiny_model_dir, tmp_path, monkeypatch):
    """grpo.steps_per_generation 2: 4 optimizer steps from 2 generations of 8 completions (not 4 of 4)."""
    import trl

    original, batches = trl.GRPOTrainer._generate, []

    def counted(self, prompts):
        batches.append(len(prompts))
        return original(self, prompts)

    monkeypatch.setattr(trl.GRPOTrainer, "_generate", counted)
    assert main(grpo_argv(tiny_model_dir, tmp_path, mode="train", **{
        "training.max_steps": "4", "grpo.steps_per_generation": "2", "output.run_name": "spg"})) == 0
    assert batches == [8, 8]
    history = json.loads((tmp_path / "spg" / "metrics.json").read_text())["log_history"]
    assert len([e for e in history if "loss" in e]) == 4


def test_grpo_run_writes_sampled_completions_with_their_rewards(grpo_run):
    lines = [json.loads(line) for line in (grpo_run / Files.GRPO_SAMPLES).read_text().splitlines()]
    assert {line["step"] for line in lines} == {0, 1}
    assert set(lines[0]["rewards"]) == {"multiple_choice", "format_answer", "overlong"}
    assert lines[0]["kind"] == "multiple_choice" and lines[0]["answer"] in "ABCD"


def test_grpo_run_is_a_complete_run_folder(grpo_run):
    manifest = json.loads((grpo_run / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    assert (grpo_run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (grpo_run / "checkpoints").exists()
    evaluation = json.loads((grpo_run / "eval.json").read_text())["benchmarks"]["medmcqa-heldout"]
    assert evaluation["baseline"]["items"] == evaluation["fine_tuned"]["items"] == 4
    assert (grpo_run / "sample_responses.md").is_file()
    trained = [json.loads(line) for line in (grpo_run / "training_items.jsonl").read_text().splitlines()]
    assert len(trained) == 8 and all(t["source"].endswith("train.jsonl") for t in trained)
    assert load_config(grpo_run / "config.yaml").training.method == "grpo"


def test_grpo_prompts_are_the_evaluation_prompts(tiny_model_dir, smol_tokenizer):
    """The same chat template, system prompt and question text as the generate evaluation, no doubled BOS."""
    from medqlora import data, evaluate

    cfg = load_config(None, tiny_overrides(tiny_model_dir, Path("/tmp/unused"), **MEDMCQA))
    collected = data.collect(cfg.data, cfg.training.seed)
    prepared = rl.prepare_method_rows(cfg, collected, smol_tokenizer)
    row = prepared.train[0]
    item = evaluate.EvalItem(row["uid"], row["example"], row["answer"], row["choices"])
    room = cfg.model.max_seq_length - cfg.grpo.max_completion_length
    assert row["prompt"] == smol_tokenizer.decode(evaluate.prompt_ids(cfg, smol_tokenizer, item, room)[0])
    assert row["answer"] == row["example"].response.split(".")[0] and row["choices"] == ["A", "B", "C", "D"]


def test_grpo_data_passes_the_leakage_guard(tiny_model_dir, tmp_path, capsys):
    """A held-out question in the training rows is refused, for GRPO as for SFT."""
    assert main(grpo_argv(tiny_model_dir, tmp_path, mode="train", **{
        "data.datasets": "[{source: data/medmcqa/heldout.jsonl, format: multiple_choice, max_samples: 8}]"})) == 2
    assert "evaluation" in capsys.readouterr().err


def _grpo_run_stopped_at_step_3(tiny_model_dir, tmp_path, monkeypatch):
    """A GRPO run of 4 steps (checkpoints every 2) interrupted at step 3; the trainer is mended afterwards."""
    import trl

    original = trl.GRPOTrainer.training_step

    def stop_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.GRPOTrainer, "training_step", stop_at_step_3)
    assert main(grpo_argv(tiny_model_dir, tmp_path, mode="train", **{
        "training.max_steps": "4", "training.save_steps": "2", "output.run_name": "cut"})) != 0
    monkeypatch.setattr(trl.GRPOTrainer, "training_step", original)
    return tmp_path / "cut"


def test_grpo_resumes_from_its_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    run = _grpo_run_stopped_at_step_3(tiny_model_dir, tmp_path, monkeypatch)
    assert (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert main(["--mode", "train", "--resume", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["steps"] == 4 and metrics["resumed_from_step"] == 2
    assert metrics["seconds_per_step"] == round(metrics["train_wall_s"] / 2, 2)  # the 2 steps trained after resuming


def test_grpo_resume_from_a_damaged_checkpoint_is_one_message(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """GRPO (and DPO/ORPO) share SFT's trainer wrapper: a damaged checkpoint is named, not an internal error."""
    run = _grpo_run_stopped_at_step_3(tiny_model_dir, tmp_path, monkeypatch)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{nope")
    before = (run / "manifest.json").read_text()
    capsys.readouterr()
    assert main(["--mode", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-2 is damaged" in err and "internal error" not in err and "Traceback" not in err, err[-1500:]
    assert (run / "manifest.json").read_text() == before  # refused before the run folder is touched


def test_grpo_starts_from_an_earlier_runs_adapter(tiny_model_dir, tmp_path, capsys):
    """SFT then GRPO: training.init_adapter=latest trains the SFT adapter further (its path kept in config.yaml)."""
    sft = ["--mode", "train"]
    for item in tiny_overrides(tiny_model_dir, tmp_path, **{"output.run_name": "sft", "training.max_steps": "2",
                                                             "training.learning_rate": "0.01"}):
        sft += ["--set", item]
    assert main(sft) == 0
    argv = grpo_argv(tiny_model_dir, tmp_path, mode="train", **{"output.run_name": "rl",
                                                                 "training.init_adapter": "latest"})
    assert main(argv) == 0
    assert "starting from the adapter of" in capsys.readouterr().out
    saved = load_config(tmp_path / "rl" / "config.yaml")
    assert saved.training.init_adapter == str((tmp_path / "sft" / "adapter").resolve())
    before = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "rl" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    lora_b = [k for k in before if "lora_B" in k]
    assert any(before[k].abs().sum() > 0 for k in lora_b)  # SFT moved B away from its zero start
    assert any((before[k] - after[k]).abs().sum() > 0 for k in before)  # and GRPO trained on from there


def test_init_adapter_of_another_base_model_is_refused(tiny_model_dir, tmp_path, capsys):
    sft = ["--mode", "train"]
    for item in tiny_overrides(tiny_model_dir, tmp_path, **{"output.run_name": "sft", "training.max_steps": "1"}):
        sft += ["--set", item]
    assert main(sft) == 0
    other = tmp_path / "copy-of-model"
    import shutil

    shutil.copytree(tiny_model_dir, other)
    argv = grpo_argv(other, tmp_path, mode="train", **{"training.init_adapter": str(tmp_path / "sft")})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "Traceback" not in err


@pytest.mark.parametrize("overrides, fragment", [
    ({"training.method": "grpo", "data.datasets.0.format": "medical_o1"},
     "grpo learns from prompts with an answer a reward can check"),
    ({"training.method": "grpo", "training.micro_batch_size": "3"}, "must be a multiple of grpo.num_generations"),
    ({"training.method": "grpo", "grpo.max_completion_length": "240"}, "leaves no room for the prompt"),
    ({"training.method": "grpo", "grpo.rewards.pubmedqa_label": "0", "grpo.rewards.format": "0"},
     "every reward that can rise on this data is weighted 0"),
    ({"training.method": "grpo", "grpo.num_generations": "1"}, "grpo.num_generations"),
    ({"training.method": "grpo", "training.packing": "true"}, "training.packing is for sft"),
    ({"training.method": "dpo"}, "dpo learns from prompt / chosen / rejected rows"),
    ({"data.datasets.0.format": "preference"}, "train with training.method: dpo or orpo"),
])
def test_method_refusals(tiny_model_dir, tmp_path, capsys, overrides, fragment):
    argv = ["--mode", "train", "--dry-run"]
    for item in tiny_overrides(tiny_model_dir, tmp_path, **{"grpo.max_completion_length": "32", **overrides}):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err


def test_grpo_use_vllm_is_refused_without_unsloth(tiny_model_dir, tmp_path, capsys):
    assert main(grpo_argv(tiny_model_dir, tmp_path, mode="train", **{"grpo.use_vllm": "true"})) == 2
    assert "grpo.use_vllm" in capsys.readouterr().err


def test_memory_preflight_adds_generation_for_grpo():
    from medqlora.random_model import SHAPES

    shape = fit.ModelShape.from_config(type("C", (), SHAPES["llama-3.1-8b"])())
    sft = load_config(None, ["model.max_seq_length=2560"])
    figures = {}
    for group, length in ((4, 512), (8, 512), (8, 2048)):
        cfg = load_config(None, ["model.max_seq_length=2560", "training.method=grpo",
                                 "data.datasets.0.format=pubmedqa", f"grpo.num_generations={group}",
                                 f"grpo.max_completion_length={length}", f"training.micro_batch_size={group}"])
        figures[(group, length)] = fit.estimate(shape, cfg, "unsloth", group, "unsloth")
    plain = fit.estimate(shape, sft, "unsloth", 8, "unsloth")
    assert plain.generation_gib == 0
    assert figures[(8, 512)].generation_gib > figures[(4, 512)].generation_gib > 0
    assert figures[(8, 2048)].generation_gib > figures[(8, 512)].generation_gib
    assert figures[(8, 2048)].total_gib == pytest.approx(plain.total_gib + figures[(8, 2048)].generation_gib, abs=0.01)
    assert "generation" in figures[(8, 2048)].describe()
    batched = load_config(None, ["model.max_seq_length=2560", "training.method=grpo", "data.datasets.0.format=pubmedqa",
                                 "grpo.num_generations=8", "grpo.max_completion_length=2048",
                                 "training.micro_batch_size=8", "grpo.steps_per_generation=4"])
    kv_cache = figures[(8, 2048)].generation_gib - fit.generation_bytes(shape, batched, 8, 0) / fit.GIB
    assert fit.estimate(shape, batched, "unsloth", 8, "unsloth").generation_gib == \
        pytest.approx(figures[(8, 2048)].generation_gib + 3 * kv_cache, abs=0.01)  # 4 steps' completions at once


def test_generation_memory_follows_the_whole_generation_batch_whatever_the_micro_batch():
    """Auto-fit splits 8 completions of 2,048 tokens into micro-batches of 1: TRL still generates all 8 at once,
    so the KV cache must not shrink with the micro-batch (it did, and the preflight planned 12.4 GiB for a run
    that peaked at 13.9 GiB on the GPU); only the scored logits follow the micro-batch."""
    from medqlora.random_model import SHAPES

    shape = fit.ModelShape.from_config(type("C", (), SHAPES["llama-3.1-8b"])())
    cfg = load_config(None, ["model.max_seq_length=2560", "training.method=grpo", "data.datasets.0.format=pubmedqa",
                             "grpo.num_generations=8", "grpo.max_completion_length=2048",
                             "training.micro_batch_size=8"])
    whole, split = fit.generation_bytes(shape, cfg, 8, 2241), fit.generation_bytes(shape, cfg, 1, 2241)
    logits_per_completion = (fit.generation_bytes(shape, cfg, 8, 0) - fit.generation_bytes(shape, cfg, 1, 0)) / 7
    kv_cache = 8 * 2241 * 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    assert whole - split == pytest.approx(7 * logits_per_completion)
    assert split == pytest.approx(kv_cache + logits_per_completion)
    choice = fit.auto_fit(shape, cfg, "unsloth", 15.0, seq_len=193)
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 8
    assert choice.estimate.generation_gib * fit.GIB >= kv_cache
    on_a_t4 = fit.auto_fit(shape, cfg, "hf", 15.0, seq_len=193)  # measured 13.9 GiB with fp32 frozen weights
    assert on_a_t4.estimate.total_gib >= 13.92 - fp32_copy_gib(shape)


def fp32_copy_gib(shape) -> float:
    """What the hf backend's peaks below held more than today: they were measured when PEFT's k-bit preparation
    kept fp32 copies of the embeddings and output layer (2 bytes a value more than bf16); the kit now freezes the
    base without that upcast (backends.lora.freeze_base). An inference from the dtypes, not a new measurement."""
    return shape.embedding_params() * 2 / fit.GIB


# GRPO at the Llama-3.1-8B shape on an H200 (docs/benchmarks.md): backend, group, completion length, the micro-batch
# x accumulation auto-fit chose, and the peak reserved GiB measured (hf: with fp32 frozen weights, see above)
MEASURED_GRPO_PEAKS = [("unsloth", 4, 512, 4, 1, 7.35), ("unsloth", 8, 512, 8, 1, 8.21), ("unsloth", 4, 2048, 2, 2, 10.01),
                       ("unsloth", 8, 2048, 2, 4, 13.16), ("hf", 4, 512, 4, 1, 12.49), ("hf", 8, 512, 4, 2, 12.98),
                       ("hf", 4, 2048, 1, 4, 12.61), ("hf", 8, 2048, 1, 8, 13.92)]


@pytest.mark.parametrize("backend,group,length,micro,accumulation,measured_gib", MEASURED_GRPO_PEAKS)
def test_grpo_memory_estimate_is_never_below_the_measured_peak(backend, group, length, micro, accumulation,
                                                                measured_gib):
    from medqlora.random_model import SHAPES

    shape = fit.ModelShape.from_config(type("C", (), SHAPES["llama-3.1-8b"])())
    cfg = load_config(None, [f"model.max_seq_length={length + 512}", "training.method=grpo",
                             "data.datasets.0.format=multiple_choice", f"grpo.num_generations={group}",
                             f"grpo.max_completion_length={length}", f"training.micro_batch_size={micro}",
                             f"training.gradient_accumulation_steps={accumulation}"])
    checkpointing = "unsloth" if backend == "unsloth" else True
    estimate = fit.estimate(shape, cfg, backend, micro, checkpointing, seq_len=193)  # the longest prompt: 193 tokens
    expected = measured_gib - (fp32_copy_gib(shape) if backend == "hf" else 0)
    assert expected <= estimate.total_gib <= expected * 1.6


def test_format_style_follows_the_data_or_the_init_adapter(tmp_path):
    cfg = load_config(None, ["training.method=grpo", "data.datasets.0.format=pubmedqa"])
    assert rl.format_style(cfg) == "answer"
    assert rl.format_style(cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"format_style": "none"})})) \
        is None
    run = tmp_path / "sft"
    (run / "adapter").mkdir(parents=True)
    sft = load_config(None, ["data.datasets=[{source: x.jsonl, format: medical_o1, cot_style: tags}]"])
    (run / "config.yaml").write_text(sft.to_yaml())
    started = cfg.model_copy(update={"training": cfg.training.model_copy(update={"init_adapter": str(run / "adapter")})})
    assert rl.format_style(started) == "tags"


def test_config_error_is_raised_for_a_misspelled_grpo_key():
    with pytest.raises(ConfigError, match="Did you mean 'num_generations'"):
        load_config(None, ["grpo.num_generation=4"])


@pytest.mark.slow
def test_smollm2_grpo_preset_plans_without_loading(tmp_path, capsys):
    """The offline GRPO preset validates, reads its rows and passes the leakage guard against its held-out part."""
    assert main(["--mode", "full", "--dry-run", "--config", "smollm2_grpo_medmcqa", "--set",
                 f"output.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "'overlapping_training_items': 0" in out or '"overlapping_training_items": 0' in out, out[-2000:]
    assert "medmcqa-heldout" in out


@pytest.mark.slow
def test_smollm2_grpo_preset_runs_a_few_steps(smol_dir, tmp_path):
    """CI: a few GRPO steps of the offline preset with the real SmolLM2 weights, the rewards logged."""
    argv = ["--mode", "train", "--config", "smollm2_grpo_medmcqa"]
    for item in (f"output.dir={tmp_path}", "output.run_name=preset", "training.max_steps=2",
                 "data.datasets.0.max_samples=8", "grpo.max_completion_length=8", "grpo.overlong_buffer=2",
                 "grpo.samples_every=1", "generation.max_new_tokens=8"):
        argv += ["--set", item]
    assert main(argv) == 0
    history = json.loads((tmp_path / "preset" / "metrics.json").read_text())["log_history"]
    steps = [e for e in history if "rewards/format_answer/mean" in e]
    assert len(steps) == 2 and all("kl" in e and "rewards/multiple_choice/mean" in e for e in steps)
    assert (tmp_path / "preset" / Files.GRPO_SAMPLES).is_file()


def test_memory_preflight_of_grpo_counts_the_completion_after_the_longest_prompt():
    from medqlora.random_model import SHAPES

    shape = fit.ModelShape.from_config(type("C", (), SHAPES["llama-3.1-8b"])())
    cfg = load_config(None, ["model.max_seq_length=4096", "training.method=grpo", "grpo.max_completion_length=2048",
                             "training.micro_batch_size=4"])
    assert fit.estimate(shape, cfg, "hf", 4, True, 300).tokens_per_micro_batch == 4 * (300 + 2048)
    assert fit.estimate(shape, cfg, "hf", 4, True, 3000).tokens_per_micro_batch == 4 * 4096
