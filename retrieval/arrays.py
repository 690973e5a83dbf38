"""The numeric helper every layer needs: rows scaled to unit length. numpy, row-major (n, d)."""

from __future__ import annotations

import numpy as np


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (n, d) (or one vector (d,)) scaled to unit L2 norm, float32; zero rows stay zero."""
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def principal_axes(x: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one PCA of the project: rows of x (n, d), n >= 2 -> (mean (d,), axes (d, k), variances (k,)),
    float64, variances decreasing (the covariance's top-k eigenpairs, divisor n - 1).

    Each axis's sign is fixed so that its largest-magnitude entry is positive (the same data always
    gives the same axes; scikit-learn's svd_flip rule). Computed from the d x d covariance, which
    costs one (n, d) pass and suits n >> d (whitening: up to millions of descriptors).
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    k = d if k is None else int(k)
    if not 1 <= k <= d:
        raise ValueError(f"PCA keeps 1..{d} axes, asked for {k}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / (n - 1))
    order = np.argsort(eigval)[::-1][:k]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(k)])
    return mean, eigvec * np.where(signs == 0, 1.0, signs), eigval
