"""medqlora: QLoRA fine-tuning of LLMs on medical data, Unsloth first, Hugging Face as fallback.

    import medqlora
    from medqlora.config import load_config
    run = medqlora.run_full(load_config(None))  # run.path, run.adapter, run.metrics
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Options", "Run", "run_full", "run_mode"]


def __getattr__(name: str) -> Any:  # the recipe loads on first use: `import medqlora` stays light
    if name in __all__:
        from . import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'medqlora' has no attribute {name!r}")
