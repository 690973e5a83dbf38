from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from retrieval import RetrievalError
from retrieval.ground_truth import load_json, load_revisited, read_gnd

from .conftest import ROOT

from .conftest import GND  # noqa: E402


@pytest.mark.parametrize("name,n_db,easy_total,hard_total,junk_total",
                         [("roxford5k", 4993, 3029, 2497, 1356), ("rparis6k", 6322, 6874, 10350, 7153)])
def test_official_pickles_read_as_plain_data(name, n_db, easy_total, hard_total, junk_total):
    data = read_gnd(GND / f"gnd_{name}.pkl")
    assert len(data["imlist"]) == n_db and len(data["qimlist"]) == 70 and len(data["gnd"]) == 70
    assert sum(len(g["easy"]) for g in data["gnd"]) == easy_total
    assert sum(len(g["hard"]) for g in data["gnd"]) == hard_total
    assert sum(len(g["junk"]) for g in data["gnd"]) == junk_total


def test_unpickler_refuses_code(tmp_path):
    p = tmp_path / "gnd_evil.pkl"
    with open(p, "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [np.int64(3)]}, f, protocol=2)  # needs a class lookup
    with pytest.raises(RetrievalError, match="refusing to load"):
        read_gnd(p)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic_benchmark.py"), str(out),
                    "--landmarks", "3", "--distractors", "4"], check=True, capture_output=True)
    return out


@pytest.mark.subprocess
def test_synthetic_set_in_both_layouts(synth):
    official = load_revisited(synth, "synthetic")
    plain = load_json(synth / "synthetic.json")
    assert official.database == plain.database and len(official.queries) == 3
    for a, b in zip(official.queries, plain.queries):
        assert a.image == b.image and a.bbox == pytest.approx(b.bbox)
        assert sorted(np.concatenate([a.easy, a.hard])) == sorted(b.easy) and list(a.junk) == list(b.junk)
    assert load_revisited(synth, "synthetic", crop=False).queries[0].bbox is None


@pytest.mark.subprocess
def test_bad_layouts(synth, tmp_path):
    with pytest.raises(RetrievalError, match="revisitop layout"):
        load_revisited(tmp_path, "roxford5k")
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"database": ["a.jpg"], "queries": [{"image": "q.jpg", "positives": ["b.jpg"]}]}))
    with pytest.raises(RetrievalError, match="not in"):
        load_json(bad)
