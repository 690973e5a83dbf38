from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.visualize import foreground_masks, pca_panel, pca_rgb


def _scene(seed: int, h: int = 8, w: int = 10, d: int = 16):
    """Patches: a centred object of one cluster (with internal structure) on a background cluster."""
    rng = np.random.default_rng(seed)
    fg_dir, bg_dir = np.zeros(d), np.zeros(d)
    fg_dir[0], bg_dir[0] = 5.0, -5.0
    mask = np.zeros((h, w), bool)
    mask[2:6, 3:8] = True
    x = np.where(mask[..., None], fg_dir, bg_dir) + rng.normal(0, 0.3, (h, w, d))
    x[mask, 1:4] += rng.normal(0, 2.0, (int(mask.sum()), 3))  # structure inside the object
    return x.reshape(h * w, d).astype(np.float32), mask


@pytest.mark.parametrize("flip", [False, True])
def test_foreground_recovered_whatever_the_sign(flip):
    scenes = [_scene(0), _scene(1)]
    patches = [(-p if flip else p) for p, _ in scenes]
    masks = foreground_masks(patches, [(8, 10), (8, 10)])
    for got, (_, want) in zip(masks, scenes):
        assert np.array_equal(got, want)


def test_pca_rgb_background_black_foreground_coloured():
    scenes = [_scene(2), _scene(3)]
    maps = pca_rgb([p for p, _ in scenes], [(8, 10), (8, 10)])
    for rgb, (_, mask) in zip(maps, scenes):
        assert rgb.shape == (8, 10, 3) and rgb.dtype == np.float32
        assert (rgb[~mask] == 0).all()
        assert rgb[mask].std(axis=0).min() > 0.05  # components vary inside the object
        assert 0 <= rgb.min() and rgb.max() <= 1


def test_pca_rgb_scaled_jointly_over_images():
    maps = pca_rgb([_scene(4)[0], _scene(5)[0]], [(8, 10), (8, 10)])
    fg = np.concatenate([m[m.any(axis=-1)] for m in maps])
    np.testing.assert_allclose(fg.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(fg.max(axis=0), 1, atol=1e-6)


def test_pca_rgb_rejects_mismatched_grid():
    with pytest.raises(ValueError, match="grid"):
        pca_rgb([np.zeros((10, 4), np.float32)], [(3, 4)])


def test_panel_layout():
    ims = [Image.new("RGB", (200, 100), "red"), Image.new("RGB", (50, 100), "blue")]
    maps = [np.ones((4, 8, 3), np.float32), np.zeros((8, 2, 3), np.float32)]
    out = pca_panel(ims, maps, height=64)
    assert out.height == 2 * (64 + 8) + 8
    assert out.width == 128 * 2 + 3 * 8
    assert out.getpixel((8 + 10, 8 + 10)) == (255, 0, 0)
    assert out.getpixel((8 + 128 + 8 + 10, 8 + 10)) == (255, 255, 255)  # map of ones -> white
