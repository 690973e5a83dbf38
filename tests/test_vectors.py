from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval import vectors as vindex
from retrieval.errors import ArtifactMismatchError


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(xb, ids, xq, k):
    s = xq @ xb.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(2, 16), k=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_flat_equals_brute_force(n, d, k, seed):
    xb, xq = _unit(n, d, seed), _unit(5, d, seed + 1)
    ids = np.random.default_rng(seed).permutation(10_000)[:n].astype(np.int64)
    idx = vindex.build(xb, ids, kind="flat", fingerprint="f", data_version=1)
    on_torch = idx.on_device("cpu")  # the GPU search path, run by torch on this CPU
    chunked = dataclasses.replace(on_torch, exact_on=dataclasses.replace(on_torch.exact_on, max_scores=2 * n))
    want_s, want_i = _brute(xb, ids, xq, min(k, n))
    for searcher in (idx, on_torch, chunked):
        scores, got = searcher.search(xq, k)
        assert got.shape == scores.shape == (5, min(k, n))  # clamped to what exists, never padded
        np.testing.assert_allclose(scores, want_s, atol=1e-5)
        assert (got == want_i).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_have_high_recall(kind):
    xb, xq = _unit(3000, 32, 0), _unit(50, 32, 1)
    ids = np.arange(3000, dtype=np.int64) * 7
    idx = vindex.build(xb, ids, kind=kind, fingerprint="f", data_version=1)
    _, got = idx.search(xq, 10)
    _, want = _brute(xb, ids, xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert recall > 0.8


def test_bytes_round_trip_and_staleness():
    xb = _unit(20, 8, 3)
    idx = vindex.build(xb, np.arange(20), kind="flat", fingerprint="abc", data_version=4)
    data = vindex.to_bytes(idx)
    back = vindex.from_bytes(data, fingerprint="abc", data_version=4)
    assert back.ntotal == 20 and back.kind == "flat"
    np.testing.assert_array_equal(back.search(xb[:3], 2)[1], idx.search(xb[:3], 2)[1])
    with pytest.raises(ArtifactMismatchError, match="data version"):
        vindex.from_bytes(data, fingerprint="abc", data_version=5)
    with pytest.raises(ArtifactMismatchError, match="another configuration"):
        vindex.from_bytes(data, fingerprint="xyz", data_version=4)
    with pytest.raises(ArtifactMismatchError, match="unreadable"):
        vindex.from_bytes(data[: len(data) // 2], fingerprint="abc", data_version=4)


def test_validation():
    with pytest.raises(ValueError, match="unique"):
        vindex.build(_unit(3, 4, 0), np.array([1, 1, 2]), fingerprint="f", data_version=0)
    idx = vindex.build(_unit(3, 4, 0), np.arange(3), fingerprint="f", data_version=0)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        idx.search(np.zeros((1, 5), np.float32), 1)
    assert vindex.choose_kind("auto", 10) == "flat" and vindex.choose_kind("auto", 10**7) == "ivfpq"
    with pytest.raises(ValueError, match="only exact"):
        vindex.build(_unit(50, 4, 0), np.arange(50), kind="hnsw", fingerprint="f", data_version=0).on_device("cpu")


def test_empty_index_and_nan_rows_on_both_searchers():
    empty = vindex.build(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), kind="flat", fingerprint="f",
                         data_version=0)
    q = _unit(2, 4, 1)
    for searcher in (empty, empty.on_device("cpu")):
        scores, ids = searcher.search(q, 3)
        assert ids.shape == scores.shape == (2, 0)
    xb = _unit(12, 4, 2)
    xb[5] = np.nan  # fp16 overflow upstream, say: such a row must never rank first
    idx = vindex.build(xb, np.arange(12), kind="flat", fingerprint="f", data_version=0)
    want = idx.search(q, 3)[1]
    assert 5 not in want
    np.testing.assert_array_equal(idx.on_device("cpu").search(q, 3)[1], want)


def test_huge_k_allocates_by_what_exists():
    """A user's k sizes nothing: k = 10^12 over 7 vectors costs what k = 7 costs."""
    idx = vindex.build(_unit(7, 4, 0), np.arange(7), kind="flat", fingerprint="f", data_version=0)
    for searcher in (idx, idx.on_device("cpu")):
        scores, ids = searcher.search(_unit(2, 4, 1), 10**12)
        assert ids.shape == (2, 7) and sorted(ids[0]) == list(range(7))
