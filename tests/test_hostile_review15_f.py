"""Credentials inside URLs that a user puts in the config: a token given as the URL's user name (GitHub's form) is
masked in every message, as a URL's password already was."""

import pytest

from medqlora.cli import main
from medqlora.secrets import contains_secret, redact

from .conftest import assert_one_message, kit_argv

GITHUB_TOKEN = "ghp_AbCdEf1234567890AbCdEf1234567890abcd"


@pytest.mark.parametrize("text,shown", [
    (f"https://{GITHUB_TOKEN}@example.com/data.jsonl", "https://<credentials>@example.com/data.jsonl"),
    ("https://user:s3cret-pass@example.com/x", "https://user:<password>@example.com/x"),
    (f"token {GITHUB_TOKEN} in text", "token <token> in text"),
    ("https://example.com/data.jsonl", "https://example.com/data.jsonl"),
])
def test_credentials_in_urls_and_token_shapes_are_masked(text, shown):
    assert redact(text) == shown


def test_a_github_token_is_named_as_an_access_token():
    assert contains_secret(f"x {GITHUB_TOKEN} y") == "an access token"
    assert contains_secret("no credentials here") is None


def test_a_dataset_url_carrying_a_token_as_its_user_never_prints_it(tiny_model_dir, tmp_path, capsys):
    source = f"https://{GITHUB_TOKEN}@example.com/data.jsonl"
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                    "--set", f"data.datasets=[{{source: '{source}', format: instruction}}]")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert GITHUB_TOKEN not in captured.out + captured.err
    assert_one_message(captured.err, "<credentials>@example.com")
