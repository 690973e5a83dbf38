"""The numeric helpers every layer needs: rows scaled to unit length, the one PCA, and the text
form of a stored affine map (x -> (x - mean) @ matrix: a whitening, a patch PCA). numpy, row-major (n, d)."""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from typing import Any

import numpy as np

from .errors import ArtifactMismatchError

# what base64 and np.load raise over text that is not a base64 npz of plain arrays
_UNREADABLE = (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, binascii.Error)


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


def npz_text(**arrays: Any) -> str:
    """Arrays as base64 npz text, for a JSON value (read back by `affine_from_text`)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode()


def affine_from_text(text: Any, *, matrix: str, what: str, scalars: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays `npz_text` wrote for an affine map: "mean" (d,) and `matrix` (d, k), k >= 1, both
    finite (returned float32), and the 0-d arrays named in `scalars`. ArtifactMismatchError "`what`
    ..." saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ArtifactMismatchError(f"{what} is not one this program writes ({type(text).__name__})")
    try:
        with np.load(io.BytesIO(base64.b64decode(text, validate=True))) as f:
            out = {name: f[name] for name in ("mean", matrix, *scalars)}
        out["mean"], out[matrix] = out["mean"].astype(np.float32), out[matrix].astype(np.float32)
    except _UNREADABLE as e:
        raise ArtifactMismatchError(f"{what} cannot be read ({type(e).__name__}: {e})") from None
    mean, m = out["mean"], out[matrix]
    d, k = m.shape if m.ndim == 2 else (0, 0)
    if (mean.shape != (d,) or k < 1 or not (np.isfinite(mean).all() and np.isfinite(m).all())
            or any(out[name].shape != () for name in scalars)):
        raise ArtifactMismatchError(f"{what}'s arrays are damaged (mean {mean.shape}, {matrix} {m.shape}, or values "
                                    f"that are not finite)")
    return out
