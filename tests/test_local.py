from __future__ import annotations

import numpy as np

from retrieval.local import DEFAULT_DIM, DEFAULT_PATCHES, LocalPCA, fit_pca, grid_xy, pack, select, select_many, unpack


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
    back = LocalPCA.from_bytes(pca.to_bytes())
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
