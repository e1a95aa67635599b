"""export.push_to_hub: the export folder, with a model card, uploaded to a Hugging Face Hub model repository.

The token comes from the environment only (HF_TOKEN, or HUGGING_FACE_HUB_TOKEN): never from a config file, never
printed. A failed upload leaves the local export as it is and says how to upload it later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, MedQLoRAError
from .messages import log
from .secrets import printable, redact

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


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
