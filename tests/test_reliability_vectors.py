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
    monkeypatch.setattr(vindex, "EXACT_BLOCK", 4096)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3000, 32)).astype(np.float32)  # 384,000 bytes: 94 blocks
    path = tmp_path / "v.f32"
    idx = vindex.build(xb, np.arange(3000), kind="ivfpq", fingerprint="f", generation=0, exact_path=path)
    blob = vindex.to_bytes(idx)
    assert len(idx.exact_crc) == 94 and vindex.damaged_blocks(idx) == []
    monkeypatch.setattr(vindex, "VERIFY_ALL_MAX", 0)
    monkeypatch.setattr(vindex, "VERIFY_SAMPLE", 5)
    seen = []
    real = vindex.damaged_blocks
    monkeypatch.setattr(vindex, "damaged_blocks", lambda i, n=None: seen.append(n) or real(i, n))
    vindex.from_bytes(blob, fingerprint="f", generation=0, exact_path=path)
    assert seen == [5]  # a sample, not all 94
    _reverse_rows(path, 32)  # every block changes: any sample finds it
    with pytest.raises(ArtifactMismatchError, match="fail their checksum"):
        vindex.from_bytes(blob, fingerprint="f", generation=0, exact_path=path)
    back = vindex.from_bytes(blob, fingerprint="f", generation=0, exact_path=path, verify=False)
    assert len(real(back)) == 94


def test_an_index_saved_without_checksums_is_rebuilt(tmp_path):
    xb = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    path = tmp_path / "v.f32"
    idx = vindex.build(xb, np.arange(500), kind="ivfpq", fingerprint="f", generation=0, exact_path=path)
    old = vindex.to_bytes(dataclasses.replace(idx, exact_crc=None))
    with pytest.raises(ArtifactMismatchError, match="no checksums"):
        vindex.from_bytes(old, fingerprint="f", generation=0, exact_path=path)
