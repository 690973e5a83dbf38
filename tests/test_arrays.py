"""The shared numeric helpers against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.arrays import l2n, principal_axes


def test_principal_axes_recover_a_known_covariance():
    rng = np.random.default_rng(0)
    n, d = 500, 6
    q, _ = np.linalg.qr(rng.normal(size=(n, d)) - rng.normal(size=(n, d)).mean(axis=0))
    z = np.sqrt(n - 1) * np.linalg.qr(q - q.mean(axis=0))[0]  # sample covariance exactly I
    variances = np.array([9.0, 4.0, 2.0, 1.0, 0.5, 0.1])
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu = rng.normal(size=d)
    x = z * np.sqrt(variances) @ rot.T + mu
    mean, axes, got = principal_axes(x, 4)
    np.testing.assert_allclose(mean, mu, atol=1e-12)
    np.testing.assert_allclose(got, variances[:4], rtol=1e-9)
    np.testing.assert_allclose(np.abs(axes.T @ rot[:, :4]), np.eye(4), atol=1e-9)  # the axes, up to sign
    assert (axes[np.abs(axes).argmax(axis=0), np.arange(4)] > 0).all()  # the sign rule
    again = principal_axes(x[::-1], 4)[1]  # row order changes nothing
    np.testing.assert_allclose(again, axes, atol=1e-9)


def test_principal_axes_checks_its_input():
    with pytest.raises(ValueError, match="2 rows"):
        principal_axes(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="1..3"):
        principal_axes(np.zeros((5, 3)), 4)


def test_l2n_rows_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2n(x), [[0.6, 0.8], [0.0, 0.0]])
    assert l2n(x).dtype == np.float32 and l2n(np.array([3.0, 4.0])).shape == (2,)
