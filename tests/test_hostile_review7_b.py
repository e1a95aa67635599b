"""Hostile and unlucky inputs around evaluation files and exports: an MMLU subject in both layouts, a GGUF type
whose quantizer is missing, the machine's paths in an export meant for the Hub, and where a second export goes."""

import csv
import json
import re
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import HfApi

from .conftest import assert_one_message, kit_argv, run_cli
from .test_adapters import make_adapter

MMLU_ROW = ["Which bone is the longest in the human body?", "Femur", "Tibia", "Humerus", "Radius", "A"]


def _mmlu_in_both_layouts(tmp_path: Path) -> Path:
    import datasets

    folder = tmp_path / "mmlu"
    (folder / "anatomy").mkdir(parents=True)
    with (folder / "anatomy_test.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(MMLU_ROW)
    rows = [{"question": "The heart has how many chambers?", "choices": ["Two", "Three", "Four", "Five"], "answer": 2}]
    datasets.Dataset.from_list(rows).to_parquet(folder / "anatomy" / "test-00000-of-00001.parquet")
    return folder


def test_an_mmlu_subject_in_both_layouts_is_refused_naming_both_files(tiny_model_dir, tmp_path, capsys):
    folder = _mmlu_in_both_layouts(tmp_path)
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "eval", "--adapter", "none",
                    **{"eval.harness": "lm-eval", "eval.lm_eval.tasks": "[mmlu_anatomy]",
                       "eval.lm_eval.mmlu_dir": str(folder)})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "holds the subject in both layouts")
    assert "anatomy_test.csv" in result.err and "test-00000-of-00001.parquet" in result.err
    (folder / "anatomy_test.csv").unlink()  # one layout left: read
    assert run_cli(capsys, argv).code == 0


def _llama_cpp_without_quantizer(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "llama.cpp"
    folder.mkdir()
    (folder / "convert_hf_to_gguf.py").write_text("raise SystemExit('not run by these tests')\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(folder))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no llama-quantize on PATH either
    return folder


def _export_argv(model_dir: Path, tmp_path: Path, adapter: Path, *args: str, **values: str) -> list[str]:
    return kit_argv(model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter), *args, **values)


def test_a_gguf_type_that_needs_llama_quantize_is_refused_at_dry_run_and_before_the_export(tiny_model_dir, tmp_path,
                                                                                          capsys, monkeypatch):
    folder = _llama_cpp_without_quantizer(tmp_path, monkeypatch)
    adapter = make_adapter(tmp_path / "run" / "adapter", str(tiny_model_dir))
    quantized = {"export.formats": "[gguf]", "export.gguf_type": "q4_k_m"}
    for args in (("--dry-run",), ()):
        result = run_cli(capsys, _export_argv(tiny_model_dir, tmp_path, adapter, *args, **quantized))
        assert result.code == 2
        assert_one_message(result.err, "export.gguf_type q4_k_m needs llama.cpp's llama-quantize program")
        assert "cmake --build build --target llama-quantize" in result.err and "q8_0, f16, bf16, f32" in result.err
    assert not list((tmp_path / "run").glob("*export*"))  # refused before any export work
    # a type the converter writes itself needs no quantizer; with llama-quantize built, q4_k_m passes too
    direct = run_cli(capsys, _export_argv(tiny_model_dir, tmp_path, adapter, "--dry-run",
                                          **{**quantized, "export.gguf_type": "q8_0"}))
    assert direct.code == 0, direct.err
    (folder / "build" / "bin").mkdir(parents=True)
    (folder / "build" / "bin" / "llama-quantize").write_text("")
    assert run_cli(capsys, _export_argv(tiny_model_dir, tmp_path, adapter, "--dry-run", **quantized)).code == 0


def test_an_export_for_the_hub_publishes_no_path_of_this_machine(tiny_model_dir, tmp_path, capsys, monkeypatch):
    uploaded: dict[str, str] = {}

    def upload_folder(_api, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded.update({str(f.relative_to(folder)): f.read_text(errors="replace") for f in folder.rglob("*")
                         if f.is_file() and f.suffix in (".json", ".md")})

    monkeypatch.setattr(HfApi, "create_repo", lambda _api, repo_id, **_kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the stand-in Hub is reachable
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Zq4" * 12)
    adapter = make_adapter(tmp_path / "my-run" / "adapter", str(tiny_model_dir))
    result = run_cli(capsys, _export_argv(tiny_model_dir, tmp_path, adapter, **{
        "export.push_to_hub": "my-lab/tiny", "export.hub_private": "false"}))
    assert result.code == 0, result.err
    report = json.loads(uploaded["export_report.json"])
    assert report["adapter"] == "my-run/adapter"  # named by its run folder, not by the path to it
    assert report["base_model"] == f"{tiny_model_dir.name} (a local folder)"
    published = uploaded
    assert {"export_report.json", "export_report.md", "README.md", "adapter/README.md",
            "adapter/adapter_config.json"} <= set(published)
    for name, text in published.items():
        assert str(tmp_path) not in text and str(tiny_model_dir) not in text, name
    assert "# Export of my-run/adapter" in uploaded["export_report.md"]
    assert "adapter/adapter_config.json names the local base model by its folder name alone" in result.out  # said


def test_the_docs_name_the_folder_a_second_export_writes(tmp_path):
    from medqlora.runs import RunDir

    (tmp_path / "export").mkdir()
    assert re.fullmatch(r"export-\d{8}-\d{6}", RunDir(tmp_path).unique("export"))
    for doc in ("training.md", "errors.md"):
        text = (Path(__file__).parents[1] / "docs" / doc).read_text(encoding="utf-8")
        assert "export-<time>/" in text and "export-2/" not in text, doc


def test_a_kit_cache_that_is_a_file_is_named_when_the_llama_cpp_converter_is_looked_for(tiny_model_dir, tmp_path,
                                                                                         capsys, monkeypatch):
    from medqlora import backends

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./llama.cpp or ~/llama.cpp: the kit's cache is where the converter would be
    monkeypatch.setenv("HOME", str(tmp_path))
    a_file = tmp_path / "cache-file"
    a_file.write_text("")
    monkeypatch.setattr(backends, "CACHE_DIR", a_file)
    adapter = make_adapter(tmp_path / "run" / "adapter", str(tiny_model_dir))
    result = run_cli(capsys, _export_argv(tiny_model_dir, tmp_path, adapter, "--dry-run",
                                          **{"export.formats": "[gguf_lora]"}))
    assert result.code == 2
    assert_one_message(result.err, f"MEDQLORA_CACHE: {a_file} cannot be the kit's cache folder: it is not a folder")
