"""Inputs of a hostile review that the kit handled badly, each with the behaviour it has now (docs/errors.md YB rows)."""

import pytest

from .conftest import assert_one_message, run_cli


def test_the_model_card_names_a_local_dataset_by_its_name_alone_even_once_the_file_is_gone(tmp_path):
    """Patient data moved away after training: the card to upload showed the data's full local path, since only a
    file still there was shown by its name."""
    from medqlora.config import load_config
    from medqlora.report.model_card import _data_lines

    present = tmp_path / "alice" / "ward7.jsonl"
    present.parent.mkdir()
    present.write_text('{"instruction": "q", "output": "a"}\n')
    gone = tmp_path / "alice" / "ward8_patients.jsonl"
    cfg = load_config(None, [f"data.datasets=[{{source: {present}, format: instruction}}, "
                             f"{{source: {gone}, format: instruction}}, {{source: ~/notes/ward9, format: instruction}},"
                             " {source: qiaojin/PubMedQA, format: pubmedqa, subset: pqa_labeled}]"])
    lines = _data_lines(cfg)
    assert lines[0].startswith("- local file ward7.jsonl (format instruction")
    assert lines[1].startswith("- local file ward8_patients.jsonl (format instruction")
    assert lines[2].startswith("- local file ward9 (format instruction")
    assert lines[3].startswith("- qiaojin/PubMedQA (format pubmedqa")
    assert not any(str(tmp_path) in line or "~" in line for line in lines)
