"""PCA-whitening learned from descriptors: fit, apply, save, load. numpy, row-major (n, d).

An index keeps its whitening as one JSON record (the store's meta entry "whitening"): `encode`
writes it and `decode` reads and checks it, for the engine and for `retrieve check` alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import affine_from_text, l2n, npz_text, principal_axes
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


@dataclass(frozen=True)
class Fitted:
    """The whitening record of an index: the whitening in force (None: descriptors are only
    L2-normalised), the store data version and the whitening settings it was fitted for, and
    where it came from when it was learned elsewhere (source)."""

    whitening: Whitening | None
    data_version: int | None
    settings: Any  # WhiteningConfig as a dict
    source: str | None = None

    @property
    def digest(self) -> str | None:
        return None if self.whitening is None else self.whitening.digest()


def encode(fitted: Fitted) -> dict[str, Any]:
    """The JSON record of `fitted`: the arrays as a base64 npz, with their digest."""
    w = fitted.whitening
    data = None if w is None else npz_text(mean=w.mean, projection=w.projection, fitted_on=np.int64(w.fitted_on))
    record = {"for_data_version": fitted.data_version, "data": data, "digest": fitted.digest, "config": fitted.settings}
    return record if fitted.source is None else {**record, "source": fitted.source}


def decode(record: Any, *, dim_in: int | None = None) -> Fitted:
    """The record `encode` wrote, checked: its arrays readable, finite and of matching shapes,
    their digest the recorded one, and (when given) taking `dim_in`-d descriptors.
    ArtifactMismatchError saying what is wrong otherwise (a phrase: "the whitening ...")."""
    if not isinstance(record, dict) or not isinstance(record.get("data"), (str, type(None))):
        raise ArtifactMismatchError(f"the whitening record is not one this program writes ({type(record).__name__})")
    version, settings = record.get("for_data_version"), record.get("config")
    if record["data"] is None:
        return Fitted(None, version, settings, record.get("source"))
    a = affine_from_text(record["data"], matrix="projection", what="the whitening", scalars=("fitted_on",))
    w = Whitening(a["mean"], a["projection"], int(a["fitted_on"]))
    if record.get("digest") != w.digest():
        raise ArtifactMismatchError("the whitening does not match its recorded digest")
    if dim_in is not None and w.dim_in != dim_in:
        raise ArtifactMismatchError(f"the whitening takes {w.dim_in}-d descriptors but the rows hold {dim_in}-d ones")
    return Fitted(w, version, settings, record.get("source"))
