"""Issue 27, items 5, 6 and 9: ground truth that lists a name twice, two ground-truth files of the
same name, and hostile ground-truth pickles; each through `retrieve eval` as a user runs it."""

from __future__ import annotations

import json
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval import RetrievalError, ground_truth
from retrieval.ground_truth import load_json, load_revisited, read_gnd
from retrieval.cli import app
from retrieval.engine.evaluation import eval_index_dir

from .conftest import GND, synth_photo

runner = CliRunner()
TINY = ["--model", "test_tiny", "--size", "112", "--workers", "0"]


def _eval(args, tmp_path):
    return runner.invoke(app, ["eval", *args, *TINY], env={"RETRIEVAL_INDEX": str(tmp_path / "default" / "index")})


def _photo_set(folder, seeds, gt):
    """PNG photos s0.png.. of the given seeds, q.png a byte copy of s0.png, and gt.json."""
    folder.mkdir(parents=True)
    for i, seed in enumerate(seeds):
        synth_photo(seed, (160, 120)).save(folder / f"s{i}.png")
    shutil.copyfile(folder / "s0.png", folder / "q.png")
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder / "gt.json"


# item 5: a name listed twice counts once


def test_duplicate_positive_counts_once_with_a_warning(tmp_path):
    """The query is a byte copy of s0, so s0 ranks first: AP 1.0. Counted twice, it was 0.5."""
    gt = _photo_set(tmp_path / "set", [1, 2, 3], {
        "database": ["s0.png", "s1.png", "s2.png"],
        "queries": [{"image": "q.png", "positives": ["s0.png", "s0.png"], "junk": ["s2.png", "s2.png"]}]})
    out = tmp_path / "m.json"
    r = _eval([str(gt), "--json-out", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["all"]["mAP"] == 1.0
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ground truth")]
    assert len(warnings) == 1, r.stderr
    assert 'queries[0] ("q.png")' in warnings[0] and "s0.png" in warnings[0] and "s2.png" in warnings[0]


def test_duplicates_are_removed_in_order(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": ["a.jpg", "b.jpg", "c.jpg"], "queries": [
        {"image": "q.jpg", "positives": ["c.jpg", "a.jpg", "c.jpg", "b.jpg", "a.jpg"]}]}))
    assert list(load_json(gt).queries[0].easy) == [2, 0, 1]


@pytest.mark.parametrize("second", ["junk", "positives"])
def test_a_name_that_is_positive_and_junk_is_refused(tmp_path, second):
    gt = tmp_path / "gt.json"
    q = {"image": "q.jpg", "positives": ["a.jpg"], "junk": ["b.jpg"]}
    q[second] = q[second] + (["a.jpg"] if second == "junk" else ["b.jpg"])
    gt.write_text(json.dumps({"database": ["a.jpg", "b.jpg"], "queries": [q]}))
    with pytest.raises(RetrievalError, match=r'queries\[0\] \("q.jpg"\) lists (a|b)\.jpg both in "positives" and in "junk"'):
        load_json(gt)


def test_pickle_duplicates_and_overlaps(tmp_path):
    def gnd(easy, hard, junk):
        p = tmp_path / "gnd_x.pkl"
        p.write_bytes(pickle.dumps({"imlist": ["a", "b", "c"], "qimlist": ["q"],
                                    "gnd": [{"easy": easy, "hard": hard, "junk": junk}]}, protocol=2))
        return p

    assert read_gnd(gnd([0, 0, 1], [2], []))["gnd"][0]["easy"] == [0, 1]
    with pytest.raises(RetrievalError, match=r"gnd\[0\] \(query q\) lists index 1 \(b\) both in easy and in junk"):
        read_gnd(gnd([0, 1], [2], [1]))


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_official_pickles_have_no_duplicates_so_reference_numbers_stand(name):
    """The de-duplication never touches the official files: their lists are exactly as shipped."""
    with open(GND / f"gnd_{name}.pkl", "rb") as f:
        raw = pickle.load(f)
    assert read_gnd(GND / f"gnd_{name}.pkl") == raw


def test_query_in_the_database_but_unlisted_is_warned(tmp_path, caplog):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": ["q.jpg", "a.jpg"], "queries": [{"image": "q.jpg", "positives": ["a.jpg"]}]}))
    load_json(gt)
    assert any("own image" in m and "q.jpg" in m for m in caplog.messages)
    caplog.clear()
    gt.write_text(json.dumps({"database": ["q.jpg", "a.jpg"],
                              "queries": [{"image": "q.jpg", "positives": ["a.jpg"], "junk": ["q.jpg"]}]}))
    load_json(gt)
    assert not caplog.messages


# item 6: two ground-truth files named alike get their own cached index


def test_same_named_ground_truths_get_their_own_index(tmp_path):
    """setA/gt.json and setB/gt.json hold the same text but other images: the second eval must
    index and rank its own images only (it ended in `unexpected KeyError` on setA's rows)."""
    gt = {"database": ["s0.png", "s1.png", "s2.png"], "queries": [{"image": "q.png", "positives": ["s0.png"]}]}
    a = _photo_set(tmp_path / "setA", [1, 2, 3], gt)
    b = _photo_set(tmp_path / "setB", [4, 5, 6], gt)
    for g in (a, b):
        ranks = tmp_path / f"{g.parent.name}.npy"
        out = tmp_path / f"{g.parent.name}.json"
        r = _eval([str(g), "--save-ranks", str(ranks), "--json-out", str(out)], tmp_path)
        assert r.exit_code == 0, r.output
        assert np.load(ranks).shape == (3, 1) and json.loads(out.read_text())["all"]["mAP"] == 1.0
    assert len(list((tmp_path / "default" / "eval").iterdir())) == 2
    # the same set again reuses its own cache
    assert _eval([str(b)], tmp_path).exit_code == 0
    assert len(list((tmp_path / "default" / "eval").iterdir())) == 2


def test_an_index_holding_other_images_is_one_line(tmp_path):
    gt = {"database": ["s0.png", "s1.png"], "queries": [{"image": "q.png", "positives": ["s0.png"]}]}
    a = _photo_set(tmp_path / "setA", [1, 2], gt)
    b = _photo_set(tmp_path / "setB", [4, 5], gt)
    ix = tmp_path / "ix"
    assert _eval([str(a), "--index", str(ix)], tmp_path).exit_code == 0
    r = _eval([str(b), "--index", str(ix)], tmp_path)
    assert r.exit_code == 1 and "unexpected" not in r.output
    assert r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert "2 images that are not in" in r.output and "--index" in r.output


def test_cache_key_is_the_database_not_the_name(tmp_path):
    """The cache folder follows the images a set indexes, never its file's name alone."""

    gt = {"database": ["s0.png"], "queries": [{"image": "s0.png", "positives": ["s0.png"]}]}
    for d in ("A", "B"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "gt.json").write_text(json.dumps(gt))
    A, B = (load_json(tmp_path / p) for p in ("A/gt.json", "B/gt.json"))
    assert eval_index_dir(A, {}) != eval_index_dir(B, {})
    assert eval_index_dir(A, {}) == eval_index_dir(load_json(tmp_path / "A/gt.json"), {})
    assert eval_index_dir(A, {}) != eval_index_dir(A, {"image": {"size": 112}})
    assert eval_index_dir(A, {}) != eval_index_dir(A, {}, distractors=[str(tmp_path / "C")])


# item 9: hostile ground-truth pickles are one line, nothing allocated or run


def _deep(n):
    """A dict nested n deep, written opcode by opcode (pickle.dumps itself would recurse)."""
    key = b"X\x01\x00\x00\x00k"  # BINUNICODE 'k'
    return b"\x80\x02" + (b"}" + key) * n + b"}" + b"s" * n + b"."


def _wrap(inner: bytes) -> bytes:
    """{'imlist': [INNER], 'qimlist': [], 'gnd': []} around a pickled value (without its STOP)."""
    def s(text):
        return b"X" + len(text).to_bytes(4, "little") + text.encode()

    return (b"\x80\x02}(" + s("imlist") + b"]" + inner + b"a" + s("qimlist") + b"]" + s("gnd") + b"]u.")


def _self_referential() -> bytes:
    loop: list = []
    loop.append(loop)
    return pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": loop, "hard": [], "junk": []}]}, 2)


HOSTILE = {
    "binunicode8-1TB": b"\x80\x04\x8d" + (10 ** 12).to_bytes(8, "little") + b"x",
    "binbytes8-1TB": b"\x80\x04\x8e" + (10 ** 12).to_bytes(8, "little") + b"x",
    "bytearray8-maxsize": b"\x80\x05\x96" + (2 ** 63 - 1).to_bytes(8, "little") + b"x",
    "self-referential": _self_referential(),
    "deep-dict": _wrap(_deep(100_000)[2:-1]),
    "deep-list": _wrap(b"]" * 100_000 + b"a" * 99_999),
    "unhashable-key": b"\x80\x02}]]s.",
    "wrong-shape": pickle.dumps(["imlist", "qimlist", "gnd"], 2),
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pickle_is_one_line(tmp_path, case):
    gnd = tmp_path / "data" / "roxford5k" / "gnd_roxford5k.pkl"
    gnd.parent.mkdir(parents=True)
    gnd.write_bytes(HOSTILE[case])
    r = _eval(["roxford5k", "--data", str(tmp_path / "data")], tmp_path)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "unexpected" not in r.output, r.output
    assert str(gnd) in r.output and "gnd_*.pkl" in r.output


def test_a_claimed_length_is_checked_before_anything_is_allocated(tmp_path):
    """BINBYTES8 claiming 2 GB in a 12-byte file: refused from the lengths alone. (The C unpickler
    allocates the claimed size first and only then finds the file short.)"""
    gnd = tmp_path / "gnd_x.pkl"
    gnd.write_bytes(b"\x80\x04\x8e" + (2 * 2**30).to_bytes(8, "little") + b"x")
    tracemalloc.start()
    try:
        with pytest.raises(RetrievalError, match="gnd_x.pkl"):
            read_gnd(gnd)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_oversized_pickle_is_refused_unread(tmp_path, monkeypatch):
    gnd = tmp_path / "data" / "roxford5k" / "gnd_roxford5k.pkl"
    gnd.parent.mkdir(parents=True)
    with open(gnd, "wb") as f:  # sparse: no disk used
        f.truncate(ground_truth.MAX_GND_BYTES + 1)
    r = _eval(["roxford5k", "--data", str(tmp_path / "data")], tmp_path)
    assert r.exit_code == 1 and "unexpected" not in r.output
    assert "over the 64 MiB" in r.output and str(gnd) in r.output


def test_bound_is_far_above_the_official_files():
    assert max((GND / f"gnd_{n}.pkl").stat().st_size for n in ("roxford5k", "rparis6k")) * 100 < ground_truth.MAX_GND_BYTES


def test_deeply_nested_json_is_one_line(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text("[" * 100_000 + "]" * 100_000)
    r = _eval([str(gt)], tmp_path)
    assert r.exit_code == 1 and "unexpected" not in r.output and str(gt) in r.output


def test_official_layout_still_loads(tmp_path):
    """The bounded reader reads the real files (their images are not here: the layout check follows)."""
    root = tmp_path / "roxford5k"
    root.mkdir()
    shutil.copyfile(GND / "gnd_roxford5k.pkl", root / "gnd_roxford5k.pkl")
    with pytest.raises(RetrievalError, match="database images missing"):
        load_revisited(tmp_path, "roxford5k")
