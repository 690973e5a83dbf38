"""The numeric helper every layer needs: rows scaled to unit length. numpy, row-major (n, d)."""

from __future__ import annotations

import numpy as np


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (n, d) (or one vector (d,)) scaled to unit L2 norm, float32; zero rows stay zero."""
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)
