"""export.formats gguf_lora: the adapter alone as a llama.cpp LoRA GGUF, read back and run in llama.cpp itself.

The llama.cpp run needs llama-cpp-python, which compiles llama.cpp on install (several minutes); it is not in
requirements-dev.txt. To run that test: CMAKE_BUILD_PARALLEL_LEVEL=4 pip install llama-cpp-python, then
python -m pytest -q tests/test_gguf_lora.py -m slow
"""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from medqlora import backends, export
from medqlora.errors import ModelError

from .conftest import run_tiny
from .test_export import boosted_run, greedy


@pytest.fixture(scope="module")
def converter():
    return export.fetch_llama_cpp_converter()


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A tiny run whose adapter is made large (so it visibly changes the answers), exported as adapter + gguf_lora."""
    return boosted_run(tiny_model_dir, tmp_path_factory.mktemp("gguf_lora"), seed=1)


def _export_lora(tiny_model_dir, out, run, converter, monkeypatch, *formats: str):
    monkeypatch.setenv("LLAMA_CPP_DIR", str(converter))
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run), **{
        "export.formats": f"[{','.join(formats)}]", "export.gguf_lora_type": "f32", "export.gguf_type": "f32",
        "export.compare_prompts": "2"}) == 0
    return max(run.glob("export*"), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def lora_export(lora_run, tiny_model_dir, converter):
    out, run = lora_run
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _export_lora(tiny_model_dir, out, run, converter, monkeypatch, "adapter", "gguf_lora")


def test_the_lora_gguf_holds_every_adapter_pair_under_llama_cpp_names(lora_run, lora_export):
    from gguf import GGUFReader

    _, run = lora_run
    report = json.loads((lora_export / "export_report.json").read_text())
    assert report["gguf_lora"]["names_and_shapes_match"] is True
    file = lora_export / report["gguf_lora"]["file"]
    assert file.name == "adapter-f32.gguf" and file.parent.name == "gguf_lora"
    assert not list(lora_export.glob(".gguf_lora-input"))

    # read back here independently: names, shapes, values of a tensor llama.cpp does not permute, alpha
    reader = GGUFReader(str(file))
    tensors = {t.name: t for t in reader.tensors}
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert len(tensors) == len(adapter)
    pairs = {"self_attn.v_proj": "attn_v", "self_attn.q_proj": "attn_q", "mlp.down_proj": "ffn_down"}
    for layer in (0, 1):
        for module, short in pairs.items():
            a = adapter[f"base_model.model.model.layers.{layer}.{module}.lora_A.weight"]
            b = adapter[f"base_model.model.model.layers.{layer}.{module}.lora_B.weight"]
            got_a, got_b = tensors[f"blk.{layer}.{short}.weight.lora_a"], tensors[f"blk.{layer}.{short}.weight.lora_b"]
            assert tuple(reversed(got_a.shape.tolist())) == tuple(a.shape)
            assert tuple(reversed(got_b.shape.tolist())) == tuple(b.shape)
            if short == "attn_v":
                assert torch.equal(torch.from_numpy(got_a.data.copy()).reshape(a.shape), a)
                assert torch.equal(torch.from_numpy(got_b.data.copy()).reshape(b.shape), b)
    alpha = reader.fields["adapter.lora.alpha"].contents()
    assert alpha == pytest.approx(config["lora_alpha"])


def test_a_lora_gguf_of_another_adapter_fails_the_check(lora_run, lora_export, tmp_path):
    _, run = lora_run
    other = tmp_path / "other"
    other.mkdir()
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    # rank 8 instead of 16: every shape differs from what the file holds
    save_file({k: (v[:8] if "lora_A" in k else v[:, :8]).contiguous() for k, v in weights.items()},
              other / "adapter_model.safetensors")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    report = json.loads((lora_export / "export_report.json").read_text())
    with pytest.raises(ModelError, match="does not hold the adapter as trained"):
        export.check_gguf_lora(lora_export / report["gguf_lora"]["file"], other)


def test_an_rslora_adapter_gets_the_alpha_that_gives_llama_cpp_its_scale(lora_run, tiny_model_dir, converter,
                                                                          tmp_path, monkeypatch):
    """rsLoRA scales by alpha / sqrt(r); llama.cpp always by alpha / r: the file carries alpha * sqrt(r)."""
    import shutil

    from gguf import GGUFReader

    _, run = lora_run
    copy = tmp_path / "rslora"
    shutil.copytree(run / "adapter", copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    monkeypatch.setenv("LLAMA_CPP_DIR", str(converter))
    assert run_tiny(tiny_model_dir, tmp_path / "o", "--mode", "export", "--adapter", str(copy),
               **{"export.formats": "[gguf_lora]", "output.run_name": "r"}) == 0
    (file,) = (tmp_path / "o").rglob("adapter-f16.gguf")
    alpha = GGUFReader(str(file)).fields["adapter.lora.alpha"].contents()
    assert alpha == pytest.approx(config["lora_alpha"] * config["r"] ** 0.5)
    assert json.loads((copy / "adapter_config.json").read_text())["lora_alpha"] == config["lora_alpha"]


def test_a_dora_adapter_is_refused_for_gguf_lora(lora_run, tiny_model_dir, tmp_path, capsys):
    import shutil

    _, run = lora_run
    copy = tmp_path / "dora"
    shutil.copytree(run / "adapter", copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "adapter_model.safetensors")  # a whole DoRA adapter: a magnitude per LoRA module
    magnitudes = {key.replace(".lora_B.weight", ".lora_magnitude_vector"): torch.ones(value.shape[0])
                  for key, value in weights.items() if key.endswith(".lora_B.weight")}
    save_file({**weights, **magnitudes}, str(copy / "adapter_model.safetensors"), metadata={"format": "pt"})
    assert run_tiny(tiny_model_dir, tmp_path / "o", "--mode", "export", "--adapter", str(copy),
                    **{"export.formats": "[gguf_lora]"}) == 2
    err = capsys.readouterr().err
    assert "uses use_dora, which a llama.cpp LoRA file cannot express" in err and "Traceback" not in err
    assert not list((tmp_path / "o").rglob("*.gguf"))


def _llama_cpp():
    try:
        import llama_cpp
    except Exception as err:  # not installed, or its shared library does not load
        pytest.skip(f"llama-cpp-python cannot be imported ({type(err).__name__}: {err}); it builds llama.cpp on "
                    "install: CMAKE_BUILD_PARALLEL_LEVEL=4 pip install llama-cpp-python")
    return llama_cpp


def _llama_cpp_greedy(llama_cpp, model: str, prompt_ids: list[int], n: int, lora: str | None = None) -> list[int]:
    llm = llama_cpp.Llama(model_path=model, lora_path=lora, n_ctx=256, n_threads=2, seed=0, verbose=False,
                          logits_all=False)
    tokens = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == n:
            break
    llm.close()
    return tokens


@pytest.mark.slow
def test_llama_cpp_answers_with_the_trained_models_greedy_tokens(lora_run, lora_export, tiny_model_dir, converter,
                                                                 monkeypatch, tmp_path):
    """llama.cpp itself, through llama-cpp-python: the merged GGUF, and a GGUF of the base model with the LoRA GGUF
    applied, give the greedy tokens of the trained model (base + adapter in transformers)."""
    llama_cpp = _llama_cpp()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, run = lora_run
    merged_export = _export_lora(tiny_model_dir, out, run, converter, monkeypatch, "gguf")
    base_gguf = tmp_path / "base-f32.gguf"
    subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(tiny_model_dir), "--outfile",
                    str(base_gguf), "--outtype", "f32"], check=True, capture_output=True)

    tokenizer = AutoTokenizer.from_pretrained(str(run / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trained = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    lora_file = lora_export / json.loads((lora_export / "export_report.json").read_text())["gguf_lora"]["file"]
    merged_file = next((merged_export / "gguf").glob("*.gguf"))
    for question in ("What causes anaemia?", "Is aspirin an anticoagulant?"):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected = greedy(trained, tokenizer, prompt, n=12)
        with trained.disable_adapter():
            assert greedy(trained, tokenizer, prompt, n=12) != expected  # the adapter matters
        assert _llama_cpp_greedy(llama_cpp, str(merged_file), ids, 12) == expected
        assert _llama_cpp_greedy(llama_cpp, str(base_gguf), ids, 12, lora=str(lora_file)) == expected
        assert _llama_cpp_greedy(llama_cpp, str(base_gguf), ids, 12) != expected  # llama.cpp applied the LoRA


def test_gguf_lora_without_the_lora_converter_says_how_to_get_it_and_exports_the_rest(lora_run, tiny_model_dir,
                                                                                      tmp_path, monkeypatch, capsys):
    out, run = lora_run
    older = tmp_path / "llama.cpp"  # a checkout from before convert_lora_to_gguf.py, found in the working folder
    older.mkdir()
    (older / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(backends, "CACHE_DIR", tmp_path / "cache")  # not the converter the other tests fetch
    assert run_tiny(tiny_model_dir, out, "--mode", "export", "--adapter", str(run), **{"export.formats": "[adapter,gguf_lora]"}) == 0
    said = capsys.readouterr()
    assert "no GGUF LoRA file (convert_lora_to_gguf.py not found). GGUF export uses llama.cpp's converter" in (
        said.out + said.err)
    export = max(run.glob("export*"), key=lambda p: p.stat().st_mtime)
    report = json.loads((export / "export_report.json").read_text())
    assert "skipped" in report["gguf_lora"] and (export / "adapter" / "adapter_model.safetensors").is_file()
