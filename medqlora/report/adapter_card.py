"""What a run's records say of how its adapter was trained, for the cards written with it (README.md in the run's
adapter folder, in an export, and the Hub's model card): the training method, the quantization the base model
was actually loaded with (none on a CPU, whatever model.load_in_4bit says), and whether training was interrupted
(Ctrl-C, SIGTERM) with the adapter saved so far."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import backends, json_text
from ..run_files import Files
from ..secrets import printable

METHODS = {"sft": "supervised fine-tuning (SFT)", "dpo": "direct preference optimization (DPO)",
           "orpo": "odds ratio preference optimization (ORPO)", "grpo": "group relative policy optimization (GRPO)"}


@dataclass(frozen=True)
class TrainingRecord:
    """How an adapter was trained, as its run's manifest.json records it (None: not recorded / unknown)."""

    method: str | None = None
    quantization: str | None = None
    quantized: bool = False
    interrupted: str | None = None  # "Interrupted (SIGTERM) at step 3": the adapter holds the training so far

    @property
    def kind(self) -> str:
        """QLoRA only where the base model was loaded quantized; LoRA otherwise (a CPU run, load_in_4bit false)."""
        return "QLoRA" if self.quantized else "LoRA"

    def lines(self) -> list[str]:
        """The card's lines on the training: method, quantization, and whether it ran to its end."""
        if self.method is None:
            return ["- Training: unknown (this adapter was not trained in one of medqlora's run folders)"]
        status = (f"**interrupted**: {printable(self.interrupted)}. This adapter holds the training done up to "
                  "then, not the whole planned run" if self.interrupted else "complete (every planned step)")
        return [f"- Method: {METHODS.get(self.method, printable(self.method))}",
                f"- Quantization of the base model in training: {self.quantization}",
                f"- Training: {status}"]


def record_of(facts: dict[str, Any]) -> TrainingRecord:
    """The TrainingRecord of a run's manifest (its dict)."""
    settings = facts.get("trained_settings") or {}
    runtime = facts.get("runtime") or {}
    method = settings.get("training.method")
    if not isinstance(method, str):
        return TrainingRecord()
    device, dtype = runtime.get("device"), runtime.get("dtype", "?")
    if device == "cuda" and settings.get("model.load_in_4bit"):
        quantization, quantized = "4-bit NF4 (bitsandbytes), LoRA on top: QLoRA", True
    elif device == "cuda":
        quantization, quantized = f"none: LoRA on {dtype} weights (model.load_in_4bit: false)", False
    else:
        quantization, quantized = (f"none: LoRA on {dtype} weights on the {printable(str(device or '?')).upper()} "
                                   "(4-bit quantization needs a CUDA GPU)"), False
    return TrainingRecord(method, quantization, quantized, _interruption(facts))


def _interruption(facts: dict[str, Any]) -> str | None:
    """How training was interrupted, when it was (not when the work after training was: its adapter is whole)."""
    if facts.get("status") != "interrupted" or facts.get("stage") or facts.get("failed_after"):
        return None
    error = str(facts.get("error") or "interrupted")
    return error.split(":", 1)[0].strip() or "interrupted"


def run_record(run: Path | None) -> TrainingRecord:
    """The TrainingRecord of a run folder (unknown without one, or without a readable manifest.json)."""
    if run is None:
        return TrainingRecord()
    try:
        facts = json_text.loads((run / Files.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TrainingRecord()
    return record_of(facts) if isinstance(facts, dict) else TrainingRecord()


def adapter_card(record: TrainingRecord, base: str, lora: str, loading: str, meta: str = "") -> str:
    """README.md of an adapter folder (the run's, or an export's): what it is, how it was trained, how to load it."""
    return (f"{meta}\n# {record.kind} adapter for {printable(base)}\n\nTrained with medqlora ({lora}).\n\n"
            + "\n".join(record.lines()) + "\n\nLoad it on the base model it was trained on:\n\n"
            f"```python\n{loading}```\n\nResearch use only; not medical advice.\n")


def card_meta(record: TrainingRecord, base_hub_id: str | None, peft: bool = True) -> str:
    """The card's YAML header: the tags the Hub files it under (qlora only for a quantized base) and its base."""
    import yaml

    tags = ["medical", "lora"] + (["qlora"] if record.quantized else []) + ["medqlora"]
    tags += [record.method] if record.method else []
    meta: dict[str, Any] = {"tags": tags, **({"base_model": base_hub_id} if base_hub_id else {}),
                            **({"library_name": "peft"} if peft else {})}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def loading_code(model_name: str) -> str:
    """How the model card loads the adapter: by the hub id its config names, or onto the reader's own copy of a base
    model that was a local folder (its config names the folder, not a path that exists elsewhere)."""
    tokenizer = ("tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")  # chat template used in training\n")
    if backends.published_base_name(model_name) == backends.portable_base_name(model_name):
        return ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"<this folder>\")\n{tokenizer}")
    local = printable(backends.published_base_name(model_name))
    return ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained(\"<your copy of {local}>\")  # a local model: "
            "adapter_config.json names its folder only\n"
            f"model = PeftModel.from_pretrained(base, \"<this folder>\")\n{tokenizer}")
