"""compute_map against an independent implementation that deletes junk from each ranked list."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.metrics import QueryTruth, average_precision, compute_map, protocol_truth


def reference(ranks: np.ndarray, truth: list[QueryTruth], kappas=(1, 5, 10)):
    """Written from the protocol's description, element by element."""
    aps, prs = [], []
    for i, t in enumerate(truth):
        ok, junk = set(t.ok.tolist()), set(t.junk.tolist())
        if not ok:
            continue
        kept = [x for x in ranks[:, i].tolist() if x not in junk]  # junk simply removed
        hits = [r for r, x in enumerate(kept) if x in ok]  # 0-based positions of positives
        ap = 0.0
        for j, r in enumerate(hits):
            before = 1.0 if r == 0 else j / r  # precision just before this positive
            after = (j + 1) / (r + 1)  # precision including it
            ap += (before + after) / 2 / len(ok)
        aps.append(ap)
        row = []
        for k in kappas:
            if not hits:
                row.append(0.0)
                continue
            window = min(hits[-1] + 1, k)
            row.append(sum(1 for r in hits if r + 1 <= window) / window)
        prs.append(row)
    return float(np.mean(aps)), np.mean(prs, axis=0)


def random_case(seed: int, n_db=60, nq=7, truncate=None):
    rng = np.random.default_rng(seed)
    ranks = np.stack([rng.permutation(n_db) for _ in range(nq)], axis=1)
    if truncate:
        ranks = ranks[:truncate]
    truth = []
    for q in range(nq):
        perm = rng.permutation(n_db)
        n_ok = 0 if q == 0 else int(rng.integers(1, 12))  # query 0: no positives
        n_junk = 0 if q == 1 else int(rng.integers(0, 10))  # query 1: no junk
        truth.append(QueryTruth(ok=perm[:n_ok], junk=perm[n_ok:n_ok + n_junk]))
    return ranks, truth


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("truncate", [None, 25])
def test_matches_independent_reference(seed, truncate):
    ranks, truth = random_case(seed, truncate=truncate)
    scores = compute_map(ranks, truth)
    want_map, want_mp = reference(ranks, truth)
    assert scores.map == pytest.approx(want_map, abs=1e-12)
    np.testing.assert_allclose(scores.mp, want_mp, atol=1e-12)
    assert np.isnan(scores.aps[0]) and np.isnan(scores.prs[0]).all()  # no positives: left out


def test_tied_scores_ranked_stably():
    scores = np.array([[0.5, 0.9, 0.5, 0.9]])
    ranks = np.argsort(-scores, axis=1, kind="stable").T
    assert ranks[:, 0].tolist() == [1, 3, 0, 2]
    s = compute_map(ranks, [QueryTruth(ok=np.array([3, 0]), junk=np.array([1]))])
    # junk 1 removed -> [3, 0, 2]: positives at 0 and 1 -> AP 1
    assert s.map == pytest.approx(1.0)


def test_closed_form_cases():
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    # one positive at position 1 of 2 -> (0/1 + 1/2)/2
    assert average_precision(np.array([1]), 1) == pytest.approx(0.25)
    # positives missing from a truncated list add nothing
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)
    ranks = np.array([[4], [2], [7], [1]])
    s = compute_map(ranks, [QueryTruth(ok=np.array([2, 1]), junk=np.array([4]))])
    # junk removed -> [2, 7, 1]: positives at 0 and 2 -> AP = (1+1)/2/2 + (1/2 + 2/3)/2/2
    assert s.map == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # mP@k window is min(k, last positive's 1-based position = 3)
    assert s.as_dict()["mP@1"] == 1.0 and s.as_dict()["mP@5"] == pytest.approx(2 / 3)


def test_protocols_relabel():
    easy, hard, junk = [np.array([1, 2])], [np.array([3])], [np.array([4])]
    e, m, h = (protocol_truth(easy, hard, junk, p)[0] for p in ("easy", "medium", "hard"))
    assert set(e.ok) == {1, 2} and set(e.junk) == {3, 4}
    assert set(m.ok) == {1, 2, 3} and set(m.junk) == {4}
    assert set(h.ok) == {3} and set(h.junk) == {1, 2, 4}
    with pytest.raises(ValueError, match="valid"):
        protocol_truth(easy, hard, junk, "extreme")


def test_shape_and_empty_errors():
    with pytest.raises(ValueError, match="n_db"):
        compute_map(np.zeros((5, 2), int), [QueryTruth(np.array([1]), np.array([]))])
    with pytest.raises(ValueError, match="no query"):
        compute_map(np.zeros((5, 1), int), [QueryTruth(np.array([], int), np.array([]))])
