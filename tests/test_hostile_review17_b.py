"""Hostile round 17, secrets: credentials in query parameters that the masked list did not name (GitLab's
private_token, Azure Functions' code, x-api-key) were printed, written into run.log and manifest.json, and the start
of one reached the run folder's name."""

import pytest

from medqlora.cli import main
from medqlora.secrets import redact

from .conftest import kit_argv

GITLAB_TOKEN = "glpat-Ab12Cd34Ef56Gh78Ij90"
AZURE_KEY = "Q2xhc3NpY0F6dXJlRnVuY3Rpb25LZXk5ODc2NTQzMjE="


@pytest.mark.parametrize("text,shown", [
    (f"https://gitlab.com/api/v4/projects/7/repository/files/d.jsonl/raw?ref=main&private_token={GITLAB_TOKEN}",
     "https://gitlab.com/api/v4/projects/7/repository/files/d.jsonl/raw?ref=main&private_token=<credentials>"),
    (f"https://myfn.azurewebsites.net/api/data.jsonl?code={AZURE_KEY}",
     "https://myfn.azurewebsites.net/api/data.jsonl?code=<credentials>"),
    ("https://api.example.com/d.jsonl?x-api-key=9f8e7d6c5b4a39281706f5e4d3c2b1a0&page=2",
     "https://api.example.com/d.jsonl?x-api-key=<credentials>&page=2"),
    ("https://h.example/a.jsonl?Ocp-Apim-Subscription-Key=abcdef0123456789",
     "https://h.example/a.jsonl?Ocp-Apim-Subscription-Key=<credentials>"),
    ("https://h.example/a.jsonl?client_assertion_jwt=abc.def.ghi", "https://h.example/a.jsonl?client_assertion_jwt=<credentials>"),
    (f"a GitLab token {GITLAB_TOKEN} pasted", "a GitLab token <token> pasted"),
    # no credential: kept as written
    ("https://example.com/rows.jsonl?split=train&page=2&lang=en", "https://example.com/rows.jsonl?split=train&page=2&lang=en"),
])
def test_credentials_in_any_credential_named_query_parameter_are_masked(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("source, secret", [
    (f"https://gitlab.com/api/v4/projects/7/repository/files/d.jsonl/raw?ref=main&private_token={GITLAB_TOKEN}",
     GITLAB_TOKEN),
    (f"https://myfn.azurewebsites.net/api/data.jsonl?code={AZURE_KEY}", AZURE_KEY),
])
def test_a_data_url_with_a_credential_parameter_never_prints_writes_or_names_a_folder_after_it(tiny_model_dir, tmp_path,
                                                                                                capsys, source, secret):
    out = tmp_path / "out"
    assert main(kit_argv(tiny_model_dir, out, "--mode", "train", "--set",
                         f"data.datasets=[{{source: '{source}', format: instruction}}]")) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err and "=<credentials>" in captured.err
    assert secret[:8] not in captured.out + captured.err
    for path in out.rglob("*"):
        assert secret[:6] not in path.name and "token" not in path.name and "code" not in path.name
        if path.is_file():
            assert secret[:8] not in path.read_text(errors="replace"), path
