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
        f"SETTINGS = {{'training.max_steps': 2, 'data.datasets.0.max_samples': 8, 'eval.benchmarks.0.max_items': 6,"
        f" 'generation.max_new_tokens': 12, 'export.compare_prompts': 2, 'export.compare_tokens': 8,"
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
    assert "| pubmedqa | 6 | likelihood |" in shown
    assert "consult a healthcare professional" in shown
    assert "adapter saved in" in shown
    assert "| merged (dequantized base + adapter) |" in shown and "| 2/2 |" in shown  # CPU fp32: identical
    assert (run / "export" / "merged" / "config.json").is_file()
