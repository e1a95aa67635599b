"""The registries of dataset formats and benchmark kinds are the one source of the config's allowed values,
the prompt_template placeholders, the benchmark loaders and the tables of docs/formats.md."""

import typing
from pathlib import Path

import pytest

from medqlora import data, evaluate, formats
from medqlora.config import TEMPLATE_FIELDS, BenchmarkSpec, DatasetSpec, load_config
from medqlora.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


def test_the_docs_tables_are_the_registries():
    assert formats.markdown_tables() in DOCS.read_text(), "run: python -m medqlora.formats, and paste it into " \
        "docs/formats.md"


def test_the_config_accepts_exactly_the_registered_names():
    allowed = typing.get_args(DatasetSpec.model_fields["format"].annotation)
    assert allowed == tuple(formats.DATASET_FORMATS)
    assert set(allowed) >= {"pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat", "prompt_answer",
                            "preference"}
    assert typing.get_args(BenchmarkSpec.model_fields["kind"].annotation) == tuple(formats.BENCHMARK_KINDS)
    assert TEMPLATE_FIELDS == {n: set(f.placeholders or ()) for n, f in formats.DATASET_FORMATS.items()}


def test_every_format_has_its_handler_and_every_kind_its_loader_and_row_format():
    assert data.FORMATS == {n: f.handler for n, f in formats.DATASET_FORMATS.items()}
    assert set(evaluate.ITEM_LOADERS) == set(formats.BENCHMARK_KINDS)
    assert {k.reads for k in formats.BENCHMARK_KINDS.values()} <= set(formats.DATASET_FORMATS)


@pytest.mark.parametrize("fmt", [n for n, f in formats.DATASET_FORMATS.items() if not f.placeholders])
def test_a_prompt_template_on_a_format_without_one_is_one_config_error(fmt):
    with pytest.raises(ConfigError, match=f"the {fmt} format .*it has no prompt_template"):
        load_config(None, [f"data.datasets=[{{source: x.jsonl, format: {fmt}, prompt_template: '{{question}}'}}]"])


def test_a_format_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        formats.dataset_format("pubmedqa", columns="", target="", shape="", placeholders=None)(lambda r, s: None)
