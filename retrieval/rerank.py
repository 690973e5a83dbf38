"""Patch correspondences and geometric verification; re-ranking by verified matches. Pure numpy.

Matching: mutual nearest neighbours by cosine between two sets of unit descriptors, kept when
the similarity reaches a threshold. Verification: RANSAC of a similarity transform (scale,
rotation, translation; or affine) between patch centres, inlier threshold in patches of the
second image, then a least-squares refit on the inliers. Score: the number of inliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .arrays import l2n

MIN_INLIERS = 6  # verified: at least this many inliers (random matches reach 4 easily, see tests)
SCALE_RANGE = (0.25, 4.0)  # plausible scale between two views; collapsed models explain noise


@dataclass(frozen=True)
class Matches:
    """ia, ib: indices into the two descriptor sets; sim: cosine of each pair."""

    ia: np.ndarray
    ib: np.ndarray
    sim: np.ndarray


@dataclass(frozen=True)
class Verification:
    matches: Matches
    inliers: np.ndarray  # bool per match
    model: np.ndarray | None  # (2, 3): b_xy = model @ [a_x, a_y, 1]

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())


def mutual_nn(a: np.ndarray, b: np.ndarray, *, threshold: float = 0.5) -> Matches:
    """Mutual nearest neighbours between rows of a (m, k) and b (n, k) (unit rows), sim >= threshold."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor sets must be (m, k) and (n, k), got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, np.int64)
        return Matches(empty, empty, np.zeros(0, np.float32))
    s = a @ b.T
    ab = s.argmax(axis=1)
    ba = s.argmax(axis=0)
    ia = np.flatnonzero(ba[ab] == np.arange(len(a)))
    ib = ab[ia]
    sim = s[ia, ib]
    keep = sim >= threshold
    return Matches(ia[keep], ib[keep], sim[keep])


def fit_transform(src: np.ndarray, dst: np.ndarray, *, kind: str = "similarity") -> np.ndarray:
    """Least-squares (2, 3) transform with dst ~ M @ [src, 1]. similarity: x' = a x - b y + tx, y' = b x + a y + ty."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    if kind == "similarity":
        A = np.zeros((2 * n, 4))
        A[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], axis=1)
        A[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], axis=1)
        a, b, tx, ty = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)[0]
        return np.array([[a, -b, tx], [b, a, ty]])
    if kind == "affine":
        A = np.concatenate([src, np.ones((n, 1))], axis=1)
        return np.linalg.lstsq(A, dst, rcond=None)[0].T
    raise ValueError(f"unknown transform {kind!r}; valid: similarity, affine")


def apply_transform(model: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, np.float64)
    return xy @ model[:, :2].T + model[:, 2]


def _hypotheses(src: np.ndarray, dst: np.ndarray, picks: np.ndarray, kind: str) -> np.ndarray:
    """Models from minimal samples, all at once: picks (h, 2|3) -> (h, 2, 3); degenerate ones are NaN."""
    if kind == "similarity":  # z' = a z + t over complex numbers, from two points
        zs = src[:, 0] + 1j * src[:, 1]
        zd = dst[:, 0] + 1j * dst[:, 1]
        s1, s2, d1, d2 = zs[picks[:, 0]], zs[picks[:, 1]], zd[picks[:, 0]], zd[picks[:, 1]]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            a = (d2 - d1) / (s2 - s1)
            t = d1 - a * s1
        return np.stack([np.stack([a.real, -a.imag, t.real], -1), np.stack([a.imag, a.real, t.imag], -1)], 1)
    A = np.concatenate([src[picks], np.ones((*picks.shape, 1))], axis=2)  # (h, 3, 3)
    B = dst[picks]  # (h, 3, 2)
    ok = np.abs(np.linalg.det(A)) > 1e-9
    out = np.full((len(picks), 2, 3), np.nan)
    out[ok] = np.transpose(np.linalg.solve(A[ok], B[ok]), (0, 2, 1))
    return out


def model_scale(model: np.ndarray) -> np.ndarray:
    """Area scale factor sqrt|det| of (..., 2, 3) models (the zoom of a similarity)."""
    m = np.asarray(model)
    return np.sqrt(np.abs(m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]))


def ransac(src: np.ndarray, dst: np.ndarray, *, kind: str = "similarity", threshold: float = 1.5,
           iterations: int = 256, seed: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC over correspondences src[i] -> dst[i] (n, 2), hypotheses evaluated together.

    Hypotheses whose scale is outside SCALE_RANGE are discarded: a model that shrinks the whole
    query onto a few patches "explains" random matches. Returns (model (2, 3) or None, inlier
    mask). Deterministic for a given seed.
    """
    if kind not in ("similarity", "affine"):
        raise ValueError(f"unknown transform {kind!r}; valid: similarity, affine")
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    sample = 2 if kind == "similarity" else 3
    if n < sample:
        return None, np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, (iterations, sample))
    models = _hypotheses(src, dst, picks, kind)
    repeated = (picks[:, :, None] == picks[:, None, :]).sum(axis=(1, 2)) > sample
    models[repeated] = np.nan  # a sample that repeats a point says nothing
    with np.errstate(invalid="ignore"):
        scale = model_scale(models)
        models[~((scale >= SCALE_RANGE[0]) & (scale <= SCALE_RANGE[1]))] = np.nan
    pred_x = models[:, 0, 0:1] * src[:, 0] + models[:, 0, 1:2] * src[:, 1] + models[:, 0, 2:3]
    pred_y = models[:, 1, 0:1] * src[:, 0] + models[:, 1, 1:2] * src[:, 1] + models[:, 1, 2:3]
    with np.errstate(invalid="ignore"):  # NaN models count nothing
        inl = (pred_x - dst[:, 0]) ** 2 + (pred_y - dst[:, 1]) ** 2 <= threshold**2
    counts = inl.sum(axis=1)
    best = int(counts.argmax())
    if counts[best] < sample:
        return None, np.zeros(n, bool)
    mask = inl[best]
    refined = fit_transform(src[mask], dst[mask], kind=kind)  # least squares on the consensus set
    plausible = SCALE_RANGE[0] <= float(model_scale(refined)) <= SCALE_RANGE[1]
    # the refit replaces the sampled model when it explains the matches better by the MSAC cost
    # (squared distances, capped at the threshold): by inlier count alone, a sampled model tilted
    # by a few degrees could keep one more match at the edge of the threshold than the true shift
    if plausible and _msac(refined, src, dst, threshold) <= _msac(models[best], src, dst, threshold):
        return refined, np.linalg.norm(apply_transform(refined, src) - dst, axis=1) <= threshold
    return models[best], mask


def _msac(model: np.ndarray, src: np.ndarray, dst: np.ndarray, threshold: float) -> float:
    """Sum over matches of min(squared distance, threshold**2) (Torr and Zisserman's MSAC cost)."""
    d2 = ((apply_transform(model, src) - dst) ** 2).sum(axis=1)
    return float(np.minimum(d2, threshold**2).sum())


def verify(fa: np.ndarray, xya: np.ndarray, fb: np.ndarray, xyb: np.ndarray, *, threshold: float = 0.5,
           kind: str = "similarity", pixel_threshold: float = 1.5, seed: int = 0) -> Verification:
    """Match descriptors a -> b, then keep the matches consistent with one transform of a's
    patch centres onto b's (threshold in b's patch units)."""
    m = mutual_nn(fa, fb, threshold=threshold)
    model, inl = ransac(np.asarray(xya)[m.ia], np.asarray(xyb)[m.ib], kind=kind, threshold=pixel_threshold, seed=seed)
    return Verification(m, inl, model)


def verified(inliers: np.ndarray, *, min_inliers: int = MIN_INLIERS) -> np.ndarray:
    """Inlier counts that count as verified; those below min_inliers count as 0."""
    c = np.asarray(inliers, np.int64)
    return np.where(c >= min_inliers, c, 0)


def order_key(score: float, inliers: int | None, *, min_inliers: int = MIN_INLIERS) -> tuple[int, float]:
    """The ranking rule of a re-ranked list as a key (larger first): verified inliers, then global score."""
    n = 0 if inliers is None else int(verified(np.array(inliers), min_inliers=min_inliers))
    return n, float(score)


def rerank_order(global_scores: Sequence[float], inliers: Sequence[int], *, min_inliers: int = MIN_INLIERS) -> np.ndarray:
    """New order of a shortlist by `order_key`: verified candidates by inlier count, then the rest;
    ties (and the unverified) keep the global order. Returns indices into the shortlist."""
    g = np.asarray(global_scores, np.float64)
    return np.lexsort((np.arange(len(g)), -g, -verified(np.asarray(inliers), min_inliers=min_inliers)))


def query_expansion(xq: np.ndarray, xb_top: np.ndarray, sims: np.ndarray, *, alpha: float = 3.0) -> np.ndarray:
    """alpha-QE: L2(q + sum_i max(sim_i, 0)^alpha x_i) over the top database vectors. xq (d,), xb_top (k, d)."""
    w = np.maximum(np.asarray(sims, np.float64), 0.0) ** alpha
    v = np.asarray(xq, np.float64) + (w[:, None] * np.asarray(xb_top, np.float64)).sum(axis=0)
    return l2n(v)


def database_augmentation(xb: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, *, alpha: float = 3.0) -> np.ndarray:
    """DBA: each row replaced by L2(x + sum over its top neighbours (excluding itself) of max(sim, 0)^alpha x_j).

    neighbours, sims: (n, k) from a search of xb against itself (self match included or not)."""
    xb = np.asarray(xb, np.float64)
    nb = np.asarray(neighbours, np.int64)
    valid = (nb >= 0) & (nb != np.arange(len(xb))[:, None])
    w = np.where(valid, np.maximum(np.asarray(sims, np.float64), 0.0) ** alpha, 0.0)
    out = xb + np.einsum("nk,nkd->nd", w, xb[np.where(valid, nb, 0)])
    return l2n(out)
