"""The compressed index (`ivfpq`): codes in memory, a shortlist re-scored exactly against the
memory-mapped vectors. Checked against brute force and closed-form inner products."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import vectors as vindex
from retrieval.vectors import building
from retrieval.errors import ArtifactMismatchError


def _clustered(n, d, seed, centres=None):
    """Unit vectors around a few shared centres (what approximate search must cope with)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(size=(40, d)).astype(np.float32) if centres is None else centres
    x = c[rng.integers(0, len(c), n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(xb, ids, xq, k):
    s = xq @ xb.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    xb, xq = _clustered(8000, 32, 0), _clustered(50, 32, 1)
    ids = np.random.default_rng(5).permutation(10**6)[:8000].astype(np.int64)  # store ids, not 0..n-1
    path = tmp_path_factory.mktemp("ivfpq") / "vectors.f32"
    idx = vindex.build(xb, ids, kind="ivfpq", fingerprint="f", data_version=3, exact_path=path)
    return xb, xq, ids, idx, path


def test_recall_and_exact_scores(data):
    xb, xq, ids, idx, _ = data
    assert idx.kind == "ivfpq" and idx.ntotal == 8000
    scores, got = idx.search(xq, 10)
    assert got.shape == scores.shape == (50, 10)
    _, want = _brute(xb, ids, xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert recall >= 0.95
    # re-scored: each score is the exact inner product of the query and the vector of that id
    row = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[xq[j] @ xb[row[int(i)]] for i in got[j]] for j in range(len(xq))], np.float32)
    np.testing.assert_allclose(scores, exact, rtol=0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first


def test_in_memory_size_is_a_fraction_of_flat(data):
    import faiss

    _, _, _, idx, path = data
    flat = 8000 * (32 * 4 + 8)
    serialized = len(faiss.serialize_index(idx.faiss_index)) + idx.row_ids.nbytes
    assert abs(idx.nbytes() - serialized) < 0.02 * serialized  # the estimate matches what FAISS holds
    assert idx.exact_nbytes() == path.stat().st_size == vindex.EXACT_HEADER + 8000 * 32 * 4
    assert isinstance(idx.exact, np.memmap)  # the exact vectors stay on disk
    assert idx.nbytes() < flat / 2  # 32 code bytes + two int64 ids against 32 floats + an id


def test_vectors_read_back_by_id(data):
    xb, _, ids, idx, _ = data
    pick = ids[[17, 3, 7999]]
    np.testing.assert_array_equal(idx.vectors_of(pick), xb[[17, 3, 7999]])
    with pytest.raises(KeyError):
        idx.vectors_of(np.array([-5]))


def test_huge_k_costs_what_exists(tmp_path):
    xb = _clustered(300, 16, 2)
    idx = vindex.build(xb, np.arange(300) + 1000, kind="ivfpq", fingerprint="f", data_version=0,
                       exact_path=tmp_path / "v.f32")
    scores, got = idx.search(xb[:2], 10**9)
    assert got.shape == (2, 300)  # clamped to what exists
    assert got[0, 0] == 1000 and got[1, 0] == 1001  # a vector is its own best match
    found = got[0][got[0] >= 0]
    assert len(set(found.tolist())) == len(found)
    assert (scores[0][got[0] < 0] == -np.inf).all()


def test_save_load_round_trip_and_stale_exact_file(data, tmp_path):
    xb, xq, ids, idx, path = data
    blob = vindex.to_bytes(idx)
    back = vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=path)
    for a, b in zip(back.search(xq, 10), idx.search(xq, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.ids(), ids)
    with pytest.raises(ValueError, match="exact_path"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3)
    with pytest.raises(ArtifactMismatchError, match="missing"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=tmp_path / "none.f32")
    # another build over the same data (same fingerprint and generation) writes another exact file:
    # the first saved index must refuse it, whatever its contents
    other = tmp_path / "other.f32"
    small = vindex.build(xb[:500], ids[:500], kind="ivfpq", fingerprint="f", data_version=3, exact_path=other)
    with pytest.raises(ArtifactMismatchError, match="another build"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=other)
    stale = vindex.build(xb[:500], ids[:500], kind="ivfpq", fingerprint="f", data_version=2, exact_path=other)
    with pytest.raises(ArtifactMismatchError, match="stale"):
        vindex.from_bytes(vindex.to_bytes(small), fingerprint="f", data_version=3, exact_path=other)
    assert stale.data_version == 2
    cut = tmp_path / "cut.f32"
    cut.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ArtifactMismatchError, match="damaged"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=cut)
    cut.write_bytes(b"junk" * 100)
    with pytest.raises(ArtifactMismatchError, match="unreadable"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=cut)


@pytest.mark.parametrize(("d", "m"), [(384, 96), (768, 192), (1024, 256), (1536, 256), (32, 8), (6, 1)])
def test_codes_have_a_byte_per_four_dimensions_up_to_256(d, m):
    """ViT-S, ViT-B, ViT-L, ViT-g widths: one 8-bit code per 4 dimensions, capped at 256 bytes (a
    divisor of d); so the codes are at most 1/16 of the float32 vector."""
    assert vindex.pq_bytes(d) == m and d % m == 0 and 16 * m <= 4 * d


def test_an_index_with_codes_of_another_size_is_stale(data, tmp_path, monkeypatch):
    """A saved ivfpq index whose code size this version would not build is refused as stale (the
    engine then rebuilds it): its shortlist length is chosen for today's codes."""
    xb, _, ids, _, _ = data
    path = tmp_path / "vectors.f32"
    monkeypatch.setattr(building, "PQ_DIMS", 8)  # 8 dimensions a byte, as the first ivfpq builds had
    old = vindex.build(xb[:2000], ids[:2000], kind="ivfpq", fingerprint="f", data_version=3, exact_path=path)
    blob = vindex.to_bytes(old)
    assert vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=path).faiss_index.pq.M == 4
    monkeypatch.undo()
    with pytest.raises(ArtifactMismatchError, match="4-byte codes, this version builds 8"):
        vindex.from_bytes(blob, fingerprint="f", data_version=3, exact_path=path)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_chunked_build_equals_one_shot(kind, tmp_path):
    n, d = 6000 if kind == "ivfpq" else 3000, 16
    xb, xq = _clustered(n, d, 3), _clustered(20, d, 4)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    one = vindex.build(xb, ids, kind=kind, fingerprint="f", data_version=1, exact_path=tmp_path / "one.f32")
    rows = vindex.train_rows(kind, n)
    chunks = ((ids[s:s + 1000], xb[s:s + 1000]) for s in range(0, n, 1000))
    two = vindex.build_chunked(xb[rows], chunks, n=n, dim=d, kind=kind, fingerprint="f", data_version=1,
                               exact_path=tmp_path / "two.f32")
    assert two.kind == one.kind == kind
    for a, b in zip(one.search(xq, 10), two.search(xq, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(two.ids()), ids)
    if kind == "ivfpq":
        assert (tmp_path / "one.f32").read_bytes()[vindex.EXACT_HEADER:] == (tmp_path / "two.f32").read_bytes()[
            vindex.EXACT_HEADER:]
        assert not list(tmp_path.glob(".*.tmp"))  # temporary files moved or removed


def test_chunked_build_checks_its_chunks(tmp_path):
    xb = _clustered(400, 8, 5)
    with pytest.raises(ValueError, match="announced"):
        vindex.build_chunked(xb, [(np.arange(400), xb)], n=300, dim=8, kind="ivfpq", fingerprint="f",
                             data_version=0, exact_path=tmp_path / "v.f32")
    with pytest.raises(ValueError, match="unique"):
        vindex.build_chunked(xb, [(np.arange(200), xb[:200]), (np.arange(200), xb[200:])], n=400, dim=8,
                             kind="ivfpq", fingerprint="f", data_version=0, exact_path=tmp_path / "v.f32")
    assert not list(tmp_path.iterdir())  # nothing half-written is left
    with pytest.raises(ValueError, match="exact_path"):
        vindex.build(xb, np.arange(400), kind="ivfpq", fingerprint="f", data_version=0)


def test_auto_switches_to_ivfpq_above_the_exact_limit():
    assert vindex.choose_kind("auto", vindex.AUTO_EXACT_MAX) == "flat"
    assert vindex.choose_kind("auto", vindex.AUTO_EXACT_MAX + 1) == "ivfpq"


def test_empty_ivfpq(tmp_path):
    idx = vindex.build(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), kind="ivfpq", fingerprint="f",
                       data_version=0, exact_path=tmp_path / "v.f32")
    scores, got = idx.search(_clustered(2, 8, 1), 5)
    assert got.shape == scores.shape == (2, 0)


def test_vectors_read_back_by_id_when_ids_ascend(tmp_path):
    """The engine adds rows in ascending id order: read-back finds them by binary search, and an
    id between two stored ones is still refused."""
    xb = _clustered(3000, 16, 3)
    ids = np.arange(0, 6000, 2, dtype=np.int64)  # even ids only
    idx = vindex.build(xb, ids, kind="ivfpq", fingerprint="f", data_version=0, exact_path=tmp_path / "v.f32")
    np.testing.assert_array_equal(idx.vectors_of(np.array([5998, 0, 2000])), xb[[2999, 0, 1000]])
    with pytest.raises(KeyError):
        idx.vectors_of(np.array([0, 7]))
