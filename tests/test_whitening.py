from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import ArtifactMismatchError
from retrieval.whitening import Whitening, fit


def _data(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3, 0.1, d)
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d)).astype(np.float32)


def test_whitened_covariance_is_identity():
    x = _data()
    w = fit(x)
    y = (x - w.mean) @ w.projection  # before the final L2
    cov = np.cov(y, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(x.shape[1]), atol=1e-3)


def test_apply_normalises_and_reduces():
    x = _data()
    w = fit(x, dim=5)
    y = w.apply(x)
    assert y.shape == (len(x), 5) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    with pytest.raises(ArtifactMismatchError):
        w.apply(np.zeros((2, 7), np.float32))


def test_fit_is_deterministic_up_to_float_noise():
    """Eigenvector signs are fixed, so reordering or re-centring the data cannot flip components."""
    x = _data()
    a = fit(x)
    b = fit(x[::-1] + 0.0)  # same rows, other order: other summation order, eigh may flip signs
    np.testing.assert_allclose(a.projection, b.projection, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(a.apply(x), b.apply(x), atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(1, 8), seed=st.integers(0, 1000))
def test_bytes_round_trip(n, d, seed):
    w = fit(_data(n, d, seed))
    back = Whitening.from_bytes(w.to_bytes())
    assert back.digest() == w.digest() and back.fitted_on == n


def test_invalid():
    with pytest.raises(ValueError):
        fit(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        fit(_data(), dim=50)
