"""PCA-whitening learned from descriptors: fit, apply, save, load. numpy, row-major (n, d)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from .arrays import l2n, principal_axes
from .errors import ArtifactMismatchError


@dataclass(frozen=True)
class Whitening:
    """x -> L2((x - mean) @ projection). mean: (d,); projection: (d, k) float32."""

    mean: np.ndarray
    projection: np.ndarray
    fitted_on: int  # number of descriptors it was learned from

    @property
    def dim_in(self) -> int:
        return int(self.projection.shape[0])

    @property
    def dim_out(self) -> int:
        return int(self.projection.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k) float32, rows L2-normalised."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim_in:
            raise ArtifactMismatchError(
                f"descriptors of shape {x.shape} do not fit a whitening learned for dim {self.dim_in}"
            )
        y = (x - self.mean) @ self.projection
        return l2n(y)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.mean).tobytes())
        h.update(np.ascontiguousarray(self.projection).tobytes())
        return h.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, projection=self.projection, fitted_on=np.int64(self.fitted_on))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        with np.load(io.BytesIO(data)) as f:
            return cls(f["mean"].astype(np.float32), f["projection"].astype(np.float32), int(f["fitted_on"]))


def fit(x: np.ndarray, *, dim: int | None = None, floor: float = 1e-6) -> Whitening:
    """Learn PCA-whitening from descriptors x (n, d).

    Projection = V_k diag(lambda_k)^(-1/2) over the top-k eigenpairs of the covariance
    (k = dim, default d), eigenvalues floored at `floor` x the largest so that directions with
    no variance are not blown up. Sign of each eigenvector fixed (largest |entry| positive),
    so the same data always gives the same whitening.
    """
    n, d = np.shape(x)
    if n < 2:
        raise ValueError(f"whitening needs at least 2 descriptors, got {n}")
    k = d if dim is None else int(dim)
    if not 1 <= k <= d:
        raise ValueError(f"whitening dim must be in 1..{d}, got {dim}")
    mean, eigvec, eigval = principal_axes(x, k)
    eigval = np.maximum(eigval, floor * max(float(eigval[0]), 1e-30))
    projection = eigvec / np.sqrt(eigval)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), n)
