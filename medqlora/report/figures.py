"""Figures saved as PNG through the run folder's one atomic writer (no link at the path is followed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_png(fig: Any, path: Path) -> None:
    """The figure as PNG bytes, written through the run folder's writer (no link at ``path`` is followed)."""
    import io

    import matplotlib.pyplot as plt

    from ..runs import write_file_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_file_bytes(path, buffer.getvalue())
