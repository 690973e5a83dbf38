"""`--index-kind ivfpq` through the engine and the CLI: built from the store in chunks, ranks
like exact search on a small folder, its exact file checked and replaced like the index itself."""

from __future__ import annotations

import json

import numpy as np

from retrieval.store import Store

from .helpers import TINY_ARGS, run


def _query(index, photo, *extra):
    r = run("query", str(photo), "--index", str(index), "--json", "-k", "12", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_ivfpq_ranks_like_flat(built, tmp_path):
    photos, flat_index = built
    pq_index = tmp_path / "pq"
    r = run("index", str(photos), "--index", str(pq_index), "--index-kind", "ivfpq", *TINY_ARGS)
    assert r.exit_code == 0, r.output
    assert (pq_index / "vectors.f32").exists()
    info = json.loads(run("info", "--index", str(pq_index), "--json").stdout)
    assert info["vector_index"]["kind"] == "ivfpq"
    q = sorted(photos.iterdir())[3]
    for extra in ((), ("--qe", "2")):  # query expansion reads vectors back from the exact file
        got, want = _query(pq_index, q, *extra), _query(flat_index, q, *extra)
        assert [h["path"] for h in got] == [h["path"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
    r = run("check", "--index", str(pq_index))
    assert r.exit_code == 0 and "ivfpq" in r.output, r.output


def test_stale_exact_file_is_rebuilt_and_dropped_with_the_kind(built, tmp_path):
    photos, _ = built
    index = tmp_path / "pq"
    assert run("index", str(photos), "--index", str(index), "--index-kind", "ivfpq", *TINY_ARGS).exit_code == 0
    exact = index / "vectors.f32"
    before = exact.read_bytes()
    exact.write_bytes(before[:-8])  # damaged: the next use rebuilds both files
    got = _query(index, min(photos.iterdir()))
    assert got[0]["path"].endswith("photo_000.jpg") and exact.read_bytes()[4096:] == before[4096:]
    assert run("check", "--index", str(index)).exit_code == 0
    r = run("index", str(photos), "--index", str(index), "--index-kind", "flat", *TINY_ARGS)
    assert r.exit_code == 0, r.output
    assert not exact.exists()  # an exact file no index refers to is gone


def test_ivfpq_refuses_dba(built, tmp_path):
    photos, _ = built
    r = run("index", str(photos), "--index", str(tmp_path / "pq"), "--index-kind", "ivfpq", "--dba", "2", *TINY_ARGS)
    assert r.exit_code != 0 and "--dba" in r.output and len(r.output.strip().splitlines()) == 1


def test_descriptor_chunks_equal_all_descriptors(built):
    with Store(built[1] / "store.sqlite") as s:
        ids, x = s.descriptors()
        parts = list(s.descriptors_chunks(5))
        assert [len(p[0]) for p in parts] == [5, 5, 2]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), ids)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), x)
        np.testing.assert_array_equal(s.descriptor_ids(), ids)
        np.testing.assert_array_equal(s.descriptors_of(ids[[7, 2]]), x[[7, 2]])


def test_whitening_of_a_large_store_is_fitted_on_a_sample(index, monkeypatch):
    """Above WHITEN_SAMPLE_MAX rows the whitening sees a seeded sample, never every descriptor."""
    from retrieval.config import EngineConfig
    from retrieval.engine import derived

    seen = []
    monkeypatch.setattr(derived, "WHITEN_SAMPLE_MAX", 5)
    monkeypatch.setattr(derived, "_fit", lambda x, config: seen.append(x))
    with Store(index / "store.sqlite") as s:
        ids, x = s.descriptors()
        assert derived.refit(s, EngineConfig(), force=True).data is None  # it did not read them all
        pick = np.sort(np.random.default_rng(0).choice(len(ids), 5, replace=False))
        np.testing.assert_array_equal(seen[0], x[pick])
