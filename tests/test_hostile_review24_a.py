"""Round 24 of the hostile review: a credential's value reached messages lower-cased (a PubMedQA label is compared
lower-cased) or escaped (a backslash doubled in a quoted path); every form of it is masked now."""

import json

import pytest

from medqlora.secrets import contains_secret, redact

from .conftest import assert_one_message, kit_argv, run_cli

PASSWORD = "Winter2026Secret"
ESCAPED = "Tr0ub4dor\\3xyzQ"  # one backslash


@pytest.mark.parametrize("shown", [PASSWORD, PASSWORD.lower(), PASSWORD.upper(), "winter2026SECRET"])
def test_a_credential_is_masked_in_any_case(monkeypatch, shown):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert redact(f"label '{shown}' is not yes/no/maybe") == "label '<MLFLOW_TRACKING_PASSWORD>' is not yes/no/maybe"
    assert contains_secret(shown) == "MLFLOW_TRACKING_PASSWORD"


@pytest.mark.parametrize("shown", [ESCAPED, ESCAPED.replace("\\", "\\\\"), "Tr0ub4dor%5C3xyzQ"])
def test_a_credential_is_masked_as_repr_json_and_urls_escape_it(monkeypatch, shown):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ESCAPED)
    assert redact(f"got '/data/x-{shown}.jsonl'") == "got '/data/x-<MLFLOW_TRACKING_PASSWORD>.jsonl'"


def test_a_plain_word_stays_when_no_credential_is_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert redact("winter2026secret") == "winter2026secret"


def test_a_label_holding_the_password_is_not_printed_lower_cased(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    source = tmp_path / "pq.jsonl"
    rows = [{"question": f"Does drug {i} lower blood pressure in adults?", "context": "A trial.",
             "long_answer": "It does.", "final_decision": "yes" if i != 3 else PASSWORD} for i in range(16)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "pubmedqa"}))
    assert result.code == 2
    assert_one_message(result.err, "'<MLFLOW_TRACKING_PASSWORD>' is not yes/no/maybe")
    assert PASSWORD.lower() not in (result.err + result.out).lower()
