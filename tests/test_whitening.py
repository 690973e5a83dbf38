from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import ArtifactMismatchError
from retrieval.whitening import Fitted, Whitening, decode, encode, fit


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
    back = decode(encode(Fitted(w, 0, None))).whitening
    assert back is not None and back.digest() == w.digest() and back.fitted_on == n


def test_invalid():
    with pytest.raises(ValueError):
        fit(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        fit(_data(), dim=50)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(1, 8), seed=st.integers(0, 1000), version=st.integers(0, 10**6),
       source=st.one_of(st.none(), st.text(max_size=20)))
def test_record_round_trip(n, d, seed, version, source):
    """The index's whitening record: encode then decode gives the same whitening and metadata,
    through JSON as the store keeps it."""
    import json

    fitted = Fitted(fit(_data(n, d, seed)), version, {"enabled": True, "min_images": 5, "dim": None}, source)
    back = decode(json.loads(json.dumps(encode(fitted))), dim_in=d)
    assert back.whitening is not None and back.digest == fitted.digest
    assert (back.data_version, back.settings, back.source) == (version, fitted.settings, source)
    none = decode(encode(Fitted(None, version, None)))
    assert none.whitening is None and none.digest is None


def test_decode_refuses_what_encode_did_not_write():
    import base64

    good = encode(Fitted(fit(_data()), 1, None))
    nan = Whitening(np.full(12, np.nan, np.float32), fit(_data()).projection, 5)
    cases = {
        "cannot be read": {**good, "data": base64.b64encode(b"not an npz").decode()},
        "cannot be read (Error": {**good, "data": "not base64!"},
        "recorded digest": {**good, "digest": "0" * 16},
        "not finite": encode(Fitted(nan, 1, None)),  # its digest is the damaged arrays' own
        "not one this program writes": ["data"],
    }
    for said, record in cases.items():
        with pytest.raises(ArtifactMismatchError, match=re.escape(said)):
            decode(record)
    with pytest.raises(ArtifactMismatchError, match="takes 12-d descriptors but the rows hold 13-d ones"):
        decode(good, dim_in=13)
