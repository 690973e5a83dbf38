"""scripts/bench_dedupe.py runs and prints its tables (the numbers are measurements, not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.subprocess


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, "scripts/bench_dedupe.py", *args], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_planted_table_has_every_transform_and_says_random_weights():
    out = _run("planted", "--scenes", "2", "--size", "112")
    assert "RANDOM weights" in out
    ours = out.split("\nours:")[1].split("\n\n")[0]
    for kind in ("exact", "reencode", "resize", "recompress", "crop", "rotate", "flip", "edit", "other_shot"):
        assert re.search(rf"^\s+{kind}\s+[01]\.\d\d\s", ours, re.M), (kind, ours)
    assert re.search(r"^  exact\s+1\.00\s", ours, re.M)  # same bytes: always found
    assert "imagededup PHash" in out and "imagededup CNN" in out  # run, or the reason it was not


def test_knn_stage_prints_ratios_and_finds_the_planted_pairs():
    out = _run("knn", "--sizes", "1000,2000", "--dim", "16", "--kind", "flat", "--graph-min", "1500")  # 2000: graph index
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+\d+\s+(\d+) / (\d+)\s+([\d.]+)", out, re.M)
    assert [(n, found == planted, ratio) for n, found, planted, ratio in rows] == [
        ("1000", True, "1.0"), ("2000", True, "2.0")]
