"""GPU and host memory figures, the same ones a Colab user reads off the notebook."""

from __future__ import annotations

import resource
import sys
from typing import Any

GIB = 1024**3


def peak_rss_gib() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(usage / (1024**3 if sys.platform == "darwin" else 1024**2), 3)


def snapshot() -> dict[str, Any]:
    """Current and peak memory of this process: GPU when there is one, host RSS always."""
    import torch

    figures: dict[str, Any] = {"host_peak_rss_gib": peak_rss_gib()}
    if not torch.cuda.is_available():
        return figures
    device = torch.cuda.current_device()  # each process's own GPU when several share the machine
    total = torch.cuda.get_device_properties(device).total_memory
    peak = torch.cuda.max_memory_reserved()
    figures.update(
        gpu_name=torch.cuda.get_device_name(device),
        gpu_total_gib=round(total / GIB, 3),
        gpu_reserved_gib=round(torch.cuda.memory_reserved() / GIB, 3),
        gpu_allocated_gib=round(torch.cuda.memory_allocated() / GIB, 3),
        gpu_peak_reserved_gib=round(peak / GIB, 3),
        gpu_peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 3),
        gpu_peak_percent_of_card=round(100 * peak / total, 1),
    )
    return figures


def training_report(after_load: dict[str, Any], after_train: dict[str, Any]) -> dict[str, Any]:
    """memory.json: what loading took, what training added on top, and the peak."""
    report: dict[str, Any] = {"after_load": after_load, "after_training": after_train}
    if "gpu_total_gib" in after_train:
        load = after_load["gpu_reserved_gib"]
        peak = after_train["gpu_peak_reserved_gib"]
        report["summary"] = {
            "gpu": after_train["gpu_name"],
            "gpu_total_gib": after_train["gpu_total_gib"],
            "reserved_after_load_gib": load,
            "peak_reserved_gib": peak,
            "training_added_gib": round(peak - load, 3),
            "peak_percent_of_card": after_train["gpu_peak_percent_of_card"],
        }
    else:
        report["summary"] = {"device": "cpu", "host_peak_rss_gib": after_train["host_peak_rss_gib"]}
    return report


def format_summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    if "gpu" in s:
        return (
            f"GPU {s['gpu']}: {s['peak_reserved_gib']:.2f} of {s['gpu_total_gib']:.1f} GiB peak reserved "
            f"({s['peak_percent_of_card']}%), {s['reserved_after_load_gib']:.2f} GiB after load, "
            f"+{s['training_added_gib']:.2f} GiB for training"
        )
    return f"CPU: peak resident memory {s['host_peak_rss_gib']:.2f} GiB"
