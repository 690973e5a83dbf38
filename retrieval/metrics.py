"""Retrieval metrics exactly as revisitop's `compute_map` (Radenovic et al., CVPR 2018). Pure numpy.

ranks: (n_db, n_queries) database indices, best first (the revisitop D x Q layout, kept here
because that is the published file format). Per query, positions of the positives are lowered by
the number of junk images ranked above them (junk is removed from the list); AP is the trapezoidal
area with recall step 1/|positives| (positives missing from a truncated ranking add nothing);
precision@k uses the window min(k, position of the last retrieved positive); queries without
positives are left out of the means (their AP and P@k are NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KAPPAS = (1, 5, 10)


@dataclass(frozen=True)
class QueryTruth:
    ok: np.ndarray  # database indices counted as positives
    junk: np.ndarray  # database indices ignored


@dataclass(frozen=True)
class Scores:
    map: float
    aps: np.ndarray  # (n_queries,), NaN for queries without positives
    mp: np.ndarray  # (len(kappas),) mean precision at each kappa
    prs: np.ndarray  # (n_queries, len(kappas))
    kappas: tuple[int, ...]

    def as_dict(self) -> dict[str, float]:
        out = {"mAP": float(self.map)}
        out.update({f"mP@{k}": float(v) for k, v in zip(self.kappas, self.mp)})
        return out


def average_precision(positions: np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP from 0-based, junk-corrected, increasing positions of retrieved positives."""
    if n_positives <= 0:
        raise ValueError("AP needs at least one positive")
    pos = np.asarray(positions, np.float64)
    j = np.arange(len(pos), dtype=np.float64)
    precision_0 = np.where(pos == 0, 1.0, j / np.where(pos == 0, 1.0, pos))
    precision_1 = (j + 1) / (pos + 1)
    return float(((precision_0 + precision_1) / 2).sum() / n_positives)


def compute_map(ranks: np.ndarray, truth: Sequence[QueryTruth], kappas: Sequence[int] = KAPPAS) -> Scores:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(truth):
        raise ValueError(f"ranks must be (n_db, {len(truth)}), got shape {ranks.shape}")
    kappas = tuple(int(k) for k in kappas)
    nq = len(truth)
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(kappas)), np.nan)
    for i, t in enumerate(truth):
        if len(t.ok) == 0:
            continue
        column = ranks[:, i]
        pos = np.flatnonzero(np.isin(column, t.ok))
        junk = np.flatnonzero(np.isin(column, t.junk))
        pos = pos - np.searchsorted(junk, pos)  # junk ranked above each positive
        aps[i] = average_precision(pos, len(t.ok))
        if len(pos) == 0:  # revisitop would fail on max() of nothing; no positive retrieved -> 0
            prs[i] = 0.0
            continue
        one_based = pos + 1
        for j, k in enumerate(kappas):
            window = min(int(one_based.max()), k)
            prs[i, j] = (one_based <= window).sum() / window
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("no query has any positive image")
    return Scores(float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs, kappas)


def protocol_truth(easy: Sequence[np.ndarray], hard: Sequence[np.ndarray], junk: Sequence[np.ndarray],
                   protocol: str) -> list[QueryTruth]:
    """Revisited Easy / Medium / Hard by relabelling positives and junk."""
    out = []
    for e, h, j in zip(easy, hard, junk):
        e, h, j = (np.asarray(a, np.int64) for a in (e, h, j))
        if protocol == "easy":
            out.append(QueryTruth(ok=e, junk=np.concatenate([j, h])))
        elif protocol == "medium":
            out.append(QueryTruth(ok=np.concatenate([e, h]), junk=j))
        elif protocol == "hard":
            out.append(QueryTruth(ok=h, junk=np.concatenate([j, e])))
        else:
            raise ValueError(f"unknown protocol {protocol!r}; valid: easy, medium, hard")
    return out
