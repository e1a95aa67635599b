"""Hostile round 16, data files: a text data file that is no text (zeros of a file made to size or a copy cut short,
a binary file, UTF-16), or a .jsonl "line" with no line break for gigabytes: each was read whole, into memory, before
its first line was checked (a 20 GB sparse file: no message after 90 s and 18.7 GB of memory)."""

import pytest

from medqlora.data import sources
from medqlora.errors import DataError

BIG = sources.SNIFF_BYTES + 1  # a small file is read whole, its own reading naming the line (tests/test_hostile_data.py)


@pytest.mark.parametrize(("suffix", "content", "said"), [
    (".jsonl", bytes(BIG), "holds a NUL byte at byte 0 (a binary file, or zeros left by a copy cut short"),
    (".json", b"[" + bytes(BIG), "holds a NUL byte at byte 1 (a binary file"),
    (".csv", b"instruction,output\n\x00\x01\x02" * (BIG // 20), "holds a NUL byte at byte 19"),
    (".jsonl", ('{"instruction": "a", "output": "b"}\n' * (BIG // 30)).encode("utf-16"), "(UTF-16 text)"),
])
def test_a_text_data_file_that_is_no_text_is_refused_from_its_start(tmp_path, suffix, content, said):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        sources._load_local(path)
    assert f"{path}: not text: it " in str(caught.value) and said in str(caught.value)
    assert f"Is it really a {suffix} file? Save it as UTF-8 text." in str(caught.value)


def test_a_sparse_file_of_a_gigabyte_is_refused_from_its_start(tmp_path):
    path = tmp_path / "sparse.jsonl"
    with path.open("wb") as handle:
        handle.truncate(1 << 30)  # zeros, taking no disk space
    with pytest.raises(DataError, match="not text: it holds a NUL byte at byte 0"):
        sources._load_local(path)


def test_a_jsonl_line_longer_than_any_record_is_refused_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LINE_LIMIT", 1000)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n' * 3 + "x" * 5000 + "\n")
    with pytest.raises(DataError) as caught:
        sources._load_local(path)
    assert str(caught.value).startswith(f"{path}:4: a line of more than 1,000 characters without a line break")
    path.write_text('{"instruction": "' + "a" * 900 + '", "output": "b"}\n')
    assert [row["output"] for row in sources._load_local(path)] == ["b"]  # a record under the limit is read


@pytest.mark.parametrize("pattern", ["clean*.jsonl", "part-?.jsonl", "rows[12].jsonl"])
def test_a_wildcard_source_is_said_not_to_be_expanded(tmp_path, tiny_model_dir, capsys, pattern):
    """`source: '/data/clean*.jsonl'` with matching files there: "not found", no word of wildcards."""
    from .conftest import assert_one_message, kit_argv, run_cli

    for name in ("clean1.jsonl", "part-1.jsonl", "rows1.jsonl"):
        (tmp_path / name).write_text('{"instruction": "a", "output": "b"}\n')
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{
        "data.datasets": f"[{{source: '{tmp_path / pattern}', format: instruction}}]"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, f"Dataset file '{tmp_path / pattern}' not found: wildcards are not expanded.")
    assert "or the folder that holds them" in result.err
