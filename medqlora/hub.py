"""export.push_to_hub: the export folder, with a model card, uploaded to a Hugging Face Hub model repository.

The token comes from the environment only (HF_TOKEN, or HUGGING_FACE_HUB_TOKEN): never from a config file, never
printed. A failed upload leaves the local export as it is and says how to upload it later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from . import backends
from .config import KitConfig
from .errors import ConfigError, MedQLoRAError
from .messages import log
from .run_files import Files
from .runs import RunDir
from .secrets import printable, redact

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
DISCLAIMER = ("**Not medical advice.** This model was fine-tuned for research and education. Its answers can be wrong, "
              "incomplete or outdated, and it must not be used to diagnose, treat or make decisions about patients. "
              "Consult a healthcare professional.")


def token() -> str:
    """The write token from the environment; none set stops the export before any work."""
    for name in TOKEN_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise ConfigError("export.push_to_hub needs a Hugging Face token with write access in the environment: "
                      "export HF_TOKEN=... (create one at https://huggingface.co/settings/tokens). The kit reads it "
                      "from the environment only, never from a config file. Or leave out export.push_to_hub to "
                      "export locally.")


def check_online() -> None:
    """HF_HUB_OFFLINE set: huggingface_hub would refuse the upload, after the whole export is built."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError("export.push_to_hub: HF_HUB_OFFLINE is set in the environment, so the upload would be "
                          "refused after the export is built. Unset it for this command (env -u HF_HUB_OFFLINE "
                          "python medical_qlora_finetuning.py ...), or leave out export.push_to_hub to export "
                          "locally.")


def check_endpoint() -> None:
    """HF_ENDPOINT, where set, is the address the upload goes to (a mirror or a private Hub): it must be an http(s)
    URL with a host, or the upload fails after the whole export is built."""
    from urllib.parse import urlsplit

    value = os.environ.get("HF_ENDPOINT", "")
    if not value:
        return
    try:
        parts = urlsplit(value.strip())
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        usable = False
    if not usable:
        raise ConfigError(f"export.push_to_hub: the environment variable HF_ENDPOINT={_shown_endpoint()} is not an "
                          "http:// or https:// address with a host, and the upload goes there. Fix it, or unset "
                          "HF_ENDPOINT to upload to https://huggingface.co.")


def _shown_endpoint() -> str:
    return printable(redact(os.environ.get("HF_ENDPOINT", "")), 200)


def push(repo_id: str, folder: Path, private: bool, say: Any) -> str:
    """Create the repository (private unless hub_private is false; an existing one is kept as it is) and upload the
    export folder as one commit. Any failure is one message; the local export stays where it is."""
    from huggingface_hub import HfApi

    api = HfApi(token=token())
    say(f"export: uploading {printable(folder.name)} to the Hub repository {repo_id} "
        f"({'private' if private else 'public'})")
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=f"medqlora export {folder.name}")
    except Exception as err:  # any failure of the hub or the network: the local export is kept either way
        log.error("push to %s failed: %s: %s", repo_id, type(err).__name__, err)
        raise MedQLoRAError(f"Pushing the export to the Hub repository {repo_id} failed: {_reason(err, repo_id)}. "
                            f"The export is kept in {printable(folder, 500)}; upload it later with: hf upload "
                            f"{repo_id} {printable(folder, 500)} .{' --private' if private else ''}") from None
    say(f"export: pushed to {url}")
    return str(url)


def _reason(err: Exception, repo_id: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    owner = repo_id.partition("/")[0]
    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set in the environment; unset it to reach the Hub"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status == 401:
        return "the Hub refused the token (401): check that HF_TOKEN holds a valid token"
    if status == 403:
        return (f"the token may not write to '{owner}' (403): use a token with write access (a fine-grained token "
                "needs write access to that user or organisation)")
    if status == 404:
        return f"'{owner}' was not found (404): the owner must be your user name or an organisation you belong to"
    if isinstance(err, HfHubHTTPError) and status is not None:
        return f"the Hub answered {status}: {printable(str(err), 300)}"
    where = f" at HF_ENDPOINT={_shown_endpoint()}" if os.environ.get("HF_ENDPOINT") else ""
    return (f"the Hub cannot be reached{where} ({type(err).__name__}: {printable(redact(str(err)), 200)}); check "
            + ("that address and " if where else "") + "the connection")


# ---------------------------------------------------------------- model card


def model_card(cfg: KitConfig, run: RunDir, report: dict[str, Any]) -> str:
    """README.md of the hub repository: what the files are, the data the run trained on, its results, the checks
    of the export, and the medical disclaimer."""
    base, public = backends.portable_base_name(cfg.model.name), backends.public_model_name(cfg.model.name)
    meta: dict[str, Any] = {"tags": ["medical", "lora", "qlora", "medqlora"]}
    if is_hub_id(base):
        meta["base_model"] = base
    if "adapter" in report["formats"]:
        meta["library_name"] = "peft"
    sections = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n",
        f"# {printable(public)} fine-tuned on medical data (QLoRA)\n",
        (f"LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}, trained with "
         f"medqlora. Base model: `{printable(public)}`.\n"),
        DISCLAIMER + "\n",
        "## Files\n\n" + "\n".join(_file_lines(report, is_hub_id(base))) + "\n",
        "## Training data\n\n" + "\n".join(_data_lines(cfg)) + "\n",
        "## Results\n\n" + _results(run).replace(cfg.model.name, public) + "\n",  # its title names the model
    ]
    if "merged_vs_trained" in report:
        checks = report["merged_vs_trained"]
        sections.append(f"## Export check\n\nThe merged model against the trained base + adapter: greedy replies "
                        f"identical {checks['identical_greedy_replies']}, max |logit difference| "
                        f"{checks['max_abs_logit_diff']}.\n")
    return "\n".join(sections)


def is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).expanduser().exists() or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _file_lines(report: dict[str, Any], base_on_hub: bool = True) -> list[str]:
    """``base_on_hub``: the adapter's config names its base by a hub id; else by a local folder's name alone, so the
    adapter is loaded onto the reader's own copy of that model."""
    lines = []
    if "adapter" in report["formats"]:
        load = ('`AutoPeftModelForCausalLM.from_pretrained(REPO, subfolder="adapter")`' if base_on_hub else
                '`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(YOUR_COPY_OF_THE_BASE), REPO, '
                'subfolder="adapter")` (the base was a local folder, which adapter_config.json names by its name only)')
        lines.append(f"- `adapter/`: the LoRA adapter with the tokenizer and chat template of training: {load}")
    if "merged_dtype" in report:
        lines.append(f'- `merged/`: the adapter merged into the base model ({report["merged_dtype"]}): '
                     '`AutoModelForCausalLM.from_pretrained(REPO, subfolder="merged")`')
    if "file" in report.get("gguf", {}):
        lines.append(f"- `{report['gguf']['file']}`: the merged model for llama.cpp / Ollama"
                     + (" (with an Ollama `Modelfile`)" if str(report["gguf"].get("modelfile", "")).endswith(
                         "Modelfile") else ""))
    if "file" in report.get("gguf_lora", {}):
        lines.append(f"- `{report['gguf_lora']['file']}`: the adapter alone for llama.cpp, applied to a GGUF of "
                     "the base model: `llama-cli -m BASE.gguf --lora " + report["gguf_lora"]["file"] + "`")
    lines.append("- `export_report.md` / `.json`: how each export compares with the trained model")
    return lines


def _data_lines(cfg: KitConfig) -> list[str]:
    lines = []
    for spec in cfg.data.datasets:
        local = Path(spec.source).expanduser()
        source = f"local file {local.name}" if local.exists() else spec.source  # no local paths on the Hub
        extra = "".join(f", {key} {value}" for key, value in (("subset", spec.subset), ("split", spec.split),
                                                            ("at most", spec.max_samples)) if value)
        lines.append(f"- {printable(source)} (format {spec.format}{printable(extra)}, {spec.use_for})")
    return lines


def _results(run: RunDir) -> str:
    """The newest evaluation report of the run folder and the training metrics, as the kit wrote them."""
    parts = []
    reports = sorted((f for f in run.path.glob("eval_report*.md") if f.is_file() and not f.is_symlink()),
                     key=lambda f: f.stat().st_mtime)
    if reports:
        parts.append(reports[-1].read_text(encoding="utf-8", errors="replace").replace("# ", "### ", 1))
    metrics = run.path / Files.METRICS
    if metrics.is_file() and not metrics.is_symlink():
        try:
            figures = json.loads(metrics.read_text(encoding="utf-8")).get("metrics", {})
        except (ValueError, AttributeError):
            figures = {}
        shown = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if shown:
            parts.append("Training: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return "\n\n".join(parts) if parts else "No evaluation was recorded in the run folder."
