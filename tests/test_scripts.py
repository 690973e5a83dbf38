"""The benchmark scripts run and print their ratios (numbers themselves are not asserted: benchmarks
are measurements, not tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import ROOT, synth_photo

pytestmark = pytest.mark.subprocess


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_bench_query_prints_recall(tmp_path):
    out = _run("scripts/bench_query.py", "--sizes", "2000", "--dim", "32", "--queries", "20", "--no-model",
               "--json", str(tmp_path / "q.json"), "--tmp", str(tmp_path))
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("2000")]
    assert [r[1] for r in rows] == ["flat", "ivf", "hnsw", "ivfpq"]
    assert float(rows[0][5]) == 1.0  # exact search is its own ground truth
    saved = json.loads((tmp_path / "q.json").read_text())
    assert [r["kind"] for r in saved] == ["flat", "ivf", "hnsw", "ivfpq"]
    assert {"vectors", "kind", "recall_at_10", "bytes_per_vector", "ms_per_query", "build_s"} <= set(saved[0])
    assert saved[0]["bytes_per_vector"] == 32 * 4 + 8 and saved[3]["disk_bytes_per_vector"] > 32 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json"]  # the database and exact files are gone


def test_bench_store_prints_its_table():
    out = _run("scripts/bench_store.py", "--rows", "300", "--dim", "16", "--local", "8", "--no-cold")
    row = next(line for line in out.splitlines() if line.startswith("| 300 |")).split("|")
    assert float(row[2].replace(",", "")) > 16 * 4 + 8 * (64 * 2 + 4)  # the blobs are all stored
    assert row[5].strip() == "n/a"


def test_bench_index_prints_ratios(tmp_path):
    for i in range(4):
        synth_photo(i, (640, 480) if i % 2 else (480, 640)).save(tmp_path / f"p{i}.jpg")
    out = _run("scripts/bench_index.py", "--folder", str(tmp_path), "--size", "112", "--batch", "2")
    assert re.search(r"c/b = \d+\.\d+\s+c/a = \d+\.\d+", out) and "(c) retrieve index" in out


def test_bench_index_compares_models_at_224_and_at_equal_patch_counts():
    out = _run("scripts/bench_index.py", "--compare-models", "test_tiny,test_tiny_v3", "--images", "2", "--batch", "2",
               "--repeats", "1")
    for dtype in ("fp32", "bf16"):
        assert re.search(rf"test_tiny_v3 +224 px \(224\) +{dtype} +14x14 +\d+\.\d+ +\d+\.\d+", out)
        assert re.search(rf"test_tiny_v3 +equal patch count \(256\) +{dtype} +16x16 ", out)
        assert re.search(rf"test_tiny +equal patch count \(224\) +{dtype} +16x16 +\d+\.\d+ +1\.00", out)
    assert "load average before" in out


def test_bench_rerank_prints_cost():
    out = _run("scripts/bench_rerank.py", "--images", "6", "--queries", "1", "--size", "112", "--rerank-k", "5")
    assert re.search(r"re-ranking cost: -?\d+ ms per query", out) and "KB per image" in out


def test_bench_index_parts_and_decoder_options(tmp_path):
    for i in range(3):
        synth_photo(i, (640, 480)).save(tmp_path / f"p{i}.jpg")
    out = _run("scripts/bench_index.py", "--folder", str(tmp_path), "--size", "112", "--batch", "2",
               "--parts", "model,index", "--decode", "gpu", "--readers", "threads", "--dtype", "auto", "--stages")
    assert re.search(r"c/b = \d+\.\d+", out) and "(a) naive" not in out and "decode gpu" in out
    assert re.search(r"stack \+ copy \+ forward pass\s+\d+\.\d+ s", out)  # the stage table


def test_bench_gpu_runs_its_checks_on_a_cpu():
    out = _run("scripts/bench_gpu.py", "--device", "cpu", "--skip", "autocast", "--vectors", "1000")
    assert "decoded on the GPU:" in out and "worst descriptor cosine" in out  # the decode check ran
    assert re.search(r"n=\s+1000 .* ids equal to CPU exact 1\.0000", out)
    assert "FAILED" not in out


def test_measure_draft_decode_prints_differences(tmp_path):
    synth_photo(3, (1000, 750)).save(tmp_path / "big.jpg", quality=90)
    out = _run("scripts/measure_draft_decode.py", str(tmp_path / "big.jpg"), "--size", "224")
    row = next(line.split() for line in out.splitlines() if line.startswith("big.jpg"))
    assert row[1:4] == ["1000x750", "250x188", "224x168"] and int(row[4]) > 0  # drafted at 1/4, pixels moved


def test_bench_serve_prints_its_table():
    out = _run("scripts/bench_serve.py", "--model", "test_tiny", "--size", "112", "--images", "6",
               "--clients", "1,2", "--requests", "4")
    assert "| 2 |" in out and "in-process" in out
    assert re.search(r"single-client p50 / in-process search: [\d.]+x", out)
    assert re.search(r"2-client throughput / single-client: [\d.]+x \(rounds [\d.]+-[\d.]+x", out)
    assert re.search(r"2 clients cannot pass [\d.]+ queries/s, [\d.]+x the single client's", out)
    assert re.search(r"sharing the \d+ cores with it: [\d.]+ queries/s, [\d.]+x$", out, re.M)
    cpu = out[out.index("CPU time a request cost"):]
    rows = {r[0]: [float(x) for x in r[1:]] for r in (line.strip("| ").split(" | ") for line in cpu.splitlines()
                                                      if re.match(r"\| \d+ \|", line))}
    assert sorted(rows) == ["1", "2"]
    for index, native, other, clients, every, wall in rows.values():
        assert index > 0 and other > 0  # the model's thread, and the event loop that parsed each request
        assert every == pytest.approx(index + native + other + clients, abs=0.25) and wall > 0
    # the mixed runs' clients fetched heat-map PNGs and polled the health probe through the same connections
    assert re.search(r"\| 4 of them also fetch a heat-map PNG \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out)


def test_make_doc_images_writes_the_pictures_the_docs_show(tmp_path):
    out = _run("scripts/make_doc_images.py", "--out", str(tmp_path))
    assert re.search(r"match_example: \d+ matches, \d+ inliers", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "match_example.png", "match_example_heatmap.png", "match_poor_example.png"]
    docs = (ROOT / "docs" / "rerank.md").read_text()
    assert all(f"img/{p.name}" in docs for p in tmp_path.iterdir())


def test_bench_startup_prints_its_table():
    out = _run("scripts/bench_startup.py", "--repeats", "1", "--model", "test_tiny", "--images", "2")
    for command in ("retrieve --help", "retrieve models", "retrieve info", "retrieve query", "retrieve index"):
        assert re.search(rf"\| `{re.escape(command)}[^`]*` \| \d+\.\d\d \| `python -c ", out), command
    assert re.search(r"\| `retrieve info` .* \| <= 0\.3x: (met|NOT met) \|", out)
    assert re.search(r"\| `retrieve query` .* \| <= 1\.5x: (met|NOT met) \|", out)


def test_bench_ray_prints_ratio_and_commit_ceiling():
    """The Ray part itself runs in tests/test_ray.py (a runtime per process is seconds)."""
    out = _run("scripts/bench_ray.py", "--parts", "local,commit", "--images", "3", "--model", "test_tiny", "--size",
               "112", "--batch", "2", "--rows", "64", "--commit-batches", "2,16", "--repeats", "1")
    assert re.search(r"^local +3 images in [\d.]+ s: [\d.]+ img/s overall", out, re.M)
    assert re.search(r"from_columns\+apply\(upserts\), 16 per transaction: [\d,]+ rows/s", out)
    assert re.search(r"16 per transaction: one driver feeds [\d.]+ GPUs running ViT-S/14", out)
    assert "load average before" in out
