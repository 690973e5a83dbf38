"""`retrieve eval` end to end on synthetic sets (random weights: mechanics, not quality)."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from typer.testing import CliRunner

from retrieval.backbone import native_dtype, resolve_device
from retrieval.ground_truth import load_revisited
from retrieval.cli import app
from retrieval.config import SearchOptions
from retrieval.engine import Index
from retrieval.metrics import compute_map, protocol_truth

from .conftest import ROOT, synth_photo
from .helpers import one_line_error

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


@pytest.mark.subprocess
def test_official_layout_end_to_end(data, tmp_path):
    ranks_file, json_file = tmp_path / "r.npy", tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--save-ranks", str(ranks_file), "--json-out", str(json_file)],
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
    assert cfg["dtype"] == "fp32" and cfg["pooling"] == "cls+gem" and cfg["scales"] == [1.0]  # eval's defaults
    assert cfg["whitening"] == "none (L2 only)" and cfg["weights_id"] == "random:test_tiny:own-init:seed0"
    # the ranking is the index's own exact search of the cropped query
    eval_dirs = list((tmp_path / "default" / "eval").iterdir())
    assert len(eval_dirs) == 1
    with Index.open(eval_dirs[0]) as idx:
        q = bench.queries[0]
        hits = idx.search(q.image, SearchOptions(k=3), bbox=q.bbox).hits
        assert [h.path for h in hits] == [bench.database[i] for i in ranks[:3, 0]]


@pytest.mark.subprocess
def test_whitening_from_another_set_and_distractors(data, tmp_path):
    extra = tmp_path / "distractors"
    extra.mkdir()
    for i in range(4):
        synth_photo(300 + i).save(extra / f"d{i}.jpg")
    json_file, ranks_file = tmp_path / "m.json", tmp_path / "r.npy"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "other", "--distractors", str(extra),
               "--json-out", str(json_file), "--save-ranks", str(ranks_file), "--no-crop"], tmp_path)
    assert r.exit_code == 0, r.output
    report = json.loads(json_file.read_text())
    assert report["config"]["whitening"].startswith("other (") and report["n_distractors"] == 4
    assert report["config"]["query_crop"] is False
    assert np.load(ranks_file).shape == (report["n_database"] + 4, report["n_queries"])


@pytest.mark.subprocess
def test_whitening_on_test_set_only_when_explicit(data, tmp_path):
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "synthetic"], tmp_path)
    assert r.exit_code == 2 and "--whiten-from self" in r.output
    out = tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--whiten-from", "self", "--json-out", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    assert "test set itself" in json.loads(out.read_text())["config"]["whitening"]


@pytest.mark.subprocess
@pytest.mark.parametrize("preset,flags,want", [
    # the file's settings reach the run; test_tiny stands in for the file's model (no real weights here)
    ("table9-vitl14.toml", ["--size", "112"], {"size": 112, "pooling": "cls", "scales": [1.0], "dtype": "fp32"}),
    ("fast-cpu.toml", [], {"size": 224, "pooling": "cls+gem", "scales": [1.0], "dtype": "auto"}),
    # flags win over the file
    ("table9-vitl14.toml", ["--size", "112", "--pooling", "gem", "--multiscale", "--dtype", "auto"],
     {"size": 112, "pooling": "gem", "scales": [1.0, 2 ** -0.5, 2 ** 0.5], "dtype": "auto"}),
])
def test_config_presets(data, tmp_path, preset, flags, want):
    out = tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), "--config", preset.removesuffix(".toml"), "--model", "test_tiny",
               "--workers", "0", *flags, "--json-out", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    cfg = json.loads(out.read_text())["config"]
    if want["dtype"] == "auto":  # the index keeps what auto resolved to on this machine
        want = {**want, "dtype": native_dtype(resolve_device(None))}
    assert cfg["backbone"] == "test_tiny" and cfg["scales"] == pytest.approx(want.pop("scales"))
    assert {k: cfg[k] for k in want} == want


@pytest.mark.subprocess
def test_plain_json_ground_truth(data, tmp_path):
    out = tmp_path / "m.json"
    r = _eval([str(data / "synthetic.json"), *TINY, "--json-out", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert set(report["all"]) == {"mAP", "mP@1", "mP@5", "mP@10"}


def test_missing_data_is_one_line(tmp_path):
    r = _eval(["roxford5k", "--data", str(tmp_path), *TINY], tmp_path)
    assert r.exit_code == 1 and "revisitop layout" in r.output
    r = _eval(["roxford5k", *TINY], tmp_path)
    assert r.exit_code == 2 and "--data" in r.output


@pytest.mark.subprocess
@pytest.mark.parametrize("extra", [[], ["--rerank", "--rerank-k", "5", "--qe", "2", "--dba", "2"]])
def test_eval_ranks_exactly_as_query_does(data, tmp_path, extra):
    """Each query's ranking equals `retrieve query` of its cropped image, same options, -k all."""
    ix, ranks_file, json_file = tmp_path / "ix", tmp_path / "r.npy", tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--index", str(ix), "--save-ranks", str(ranks_file),
               "--json-out", str(json_file), *extra], tmp_path)
    assert r.exit_code == 0, r.output
    bench = load_revisited(data, "synthetic")
    ranks = np.load(ranks_file)
    report = json.loads(json_file.read_text())
    for protocol in ("easy", "medium", "hard"):  # the metrics are the saved ranking's, recomputed independently
        truth = protocol_truth([q.easy for q in bench.queries], [q.hard for q in bench.queries],
                               [q.junk for q in bench.queries], protocol)
        assert compute_map(ranks, truth).as_dict() == pytest.approx(report[protocol])
    if extra:
        assert report["config"]["rerank"] == {"top": 5} and report["config"]["dba"] == 2
        assert report["config"]["query_expansion"] == {"k": 2, "alpha": 3.0}
    query_opts = list(extra)  # DBA is the index's (eval stored it), the rest are query options
    if "--dba" in query_opts:
        del query_opts[query_opts.index("--dba"):query_opts.index("--dba") + 2]
    for i, q in enumerate(bench.queries):
        crop = tmp_path / f"q{i}.png"
        x1, y1, x2, y2 = q.bbox  # cropped as images.crop_box does: the box's pixels, edges rounded outwards
        Image.open(q.image).crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))).save(crop)
        got = runner.invoke(app, ["query", str(crop), "--index", str(ix), "-k", str(len(bench.database)), "--json",
                                  *query_opts])
        assert got.exit_code == 0, got.output
        assert [h["path"] for h in json.loads(got.stdout)] == [bench.database[j] for j in ranks[:, i]]


@pytest.mark.subprocess
def test_ladder_one_run_a_row_per_stage(data, tmp_path):
    json_file = tmp_path / "m.json"
    r = _eval(["synthetic", "--data", str(data), *TINY, "--ladder", "--rerank-k", "5", "--json-out", str(json_file)],
              tmp_path)
    assert r.exit_code == 0, r.output
    for stage in ("global", "+DBA", "+aQE", "+re-ranking", "all"):
        assert any(line.split()[:1] == [stage] for line in r.stdout.splitlines()), stage
    assert "E mAP" in r.stdout and "H mP@10" in r.stdout and "ms/query" in r.stdout
    ladder = json.loads(json_file.read_text())["ladder"]
    assert [s["stage"] for s in ladder] == ["global", "+DBA", "+aQE", "+re-ranking", "all"]
    assert ladder[-1]["options"] == {"rerank": True, "rerank_k": 5, "qe": 2, "qe_alpha": 3.0, "dba": 2}
    assert all(s["ms_per_query"] > 0 and set(s["hard"]) == {"mAP", "mP@1", "mP@5", "mP@10"} for s in ladder)
    printed = json.loads(_eval(["synthetic", "--data", str(data), *TINY, "--json"], tmp_path).stdout)
    assert printed["easy"] == pytest.approx(ladder[0]["easy"])  # --json on stdout: the global stage's metrics


@pytest.mark.parametrize("gnd,said", [
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": "oops"}, "gnd must be a list"),
    ({"imlist": 5, "qimlist": ["q"], "gnd": [{}]}, "imlist must be a list"),
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3], "hard": [], "junk": []}]}, "outside 0..0"),
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "bbx": [5, 5, 1, 1]}]}, "x2 > x1"),
])
def test_malformed_revisited_ground_truth(tmp_path, gnd, said):
    root = tmp_path / "mine"
    root.mkdir()
    with open(root / "gnd_mine.pkl", "wb") as f:
        pickle.dump(gnd, f)
    one_line_error(runner.invoke(app, ["eval", "mine", "--data", str(tmp_path), "--model", "test_tiny"]),
                   "gnd_mine.pkl", said)


@pytest.mark.parametrize("data,said", [
    ({"database": ["a.jpg"], "queries": [1, 2]}, "queries[0] must be an object"),
    ({"database": "img00.jpg", "queries": []}, '"database" must be a list'),
    ({"database": ["a.jpg"], "queries": [{"image": "a.jpg", "bbox": [0, 0, "x", 1]}]}, "bbox"),
    ([1, 2], "must be an object"),
    ({"database": ["a.jpg"], "queries": [{"image": "q.jpg", "positives": []}]}, 'no query lists any "positives"'),
])
def test_malformed_json_ground_truth(tmp_path, data, said):
    gt = tmp_path / "mine.json"
    gt.write_text(json.dumps(data))
    one_line_error(runner.invoke(app, ["eval", str(gt), "--model", "test_tiny"]), "mine.json", said)


def test_a_ground_truth_box_outside_its_image_names_the_query_to_correct(folder, tmp_path):
    gt = tmp_path / "mine.json"
    gt.write_text(json.dumps({"database": [f"photos/p{i}.jpg" for i in range(1, 5)],
                              "queries": [{"image": "photos/p0.jpg", "bbox": [5000, 5000, 6000, 6000],
                                           "positives": ["photos/p1.jpg"]}]}))
    r = runner.invoke(app, ["eval", str(gt), "--model", "test_tiny", "--size", "112", "--index", str(tmp_path / "ix")])
    one_line_error(r, "p0.jpg", "correct query 0's box in the mine ground truth")
    assert "--bbox" not in r.stderr
