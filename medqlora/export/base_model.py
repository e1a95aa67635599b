"""The base model of an export: model.name resolved (a GGUF file converted) once, and the tokenizer training used
loaded once, each when a format first needs it (an adapter-only export resolves nothing it does not use)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from .. import backends, json_text
from ..config import KitConfig


class ExportBase:
    def __init__(self, cfg: KitConfig, adapter: Path) -> None:
        self.cfg, self.adapter = cfg, adapter

    @cached_property
    def source(self) -> str:
        """What from_pretrained loads the base model from (backends.resolve_model_source)."""
        return backends.resolve_model_source(self.cfg.model.name)

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer saved with the adapter (the chat template and eos used in training); the base model's,
        which training used, when the adapter folder has none or lacks its chat template."""
        source = self.adapter if has_tokenizer(self.adapter) else self.source
        return backends.load_tokenizer(self.cfg, str(source))


def has_tokenizer(adapter: Path) -> bool:
    """Whether the adapter folder holds a tokenizer with its chat template (as training saves it)."""
    config = adapter / "tokenizer_config.json"
    if not config.is_file():
        return False
    if (adapter / "chat_template.jinja").is_file() or (adapter / "chat_template.json").is_file():
        return True
    try:
        return bool(json_text.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False
