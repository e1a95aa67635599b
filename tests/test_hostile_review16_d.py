"""Hostile round 16, secrets: a credential in a data URL's query string (an API key as ?access_token=, a presigned
URL's signature) or in the shape of a common service's API key was printed whole and written into the failed run's
run.log and manifest.json."""

import pytest

from medqlora.cli import main
from medqlora.secrets import redact

from .conftest import kit_argv

OPENAI_KEY = "sk-proj-AbCdEfGh1234567890AbCdEfGh1234567890"


@pytest.mark.parametrize("text,shown", [
    (f"https://example.com/d.jsonl?access_token={OPENAI_KEY}", "https://example.com/d.jsonl?access_token=<credentials>"),
    ("https://b.s3.amazonaws.com/x.jsonl?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=abc123&part=1",
     "https://b.s3.amazonaws.com/x.jsonl?X-Amz-Credential=<credentials>&X-Amz-Signature=<credentials>&part=1"),
    ("https://x.blob.core.windows.net/c/d.csv?sv=2024&sig=Zm9vYmFy%3D", "https://x.blob.core.windows.net/c/d.csv?sv=2024&sig=<credentials>"),
    ("https://api.example.com/rows?api_key=abc123&format=jsonl", "https://api.example.com/rows?api_key=<credentials>&format=jsonl"),
    ("the key sk-ant-api03-AbC123456789012345678901 was used", "the key <token> was used"),
    ("aws AKIAIOSFODNN7EXAMPLE id", "aws <token> id"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c end",
     "jwt <token> end"),
    # no credential: kept as written
    ("/data/desk-2024-clinical-notes-final-version.jsonl", "/data/desk-2024-clinical-notes-final-version.jsonl"),
    ("sk-learn-classification-examples-folder", "sk-learn-classification-examples-folder"),
    ("https://example.com/rows.jsonl?split=train&page=2", "https://example.com/rows.jsonl?split=train&page=2"),
    ("training.learning_rate=0.001", "training.learning_rate=0.001"),
])
def test_credentials_in_url_queries_and_api_key_shapes_are_masked(text, shown):
    assert redact(text) == shown


def test_a_data_url_carrying_an_api_key_never_prints_or_writes_it(tiny_model_dir, tmp_path, capsys):
    source = f"https://example.com/d.jsonl?access_token={OPENAI_KEY}"
    out = tmp_path / "out"
    argv = kit_argv(tiny_model_dir, out, "--mode", "train", "--set",
                    f"data.datasets=[{{source: '{source}', format: instruction}}]")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert OPENAI_KEY not in captured.out + captured.err and "access_token=<credentials>" in captured.err
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in written if OPENAI_KEY in p.read_text(errors="replace") or "sk-proj" in str(p)]
