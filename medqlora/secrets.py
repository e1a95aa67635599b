"""Credentials come from the environment only and never reach logs, manifests or error messages."""

from __future__ import annotations

import logging
import os
import re

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD")
_TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{20,})\b")


def redact(text: str) -> str:
    """``text`` with every credential from the environment, and anything shaped like an HF token, masked."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, f"<{name}>")
    return _TOKEN_SHAPES.sub("<token>", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True
