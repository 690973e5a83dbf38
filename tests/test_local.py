from __future__ import annotations

import numpy as np

from retrieval.local import (DEFAULT_DIM, DEFAULT_PATCHES, blobs_fit, decode_pca, encode_pca, fit_pca, grid_xy, pack,
                             select, select_many, unpack)


def test_budget_under_32kb():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(32 * 24, 384)).astype(np.float32)
    pca = fit_pca(patches)
    f = select(patches, (24, 32), pca)
    feats, coords = pack(f)
    assert len(feats) + len(coords) <= 32 * 1024
    assert f.feats.shape == (DEFAULT_PATCHES, DEFAULT_DIM) and f.feats.dtype == np.float16


def test_select_keeps_distinctive_and_round_trips():
    rng = np.random.default_rng(1)
    patches = np.zeros((6 * 8, 16), np.float32) + rng.normal(0, 0.01, (48, 16))
    distinct = [3, 17, 40]
    patches[distinct] += rng.normal(0, 3, (3, 16))
    pca = fit_pca(patches, dim=8)
    f = select(patches, (6, 8), pca, n=3)
    assert sorted(((f.xy[:, 1] - 0.5) * 8 + (f.xy[:, 0] - 0.5)).astype(int).tolist()) == distinct
    back = unpack(*pack(f), (6, 8), pca.dim)
    np.testing.assert_array_equal(back.xy, f.xy)
    np.testing.assert_array_equal(back.feats, f.feats)
    np.testing.assert_allclose(np.linalg.norm(f.feats.astype(np.float32), axis=1), 1, atol=2e-3)


def test_pca_components_are_the_principal_axes():
    """Against an SVD of the centred data (the reference): same axes, in order, signs fixed."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 24)) * np.linspace(3, 0.2, 24) @ np.linalg.qr(rng.normal(size=(24, 24)))[0] + 2.0
    pca = fit_pca(x, dim=10)
    vt = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:10].T
    signs = np.sign(vt[np.abs(vt).argmax(axis=0), np.arange(10)])
    np.testing.assert_allclose(pca.components, vt * signs, atol=1e-5)
    np.testing.assert_allclose(pca.mean, x.mean(0), rtol=1e-6)
    assert fit_pca(x[:5], dim=10).components.shape == (24, 4)  # at most t - 1 components


def test_pca_round_trip_and_grid():
    pca = fit_pca(np.random.default_rng(2).normal(size=(50, 10)), dim=4)
    back = decode_pca(encode_pca(pca))
    np.testing.assert_array_equal(back.components, pca.components)
    assert grid_xy((2, 3)).tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5]]


def test_select_many_equals_select_per_image():
    import torch

    rng = np.random.default_rng(3)
    pca = fit_pca(rng.normal(size=(500, 48)).astype(np.float32), dim=16)
    patches = rng.normal(size=(5, 12 * 9, 48)).astype(np.float32)
    many = select_many(torch.from_numpy(patches), (12, 9), pca, n=40)
    assert len(many) == 5
    for one, x in zip(many, patches):
        want = select(x, (12, 9), pca, n=40)
        np.testing.assert_array_equal(one.xy, want.xy)  # the same patches, in the same order
        np.testing.assert_allclose(one.feats.astype(np.float32), want.feats.astype(np.float32), atol=2e-3)
        assert one.feats.dtype == np.float16 and one.grid == (12, 9)
    few = select_many(torch.from_numpy(patches[:, :20]), (4, 5), pca, n=40)  # fewer patches than n: all kept
    assert few[0].feats.shape == (20, 16)


def test_pca_text_round_trip_and_refusals():
    """The patch PCA as an index stores it: decode_pca reads what encode_pca wrote, and refuses
    anything else in one phrase (the engine and `retrieve check` both read it through here)."""
    import base64
    import io

    import pytest

    from retrieval.errors import ArtifactMismatchError

    pca = fit_pca(np.random.default_rng(2).normal(size=(50, 10)), dim=4)
    back = decode_pca(encode_pca(pca), dim_in=10)
    np.testing.assert_array_equal(back.components, pca.components)
    np.testing.assert_array_equal(back.mean, pca.mean)

    def npz(**arrays):  # noqa: ANN003, ANN202
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return base64.b64encode(buf.getvalue()).decode()

    cases = {
        "cannot be read": base64.b64encode(b"not an npz").decode(),
        "cannot be read (Error": "not base64!",
        "arrays are damaged": npz(mean=np.zeros(10, np.float32), components=np.zeros(10, np.float32)),
        "not finite": npz(mean=np.full(10, np.inf, np.float32), components=pca.components),
        "not one this program writes": 42,
    }
    for said, text in cases.items():
        with pytest.raises(ArtifactMismatchError, match=said.replace("(", r"\(")):
            decode_pca(text)
    with pytest.raises(ArtifactMismatchError, match="takes 10-d tokens but the model makes 32-d ones"):
        decode_pca(encode_pca(pca), dim_in=32)


def test_unpack_reads_exactly_the_blobs_that_fit():
    """unpack refuses, in one ArtifactMismatchError, blobs that blobs_fit (what `retrieve check`
    applies to every row) says do not fit, and reads every one it says fits."""
    import pytest

    from retrieval.errors import ArtifactMismatchError

    rng = np.random.default_rng(3)
    patches = rng.normal(size=(12, 16)).astype(np.float32)
    pca = fit_pca(patches, dim=4)
    feats, coords = pack(select(patches, (3, 4), pca, n=5))
    for f_cut in (0, 2, 8, len(feats)):
        for c_cut in (0, 3, 4, 8, len(coords)):
            for grid in ((3, 4), (1, 1), (0, 4)):
                f, c = feats[:f_cut], coords[:c_cut]
                if blobs_fit(len(f), len(c), grid, pca.dim):
                    assert len(unpack(f, c, grid, pca.dim).feats) == len(c) // 4
                else:
                    with pytest.raises(ArtifactMismatchError, match="do not fit"):
                        unpack(f, c, grid, pca.dim)
    assert blobs_fit(len(feats), len(coords), (3, 4), pca.dim) and not blobs_fit(None, len(coords), (3, 4), pca.dim)
