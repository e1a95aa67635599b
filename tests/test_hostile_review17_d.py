"""Hostile round 17, data: one row lacking a field every other row has was told to map a column with 'columns:',
which the file (whose column is right) does not need."""

import json

import pytest

from medqlora.cli import main

from .conftest import assert_one_message, kit_argv


@pytest.mark.parametrize("fmt, rows, lacking", [
    ("medical_o1", [{"Question": f"Q{i}?", "Complex_CoT": "t", "Response": "x"} for i in range(3)]
     + [{"Question": "Q3?", "Response": "x"}], "'Complex_CoT'"),
    ("instruction", [{"instruction": "Name a drug.", "output": "Aspirin."}, {"output": "Aspirin."}], "'instruction'"),
])
def test_one_row_lacking_a_field_the_others_have_is_told_to_fill_it_in(tiny_model_dir, tmp_path, capsys, fmt, rows,
                                                                       lacking):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.datasets": f"[{{source: '{data}', format: {fmt}}}]"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, f"row {len(rows)}: has no column {lacking}")
    assert "Other rows have it (row 1 does): fill it in in this row, or remove the row." in err
    assert "columns:" not in err


def test_a_file_without_the_column_at_all_is_still_told_to_map_one(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "output": "x"}) + "\n" for i in range(3)))
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.datasets": f"[{{source: '{data}', format: instruction}}]"}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, "Map yours with 'columns:'")


def test_a_csv_quote_never_closed_names_the_line_it_opens_on(tiny_model_dir, tmp_path, capsys):
    """It named the file's last line, where nothing is wrong, and did not say a quote was left open."""
    data = tmp_path / "rows.csv"
    data.write_text("instruction,output\n" + "".join(f"Q{i},A{i}\n" for i in range(1, 5)) + 'Q5,"see note,A5\n'
                    + "".join(f"Q{i},A{i}\n" for i in range(6, 20)))
    code = main(kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                         **{"data.datasets": f"[{{source: '{data}', format: instruction}}]"}))
    assert code == 2
    assert_one_message(capsys.readouterr().err, f"{data}:6: a quoted cell opened in the record on this line is never "
                                                "closed (the file ends inside it): close the quote, or remove it")


@pytest.mark.parametrize("rejected", [
    "Yes, aspirin is an\u200b antiplatelet drug.",  # a zero-width space
    "Yes, aspirin is an antiplatelet drug, cafe\u0301.",  # é as e and a combining accent
    "Yes, aspirin is an antiplatelet drug, caf\uff45\u0301.",  # a full-width e
])
def test_preference_replies_that_read_the_same_are_refused(tmp_path, rejected):
    """A pair differing only by an invisible character or the Unicode form of a letter taught a preference between
    two encodings of one reply."""
    from medqlora.config import DatasetSpec
    from medqlora.data import format_rows
    from medqlora.errors import DataError

    chosen = "Yes, aspirin is an antiplatelet drug." if "caf" not in rejected else \
        "Yes, aspirin is an antiplatelet drug, caf\u00e9."
    with pytest.raises(DataError, match="row 1: the chosen and rejected replies are the same text .*nothing to prefer"):
        format_rows(DatasetSpec(source="p.jsonl", format="preference"),
                    [{"prompt": "Is aspirin an antiplatelet drug?", "chosen": chosen, "rejected": rejected}])
    different = format_rows(DatasetSpec(source="p.jsonl", format="preference"),
                            [{"prompt": "Is aspirin an antiplatelet drug?", "chosen": chosen, "rejected": "No."}])
    assert len(different) == 1


def test_a_grpo_reward_named_for_rows_the_data_lacks_is_said_to_be_left_out(tmp_path, capsys):
    """grpo.rewards={pubmedqa_label: 1.0} on MedMCQA rows was dropped from the plan's rewards without a word."""
    code = main(["--mode", "train", "--dry-run", "--config", "smollm2_grpo_medmcqa", "--output-dir", str(tmp_path),
                 "--set", "grpo.rewards={pubmedqa_label: 1.0}"])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out[out.index("{"):])
    [grpo] = [value for value in _values(plan) if isinstance(value, dict) and "rewards_never_scoring" in value]
    assert grpo["rewards_never_scoring"] == {"pubmedqa_label": "1.0: left out, the training data holds no pubmedqa rows"}
    assert "pubmedqa_label" not in grpo["rewards"]
    assert main(["--mode", "train", "--dry-run", "--config", "smollm2_grpo_medmcqa", "--output-dir", str(tmp_path)]) == 0
    assert "rewards_never_scoring" not in capsys.readouterr().out  # the preset sets no reward for rows it lacks


def _values(tree):
    yield tree
    for value in tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else ():
        yield from _values(value)


def test_wandb_unreachable_as_training_begins_is_one_message(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A WANDB_API_KEY on a machine that cannot reach W&B: wandb.init's CommError ended the run as an internal error
    (exit 1), advising code the user does not write."""
    wandb = pytest.importorskip("wandb")
    key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)

    def unreachable(*_args, **_kwargs):
        raise wandb.errors.CommError('Timed out while retrying: Post "https://api.wandb.ai/graphql": dial tcp: lookup '
                                     "api.wandb.ai: no such host\nConsider increasing the init_timeout setting")

    monkeypatch.setattr(wandb, "init", unreachable)
    out = tmp_path / "out"
    code = main(kit_argv(tiny_model_dir, out, "--mode", "train", **{"training.report_to": "[wandb]",
                                                                       "output.run_name": "wb"}))
    err = capsys.readouterr().err
    assert code == 2
    assert_one_message(err, "training.report_to: wandb failed as training began (CommError: Timed out while retrying")
    assert "WANDB_MODE=offline" in err and "internal error" not in err and "init_timeout" not in err
    assert json.loads((out / "wb" / "manifest.json").read_text())["status"] == "failed"
    assert key not in err
