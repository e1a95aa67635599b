"""Fuzzing: whatever the config or data file holds, the kit either accepts it or raises its own
error with a message; never a bare exception."""

import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqlora.config import load_config
from medqlora.data import format_rows, load_rows
from medqlora.errors import MedQLoRAError
from medqlora.config import DatasetSpec

KEYS = ["backend", "model", "model.name", "model.max_seq_length", "model.dtype", "lora", "lora.r", "lora.alpha",
        "lora.target_modules", "data", "data.datasets", "data.datasets.0", "data.datasets.0.format",
        "data.datasets.0.max_samples", "data.val_ratio", "training.max_steps", "training.learning_rate",
        "training.gradient_checkpointing", "eval.benchmarks", "eval.benchmarks.0.kind", "output.run_name", "nope",
        "training.nope", "data.datasets.7.source", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
# MEDQLORA_FUZZ_EXAMPLES=2000 for a longer hunt; CI runs 60 examples per test.
FUZZ = settings(max_examples=int(os.environ.get("MEDQLORA_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def only_our_errors(call) -> None:
    try:
        call()
    except MedQLoRAError as err:
        assert str(err).strip()


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_any_yaml_mapping_is_accepted_or_explained(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    only_our_errors(lambda: load_config(path))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_file_is_accepted_or_explained(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    only_our_errors(lambda: load_config(path))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=15)), max_size=4))
def test_any_overrides_are_accepted_or_explained(pairs):
    only_our_errors(lambda: load_config(None, [f"{k}={v}" for k, v in pairs]))


record = st.dictionaries(st.sampled_from(["question", "answer", "Question", "Complex_CoT", "Response", "options",
                                          "answer_idx", "messages", "instruction", "output", "final_decision",
                                          "context", "pubid", "long_answer"]), values, max_size=6)


@FUZZ
@given(st.lists(st.one_of(record, values), max_size=4),
       st.sampled_from(["pubmedqa", "medical_o1", "multiple_choice", "instruction", "chat"]))
def test_any_jsonl_records_are_accepted_or_explained(tmp_path_factory, records, fmt):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = DatasetSpec(source=str(path), format=fmt)
    only_our_errors(lambda: format_rows(spec, load_rows(spec)))


@FUZZ
@given(st.binary(max_size=120))
def test_any_bytes_as_jsonl_are_accepted_or_explained(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_bytes(blob)
    only_our_errors(lambda: load_rows(DatasetSpec(source=str(path), format="instruction")))
