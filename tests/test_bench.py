"""bench/speed.py runs through the kit's command line on the CPU (a smoke run: it must not rot; no timings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_bench_script_trains_each_configuration_and_writes_its_table(smol_dir, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--shape", "tiny", "--backends", "hf", "--data",
         "pubmedqa,random", "--settings", "seed,auto", "--steps", "3", "--max-seq", "128", "--random-rows", "8",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert [(r["data"], r["setting"]) for r in result["rows"]] == [
        ("pubmedqa", "seed"), ("pubmedqa", "auto"), ("random", "seed"), ("random", "auto")]
    for row in result["rows"]:
        assert row["rc"] == 0 and row["steps"] == 3 and row["tokens_per_s"] > 0
        assert row["micro_x_accum"] == "2x4"  # on a CPU auto-fit leaves the config alone
    random_seed = result["rows"][2]
    assert random_seed["padding_percent"] == 0.0  # every random row is max_seq_length long
    assert result["params"] > 6_000_000
    table = (out / "bench.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| hf | pubmedqa | seed | 2x4 |")
