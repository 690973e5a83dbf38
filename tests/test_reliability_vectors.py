"""Reliability of the vector files and of what a query returns: ivfpq's exact file checked by its
block checksums (at open and by `retrieve check`), results whose files are gone looked for in a
bounded number of rounds, and results that are no longer regular files."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from retrieval import vectors as vindex
from retrieval.vectors import exact_file
from retrieval.config import SearchOptions
from retrieval.errors import ArtifactMismatchError

from .helpers import TINY_ARGS, run


@pytest.fixture(scope="module")
def pq(built, tmp_path_factory):
    """An ivfpq index of the 12 photos of `built`."""
    photos, _ = built
    index = tmp_path_factory.mktemp("pq") / "pq"
    r = run("index", str(photos), "--index", str(index), "--index-kind", "ivfpq", *TINY_ARGS)
    assert r.exit_code == 0, r.output
    return index


def _reverse_rows(exact, dim):
    data = bytearray(exact.read_bytes())
    rows = np.frombuffer(bytes(data[vindex.EXACT_HEADER:]), np.float32).reshape(-1, dim)
    data[vindex.EXACT_HEADER:] = rows[::-1].tobytes()
    exact.write_bytes(bytes(data))


def _zero_page(exact, dim):
    data = bytearray(exact.read_bytes())
    data[vindex.EXACT_HEADER: vindex.EXACT_HEADER + 4096] = bytes(min(4096, len(data) - vindex.EXACT_HEADER))
    exact.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_reverse_rows, _zero_page])
def test_damaged_exact_file_fails_check_and_is_rebuilt_at_open(built, pq, tmp_path, damage):
    photos, _ = built
    index = shutil.copytree(pq, tmp_path / "pq")
    exact = index / "vectors.f32"
    dim = json.loads(run("info", "--index", str(index), "--json").stdout)["vector_index"]["dim"]
    size = exact.stat().st_size
    damage(exact, dim)
    assert exact.stat().st_size == size  # same size, header intact: only the checksums tell
    r = run("check", "--index", str(index))
    assert r.exit_code == 1, r.output
    errors = [x for x in r.stdout.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and str(exact) in errors[0] and "fail their checksum" in errors[0]
    assert "delete it" in errors[0] and "rebuilds it" in errors[0]
    assert "the store itself is healthy" in r.stderr
    for q in (photos / "photo_000.jpg", photos / "photo_007.jpg"):
        got = json.loads(run("query", str(q), "--index", str(index), "--json", "-k", "3").stdout)
        assert got[0]["path"] == str(q) and got[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert all(h["score"] < 0.9999 for h in got[1:])
    r = run("check", "--index", str(index))
    assert r.exit_code == 0 and "passes its 1 block checksums" in r.stdout, r.output


def test_open_verifies_a_sample_of_a_large_file(tmp_path, monkeypatch):
    """Past VERIFY_ALL_MAX bytes of rows, opening checks VERIFY_SAMPLE blocks picked at random;
    `damaged_blocks` with no count (what check runs) checks them all."""
    monkeypatch.setattr(exact_file, "EXACT_BLOCK", 4096)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3000, 32)).astype(np.float32)  # 384,000 bytes: 94 blocks
    path = tmp_path / "v.f32"
    idx = vindex.build(xb, np.arange(3000), kind="ivfpq", fingerprint="f", data_version=0, exact_path=path)
    blob = vindex.to_bytes(idx)
    assert len(idx.exact_crc) == 94 and vindex.damaged_blocks(idx) == []
    monkeypatch.setattr(exact_file, "VERIFY_ALL_MAX", 0)
    monkeypatch.setattr(exact_file, "VERIFY_SAMPLE", 5)
    seen = []
    real = vindex.damaged_blocks
    monkeypatch.setattr(exact_file, "damaged_blocks", lambda i, n=None: seen.append(n) or real(i, n))
    vindex.from_bytes(blob, fingerprint="f", data_version=0, exact_path=path)
    assert seen == [5]  # a sample, not all 94
    _reverse_rows(path, 32)  # every block changes: any sample finds it
    with pytest.raises(ArtifactMismatchError, match="fail their checksum"):
        vindex.from_bytes(blob, fingerprint="f", data_version=0, exact_path=path)
    back = vindex.from_bytes(blob, fingerprint="f", data_version=0, exact_path=path, verify=False)
    assert len(real(back)) == 94


def test_an_index_saved_without_checksums_is_rebuilt(tmp_path):
    xb = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    path = tmp_path / "v.f32"
    idx = vindex.build(xb, np.arange(500), kind="ivfpq", fingerprint="f", data_version=0, exact_path=path)
    old = vindex.to_bytes(dataclasses.replace(idx, exact_crc=None))
    with pytest.raises(ArtifactMismatchError, match="no checksums"):
        vindex.from_bytes(old, fingerprint="f", data_version=0, exact_path=path)


# --- results whose files are gone -----------------------------------------------------------------
class _Paths:
    """The store's id -> path lookup (all search needs of it without re-ranking); counts the ids asked."""

    def __init__(self, folder):
        self.folder, self.asked = folder, 0

    def paths(self, ids):
        ids = list(ids)
        self.asked += len(ids)
        return {int(i): str(self.folder / f"{int(i)}.jpg") for i in ids}


class _Counted:
    def __init__(self, vec):
        self.vec, self.calls = vec, 0
        self.ntotal = vec.ntotal

    def search(self, xq, k):
        self.calls += 1
        return self.vec.search(xq, k)


def _all_but_one_gone(tmp_path, n=2000, dim=16):
    """n indexed vectors whose files are all gone but the one that ranks last for the query."""
    from retrieval.arrays import l2n
    from retrieval.engine.search import Query

    rng = np.random.default_rng(0)
    xb, xq = l2n(rng.standard_normal((n, dim)).astype(np.float32)), l2n(rng.standard_normal((1, dim)).astype(np.float32))
    vec = _Counted(vindex.build(xb, np.arange(n), kind="flat", fingerprint="f", data_version=0))
    last = int(np.argmin(xb @ xq[0]))
    (tmp_path / f"{last}.jpg").write_bytes(b"x")
    return vec, Query(raw=xq, patches=np.zeros((1, dim), np.float32), grid=(1, 1)), last


def test_mostly_gone_results_cost_a_few_rounds_and_one_look_per_file(tmp_path, monkeypatch):
    """All but one of 2,000 files gone (a drive not mounted): the search grows geometrically
    (10, 40, 160, 640, 2000: 5 searches) and stats each file once, where growing by k - present
    searched 200 times and looked at 200,000 files."""
    import os

    from retrieval.engine import search as s

    vec, q, last = _all_but_one_gone(tmp_path)
    store = _Paths(tmp_path)
    looks = []
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: looks.append(p) or real(p))
    r = s.search(q, store=store, vec=vec, whitening=None, options=SearchOptions(k=10))
    assert vec.calls == 5 and len(looks) == len(set(looks)) == 2000 and store.asked == 2000
    assert [h.id for h in r.hits] == [last] and len(r.gone) == 1999 and r.looked_at is None


def test_the_rounds_are_capped_and_the_result_says_how_far_it_looked(tmp_path, monkeypatch):
    from retrieval.engine import search as s

    monkeypatch.setattr(s, "GONE_ROUNDS", 3)
    vec, q, _ = _all_but_one_gone(tmp_path)
    r = s.search(q, store=_Paths(tmp_path), vec=vec, whitening=None, options=SearchOptions(k=10))
    assert r.hits == () and r.looked_at == 160 and len(r.gone) == 160 and vec.calls == 3


# --- results that are no longer regular files, and --out --------------------------------------
def test_a_result_now_a_folder_is_gone_and_a_picture_not_drawn_is_warned(tmp_path):
    from .conftest import synth_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        synth_photo(i).save(photos / f"p{i}.jpg", quality=90)
    ix, out, query = tmp_path / "ix", tmp_path / "maps", tmp_path / "q.jpg"
    assert run("index", str(photos), "--index", str(ix), *TINY_ARGS).exit_code == 0
    shutil.copy(photos / "p1.jpg", query)
    (photos / "p1.jpg").unlink()
    (photos / "p1.jpg").mkdir()  # the same name, now a folder
    (photos / "p2.jpg").write_bytes(b"not a picture any more")  # a regular file no decoder reads
    r = run("query", str(query), "--index", str(ix), "--json", "-k", "5", "--out", str(out))
    assert r.exit_code == 0, r.output
    paths = [h["path"] for h in json.loads(r.stdout)]
    assert str(photos / "p1.jpg") not in paths and len(paths) == 4
    assert "left out 1 result(s) whose files are gone" in r.stderr and "p1.jpg" in r.stderr
    rank = paths.index(str(photos / "p2.jpg")) + 1
    warned = [x for x in r.stderr.splitlines() if "wrote no pictures" in x]
    assert len(warned) == 1 and f"result #{rank} {photos / 'p2.jpg'}:" in warned[0]
    assert not (out / f"{rank:03d}_matches.png").exists() and (out / "index.html").exists()


@pytest.mark.subprocess
def test_bench_gone_prints_its_ratio():
    import re
    import subprocess
    import sys

    from .conftest import ROOT

    r = subprocess.run([sys.executable, "scripts/bench_gone.py", "--rows", "300", "--dim", "8", "--repeats", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"gone / present = \d+\.\d", r.stdout)
    assert re.search(r"all but one gone .*\(4 searches, 300 file looks\)", r.stdout)
