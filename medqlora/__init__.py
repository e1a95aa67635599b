"""medqlora: QLoRA fine-tuning of LLMs on medical data, Unsloth first, Hugging Face as fallback."""

__version__ = "0.1.0"
