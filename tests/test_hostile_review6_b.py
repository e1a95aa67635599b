"""Inputs whose --dry-run passed what the run then refused (or whose plan promised what the run skips), and an adapter
the kit trained that its own later modes refused: each now handled the same way by the dry-run and the run."""

import json

import pytest
import torch
from safetensors.torch import save_file

from medqlora import adapter_base, adapters
from medqlora.errors import ModelError

from .conftest import assert_one_message, kit_argv, only_run, run_cli, run_tiny, with_set
from .test_adapters import make_adapter


def _embedding_adapter(folder, base, vocab: int, width: int = 64, r: int = 4):
    """A LoRA adapter on q_proj and embed_tokens, laid out as PEFT saves one (lora_embedding_A [r, vocab],
    lora_embedding_B [width, r], and its copy of the embedding)."""
    make_adapter(folder, str(base), r=r, modules=("q_proj",), target_modules=["q_proj", "embed_tokens"])
    tensors = {}
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
        tensors = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    prefix = "base_model.model.model.embed_tokens"
    tensors |= {f"{prefix}.lora_embedding_A": torch.zeros(r, vocab), f"{prefix}.lora_embedding_B": torch.zeros(width, r),
                f"{prefix}.base_layer.weight": torch.zeros(vocab, width)}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def test_an_adapter_on_the_embedding_layer_fits_its_base_and_a_wrong_vocabulary_is_still_refused(tiny_model_dir,
                                                                                                 tmp_path):
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    fits = _embedding_adapter(tmp_path / "fits", tiny_model_dir, vocab)
    adapter_base.check_base(adapters.find(fits), str(tiny_model_dir), str(tiny_model_dir))
    other = _embedding_adapter(tmp_path / "other", tiny_model_dir, vocab + 10)
    with pytest.raises(ModelError, match=rf"embed_tokens is {vocab + 10} -> 64 features in the adapter and {vocab} -> 64"):
        adapter_base.check_base(adapters.find(other), str(tiny_model_dir), str(tiny_model_dir))


@pytest.mark.slow
def test_an_adapter_trained_on_embed_tokens_loads_in_chat_and_exports_as_a_gguf_lora(tiny_model_dir, tmp_path,
                                                                                       capsys, monkeypatch):
    from medqlora import export

    out = tmp_path / "out"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"lora.target_modules": "[q_proj,embed_tokens]"}) == 0
    run = only_run(out)
    chat = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "chat", "--adapter", str(run), "--prompt", "hi"))
    assert chat.code == 0, chat.err
    monkeypatch.setenv("LLAMA_CPP_DIR", str(export.fetch_llama_cpp_converter()))
    exported = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "export", "--adapter", str(run),
                                        **{"export.formats": "[gguf_lora]"}))
    assert exported.code == 0, exported.err
    report = json.loads(next(run.glob("export*/export_report.json")).read_text())
    assert report["gguf_lora"]["names_and_shapes_match"] is True


@pytest.mark.parametrize(("mode", "dry"), [("chat", ["--dry-run"]), ("test", ["--dry-run"]), ("chat", [])])
def test_max_new_tokens_that_fill_the_context_are_refused_naming_both_numbers(mode, dry, tiny_model_dir, tmp_path,
                                                                              capsys):
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir))
    prompt = ["--prompt", "hi there"] if mode == "chat" else []
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", mode, "--adapter", str(adapter),
                                      *prompt, *dry, **{"generation.max_new_tokens": "100000"}))
    assert result.code == 2
    assert_one_message(result.err, "generation.max_new_tokens=100,000 leaves no room for a prompt in the model's "
                                   "context of 4,096 tokens")
    assert "Lower generation.max_new_tokens to at most 3,840" in result.err


@pytest.mark.parametrize(("values", "said"), [
    ({"max_new_tokens": 0}, "'max_new_tokens' is 0; it must be a whole number above 0"),
    ({"do_sample": True, "top_k": -5}, "'top_k' is -5; it must be a whole number of 0 or more"),
    ({"temperature": -1.0}, "'temperature' is -1.0; it must be a number above 0"),
])
@pytest.mark.parametrize("mode", ["train", "chat"])
def test_a_generation_config_with_invalid_values_is_refused_at_the_dry_run_naming_the_file_and_key(
        values, said, mode, tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, **values}))
    adapter = ["--adapter", str(make_adapter(tmp_path / "adapter", str(model))), "--prompt", "hi"] \
        if mode == "chat" else []
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run", "--mode", mode, *adapter))
    assert result.code == 2
    assert_one_message(result.err, f"model.name: {model}/generation_config.json: {said}. Fix or remove that key")


@pytest.mark.parametrize(("layers", "said"), [
    ([1, 5], ("its adapter_config.json sets layers_to_transform to layer 5, which the base model lacks (it has 2 "
              "layers, 0-1). Set layers_to_transform to the layers the adapter was trained on, or remove it")),
    ("all", "is not a usable LoRA config: layers_to_transform is not a layer number or a list of layer numbers"),
])
def test_layers_to_transform_the_base_model_lacks_are_refused_at_the_dry_run(layers, said, tiny_model_dir, tmp_path,
                                                                             capsys):
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir), layers_to_transform=layers)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--dry-run", "--adapter",
                                      str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, said)


def test_a_full_run_without_evaluation_plans_none_and_needs_no_evaluation_data(tiny_model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    from medqlora import harness

    monkeypatch.setattr(harness, "check_installed", lambda: None)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[pubmedqa]"})
    evaluated = run_cli(capsys, argv)
    assert evaluated.code == 0, evaluated.err
    assert "eval_report.md" in json.loads(evaluated.out)["outputs"]
    assert any(line.startswith("lm-eval pubmedqa") for line in json.loads(evaluated.out)["evaluation"])

    skipped = run_cli(capsys, with_set(argv, "eval.in_full_mode=false", "eval.lm_eval.tasks=[medqa]"))
    assert skipped.code == 0, skipped.err  # no medqa file: that evaluation does not run, so it needs none
    plan = json.loads(skipped.out)
    assert plan["evaluation"] == []
    assert "eval_report.md" not in plan["outputs"] and "eval.json" not in plan["outputs"]


@pytest.mark.slow
def test_a_second_lm_eval_evaluation_keeps_the_first_ones_task_files(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    out = tmp_path / "out"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "1"}) == 0
    run = only_run(out)
    for items in ("2", "3"):
        result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "eval", "--adapter", str(run), **{
            "eval.benchmarks.0.max_items": items, "eval.harness": "lm-eval", "eval.lm_eval.max_items": items}))
        assert result.code == 0, result.err[-2000:]
    first, second = sorted(run.glob("lm_eval_tasks*"), key=lambda p: len(p.name))
    assert first.name == "lm_eval_tasks" and second.name.startswith("lm_eval_tasks-")
    assert len((first / "medqlora_pubmedqa.jsonl").read_text().splitlines()) == 2
    assert len((second / "medqlora_pubmedqa.jsonl").read_text().splitlines()) == 3
    later = max(run.glob("eval-*.json"))
    assert json.loads(later.read_text())["lm_eval_tasks"] == second.name
    assert f"the task files are in {second.name}/" in later.with_name(
        later.name.replace("eval-", "eval_report-").replace(".json", ".md")).read_text()


def test_a_kit_benchmark_named_pubmedqa_of_another_kind_is_refused_beside_lm_evals_pubmedqa(tiny_model_dir, tmp_path,
                                                                                            capsys, monkeypatch):
    from medqlora import harness

    monkeypatch.setattr(harness, "check_installed", lambda: None)
    rows = tmp_path / "mc.jsonl"
    rows.write_text("".join(json.dumps({"question": f"Which organ does disease {i} affect?", "options": dict(
        zip("ABCD", ("liver", "heart", "lung", "kidney"))), "answer_idx": "A"}) + "\n" for i in range(6)))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full", **{
        "eval.harness": "lm-eval", "eval.lm_eval.tasks": "[pubmedqa]",
        "eval.benchmarks": f"[{{name: pubmedqa, kind: multiple_choice, source: {rows}, max_items: 5}}]"}))
    assert result.code == 2
    assert_one_message(result.err, "the benchmark named pubmedqa is of kind multiple_choice")
    assert "Rename that benchmark (e.g. name: my_mcq), or leave pubmedqa out of eval.lm_eval.tasks" in result.err


def test_lm_evals_pubmedqa_scores_the_items_of_the_kit_benchmark_of_that_name(tmp_path, monkeypatch):
    from medqlora import evaluate, harness
    from medqlora.config import load_config

    monkeypatch.setattr(harness, "check_installed", lambda: None)
    from medqlora.data.examples import PUBMEDQA_DIR, pubmedqa_test_ids

    shipped = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    rows = tmp_path / "pq.json"  # six of the official test questions: the kit's benchmark scores these alone
    rows.write_text(json.dumps({pmid: shipped[pmid] for pmid in sorted(pubmedqa_test_ids())[:6]}))
    cfg = load_config(None, ["eval.harness=lm-eval", "eval.lm_eval.tasks=[pubmedqa]",
                             f"eval.benchmarks=[{{name: pubmedqa, kind: pubmedqa, source: {rows}, max_items: 4}}]"])
    (task,) = harness.load_tasks(cfg)
    kit_items = evaluate.load_items(cfg.eval.benchmarks[0], cfg.training.seed)
    assert [i.uid for i in task.items] == [i.uid for i in kit_items] and len(kit_items) == 4


def test_the_dry_run_refuses_gguf_lora_for_an_adapter_with_per_layer_alphas(tiny_model_dir, tmp_path, capsys,
                                                                            monkeypatch):
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    (checkout / "convert_lora_to_gguf.py").write_text("")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(checkout))
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir), alpha_pattern={"q_proj": 64})
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter),
                                      "--dry-run", **{"export.formats": "[adapter,gguf_lora]"}))
    assert result.code == 2
    assert_one_message(result.err, "uses alpha_pattern, which a llama.cpp LoRA file cannot express")


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_gguf_lora_alone_without_its_converter_is_refused_as_nothing_would_be_exported(dry, tiny_model_dir, tmp_path,
                                                                                       capsys, monkeypatch):
    from medqlora import backends

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./llama.cpp, ~/llama.cpp or converter in the kit's cache
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(backends, "CACHE_DIR", tmp_path / "cache")
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter),
                                      *dry, **{"export.formats": "[gguf_lora]"}))
    assert result.code == 2
    assert_one_message(result.err, "export.formats [gguf_lora]: nothing would be exported, as convert_lora_to_gguf.py "
                                   "is not found")
    assert "python -m medqlora.export --fetch-llama-cpp" in result.err
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("export*"))
