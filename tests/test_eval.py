"""`retrieve eval` end to end on synthetic sets (random weights: mechanics, not quality)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.benchmarks import load_revisited
from retrieval.cli import app
from retrieval.engine import Index
from retrieval.evaluate import compute_map, protocol_truth

from .conftest import ROOT, synth_photo

runner = CliRunner()
TINY = ["--model", "test_tiny", "--size", "112", "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    script = str(ROOT / "scripts" / "make_synthetic_benchmark.py")
    subprocess.run([sys.executable, script, str(out), "--landmarks", "3", "--distractors", "5"], check=True)
    subprocess.run([sys.executable, script, str(out), "--name", "other", "--landmarks", "2", "--seed", "7"],
                   check=True)
    return out


def _eval(args, tmp_path):
    return runner.invoke(app, ["eval", *args], env={"RETRIEVAL_INDEX": str(tmp_path / "default" / "index")})


def test_official_layout_end_to_end(data, tmp_path):
    ranks_file, json_file = tmp_path / "r.npy", tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--save-ranks", str(ranks_file), "--json", str(json_file)],
              tmp_path)
    assert r.exit_code == 0, r.output
    assert "random weights" in r.output and "hard" in r.output
    report = json.loads(json_file.read_text())
    bench = load_revisited(data, "synthetic")
    ranks = np.load(ranks_file)
    assert ranks.shape == (len(bench.database), len(bench.queries))
    assert all(sorted(ranks[:, i]) == list(range(len(bench.database))) for i in range(ranks.shape[1]))
    for protocol in ("easy", "medium", "hard"):
        m = report[protocol]
        assert set(m) == {"mAP", "mP@1", "mP@5", "mP@10"} and all(0 <= v <= 1 for v in m.values())
        truth = protocol_truth([q.easy for q in bench.queries], [q.hard for q in bench.queries],
                               [q.junk for q in bench.queries], protocol)
        assert compute_map(ranks, truth).as_dict() == pytest.approx(m)  # the JSON is the saved ranking's score
    cfg = report["config"]
    assert cfg["backbone"] == "test_tiny" and cfg["size"] == 112 and cfg["query_crop"] is True
    assert cfg["whitening"] == "none (L2 only)" and cfg["weights_id"] == "random:test_tiny:own-init:seed0"
    # the ranking is the index's own exact search of the cropped query
    eval_dirs = list((tmp_path / "default" / "eval").iterdir())
    assert len(eval_dirs) == 1
    with Index.open(eval_dirs[0]) as idx:
        q = bench.queries[0]
        hits = idx.search(q.image, k=3, bbox=q.bbox).hits
        assert [h.path for h in hits] == [bench.database[i] for i in ranks[:3, 0]]


def test_whitening_from_another_set_and_distractors(data, tmp_path):
    extra = tmp_path / "distractors"
    extra.mkdir()
    for i in range(4):
        synth_photo(300 + i).save(extra / f"d{i}.jpg")
    json_file, ranks_file = tmp_path / "m.json", tmp_path / "r.npy"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "other", "--distractors", str(extra),
               "--json", str(json_file), "--save-ranks", str(ranks_file), "--no-crop"], tmp_path)
    assert r.exit_code == 0, r.output
    report = json.loads(json_file.read_text())
    assert report["config"]["whitening"].startswith("other (") and report["n_distractors"] == 4
    assert report["config"]["query_crop"] is False
    assert np.load(ranks_file).shape == (report["n_database"] + 4, report["n_queries"])


def test_whitening_on_test_set_only_when_explicit(data, tmp_path):
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "synthetic"], tmp_path)
    assert r.exit_code == 2 and "--whiten-from self" in r.output
    out = tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "self", "--json", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    assert "test set itself" in json.loads(out.read_text())["config"]["whitening"]


def test_plain_json_ground_truth(data, tmp_path):
    out = tmp_path / "m.json"
    r = _eval([str(data / "synthetic.json"), *TINY, "--json", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert set(report["all"]) == {"mAP", "mP@1", "mP@5", "mP@10"}


def test_missing_data_is_one_line(tmp_path):
    r = _eval(["roxford5k", "--data", str(tmp_path), *TINY], tmp_path)
    assert r.exit_code == 1 and "revisitop layout" in r.output
    r = _eval(["roxford5k", *TINY], tmp_path)
    assert r.exit_code == 2 and "--data" in r.output
