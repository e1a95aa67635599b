"""The Colab notebook runs top to bottom on the CPU with the offline default (parameters cell replaced)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_runs_top_to_bottom_on_the_offline_default(tmp_path):
    notebook = nbformat.read(ROOT / "Medical_QLoRA_Project.ipynb", as_version=4)
    [parameters] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = (
        "PRESET = None\n"
        f"SETTINGS = {{'training.max_steps': 2, 'data.datasets.0.max_samples': 2, 'eval.benchmarks.0.max_items': 3,"
        f" 'training.micro_batch_size': 1, 'model.max_seq_length': 256, 'eval.max_length': 256,"
        f" 'generation.max_new_tokens': 8,"
        f" 'export.compare_prompts': 2, 'export.compare_tokens': 8,"
        f" 'output.dir': '{tmp_path}'}}\n"
        "KIT_REPO = ''\nPUSH_TO_HUB = ''\nEXPORT_FORMATS = ['adapter', 'merged']\n"
    )
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    shown = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    [run] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert f"run folder: {run}" in shown
    assert "| host_peak_rss_gib |" in shown or "| peak_reserved_gib |" in shown
    assert "| pubmedqa | 3 | likelihood |" in shown
    assert "consult a healthcare professional" in shown
    assert "adapter saved in" in shown
    assert "| merged (dequantized base + adapter) |" in shown and "| 2/2 |" in shown  # CPU fp32: identical
    assert (run / "export" / "merged" / "config.json").is_file()


PREFERENCE_ROWS = [{"prompt": f"Case {i}: first-line drug for anaphylaxis?", "chosen": "Intramuscular adrenaline.",
                    "rejected": "An oral antihistamine."} for i in range(8)]


@pytest.mark.parametrize("method", ["grpo", "dpo", "orpo"])
def test_notebook_trains_with_the_methods_after_sft(tiny_model_dir, tmp_path, method):
    """GRPO (its offline preset), DPO and ORPO run from the notebook as from the command line (on the tiny model)."""
    import json

    notebook = nbformat.read(ROOT / "Medical_QLoRA_Project.ipynb", as_version=4)
    [parameters] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    settings = {"model.name": str(tiny_model_dir), "model.max_seq_length": 256, "training.max_steps": 2,
                "eval.benchmarks.0.max_items": 4, "generation.max_new_tokens": 8, "output.dir": str(tmp_path / "out")}
    if method == "grpo":
        preset = "'smollm2_grpo_medmcqa'"
        settings.update({"data.datasets.0.max_samples": 8, "grpo.max_completion_length": 8, "grpo.overlong_buffer": 2})
    else:
        preset = "None"
        rows = tmp_path / "prefs.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in PREFERENCE_ROWS))
        settings.update({"training.method": method, "data.datasets": f"[{{source: {rows}, format: preference}}]",
                         "preference.max_prompt_length": 128,
                         "training.micro_batch_size": 4})
    parameters.source = (f"PRESET = {preset}\nSETTINGS = {settings!r}\n"
                         "KIT_REPO = ''\nPUSH_TO_HUB = ''\nEXPORT_FORMATS = ['adapter']\n")
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    [run] = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["method"] == method and metrics["steps"] == 2
    if method == "grpo":
        assert {"rewards/multiple_choice/mean", "rewards/overlong/mean"} <= set(metrics["rewards"])
    assert json.loads((run / "manifest.json").read_text())["status"] == "trained"
