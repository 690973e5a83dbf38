from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.pca_maps import foreground_masks, pca_panel, pca_rgb


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


# ---- correspondence pictures -------------------------------------------------------------------

from retrieval.visualize import (  # noqa: E402
    DISPLAY_SIDE, caption_lines, choose_lines, colour_bar, compose, draw_matches, heat_overlay, heat_pair, layout,
    line_colours, line_grid,
)

from .conftest import synth_photo  # noqa: E402


def _grid_points(w: int, h: int, step: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(step / 2, w, step), np.arange(step / 2, h, step))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _cell_of(x: float, y: float, size: tuple[int, int], rows: int, cols: int) -> tuple[int, int]:
    return min(rows - 1, int(y / size[1] * rows)), min(cols - 1, int(x / size[0] * cols))


@pytest.mark.parametrize("max_lines", [1, 7, 50])
def test_choose_lines_at_most_max_one_per_cell_strongest(max_lines):
    size = (560, 420)
    xy = _grid_points(*size, 14)  # 40 x 30 = 1200 matches, like a dense good match
    strength = np.random.default_rng(0).random(len(xy))
    chosen = choose_lines(xy, strength, size=size, max_lines=max_lines)
    assert 1 <= len(chosen) <= max_lines and len(set(chosen.tolist())) == len(chosen)
    rows, cols = line_grid(xy, size=size, max_lines=max_lines)
    # brute force, independently: the strongest match of every occupied cell of that grid
    best: dict[tuple[int, int], int] = {}
    for i, (x, y) in enumerate(xy):
        c = _cell_of(x, y, size, rows, cols)
        if c not in best or strength[i] > strength[best[c]]:
            best[c] = i
    assert sorted(chosen.tolist()) == sorted(best.values())  # one per cell, no two in the same cell
    assert len(best) <= max_lines


def test_choose_lines_spread_over_the_query():
    size = (560, 420)
    xy = _grid_points(*size, 14)
    chosen = choose_lines(xy, np.random.default_rng(1).random(len(xy)), size=size, max_lines=50)
    assert len(chosen) >= 40  # the budget is used, not a handful of lines
    covered = {_cell_of(x, y, size, 3, 4) for x, y in xy[chosen]}
    assert len(covered) == 12  # every part of a coarse 4 x 3 grid over the query has lines


def test_choose_lines_concentrated_matches_still_get_lines():
    size = (560, 420)
    xy = _grid_points(140, 105, 7)  # 20 x 15 matches, all in the top-left sixteenth of the query
    chosen = choose_lines(xy, np.random.default_rng(2).random(len(xy)), size=size, max_lines=50)
    assert 30 <= len(chosen) <= 50  # the grid refines to the area that has matches
    assert {_cell_of(x, y, (140, 105), 2, 2) for x, y in xy[chosen]} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_choose_lines_few_matches_all_drawn_and_deterministic():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (20, 2))
    s = rng.random(20)
    assert sorted(choose_lines(xy, s, size=(400, 400), max_lines=50).tolist()) == list(range(20))
    dense = _grid_points(400, 300, 10)
    sd = rng.random(len(dense))
    first = choose_lines(dense, sd, size=(400, 300), max_lines=30)
    assert np.array_equal(first, choose_lines(dense, sd, size=(400, 300), max_lines=30))
    perm = rng.permutation(len(dense))  # the same matches in another order: the same ones chosen
    again = perm[choose_lines(dense[perm], sd[perm], size=(400, 300), max_lines=30)]
    assert sorted(again.tolist()) == sorted(first.tolist())
    assert len(choose_lines(dense, sd, size=(400, 300), max_lines=0)) == 0
    assert len(choose_lines(np.zeros((0, 2)), np.zeros(0), size=(400, 300))) == 0
    with pytest.raises(ValueError, match="max_lines"):
        choose_lines(dense, sd, size=(400, 300), max_lines=-1)


def test_line_colours_distinct_evenly_spaced_hues():
    import colorsys

    for n in (1, 2, 7, 50):
        c = line_colours(n)
        hues = sorted(colorsys.rgb_to_hsv(*(c[i] / 255))[0] for i in range(n))
        assert len({tuple(r) for r in c}) == n
        gaps = np.diff([*hues, hues[0] + 1])
        np.testing.assert_allclose(gaps, 1 / n, atol=0.01)


def test_layout_readable_size():
    for a, b in [((100, 80), (60, 90)), ((2000, 1500), (1600, 1200)), ((300, 900), (1200, 700))]:
        lay = layout(a, b)
        for x, y, w, h in lay.boxes:
            assert max(w, h) >= DISPLAY_SIDE
            assert 0 <= x and x + w <= lay.size[0] and 0 <= y and y + h <= lay.size[1]
        assert not lay.stacked
        (_, ya, _, ha), (_, yb, _, hb) = lay.boxes
        assert ya == yb == 0 and ha == hb  # side by side at one height
    lay = layout((2000, 1500), (1600, 1200))
    assert max(lay.boxes[0][2:]) == DISPLAY_SIDE  # large inputs are reduced to the display size


def test_layout_two_wide_images_one_above_the_other():
    lay = layout((1600, 900), (1200, 500))
    (xa, ya, wa, ha), (xb, yb, wb, hb) = lay.boxes
    assert lay.stacked and xa == xb == 0 and wa == wb >= DISPLAY_SIDE and yb >= ya + ha
    assert lay.size[1] > lay.size[0] * 0.6  # not a thin strip
    assert not layout((1600, 900), (600, 500)).stacked  # one wide, one not: side by side
    assert not layout((1800, 1200), (1800, 1200)).stacked  # 3:2 photos: side by side
    ims = [synth_photo(0, (320, 180)), synth_photo(1, (300, 150))]
    out = draw_matches(*ims, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    assert out.width == layout(ims[0].size, ims[1].size).size[0] and out.height > out.width


def _grey_close(a: Image.Image, b: Image.Image, box, tol: int = 6) -> float:
    x, y, w, h = box
    ga = np.asarray(a.crop((x, y, x + w, y + h)).convert("L"), np.int16)
    gb = np.asarray(b.crop((x, y, x + w, y + h)).convert("L"), np.int16)
    return float((np.abs(ga - gb) <= tol).mean())


def _dense_pair():
    """A photo and a shifted crop of it, every patch centre of the overlap matched: 690 inliers."""
    a = synth_photo(5, (448, 336))
    b = a.crop((28, 42, 448, 336))
    xy = _grid_points(448, 336, 14)
    xy = xy[(xy[:, 0] > 28) & (xy[:, 1] > 42)]
    return a, b, xy, xy - [28.0, 42.0], np.random.default_rng(4).uniform(0.6, 1.0, len(xy))


def test_matches_keep_the_images_visible():
    a, b, xa, xb, s = _dense_pair()
    lay = layout(a.size, b.size)
    plain = compose(a, b, lay)
    drawn = draw_matches(a, b, xa, xb, s)
    assert drawn.height > lay.size[1]  # the caption strip
    for box in lay.boxes:
        assert _grey_close(drawn, plain, box) >= 0.7
    # the measure sees the problem it guards against: every match as a line buries the images
    buried = draw_matches(a, b, xa, xb, s, max_lines=len(s))
    assert min(_grey_close(buried, plain, box) for box in lay.boxes) < 0.7


def _flat(size=(400, 300)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def _rows_match_set(n: int = 30):
    """Matches with distinct heights, a to the same place in b: each line is horizontal, alone in its row."""
    y = 5 + 9.5 * np.arange(n)
    x = np.random.default_rng(6).uniform(20, 380, n)
    xy = np.stack([x, y], axis=1)
    return xy, np.random.default_rng(7).uniform(0.5, 1.0, n)


def _gap_colours(pic: Image.Image, lay, xy: np.ndarray) -> np.ndarray:
    """Colour of the canvas in the white gap between the images, on each match's row."""
    ax, _, aw, _ = lay.boxes[0]
    gx = (ax + aw + lay.boxes[1][0]) // 2
    ys = np.round(xy[:, 1] * lay.boxes[0][3] / 300).astype(int)
    a = np.asarray(pic, np.int16)
    out = []
    for y in ys:  # an antialiased line covers one or two rows: the most coloured of the rows around it
        near = a[y - 1:y + 2, gx]
        out.append(near[np.argmax(near.max(axis=1) - near.min(axis=1))])
    return np.array(out)


def test_drawn_lines_are_the_chosen_ones():
    xy, s = _rows_match_set()
    lay = layout((400, 300), (400, 300))
    for max_lines in (0, 4, 12):
        chosen = set(choose_lines(xy, s, size=(400, 300), max_lines=max_lines).tolist())
        pic = draw_matches(_flat(), _flat(), xy, xy, s, max_lines=max_lines)
        gap = _gap_colours(pic, lay, xy)
        coloured = {i for i, c in enumerate(gap) if c.max() - c.min() > 60}
        assert coloured == chosen and len(coloured) <= max_lines


def test_outliers_hidden_unless_asked():
    xy, s = _rows_match_set()
    inl = np.arange(len(s)) % 2 == 0
    lay = layout((400, 300), (400, 300))
    plain = compose(_flat(), _flat(), lay)
    hidden = draw_matches(_flat(), _flat(), xy, xy, s, inliers=inl, max_lines=50)
    gap = _gap_colours(hidden, lay, xy)
    assert all(c.max() - c.min() > 60 for c in gap[inl]) and all((c == 255).all() for c in gap[~inl])
    for i in np.flatnonzero(~inl):  # nothing at an outlier's ends either
        for (bx, by, bw, bh) in lay.boxes:
            p = (int(bx + xy[i, 0] * bw / 400), int(by + xy[i, 1] * bh / 300))
            assert hidden.getpixel(p) == plain.getpixel(p)
    shown = draw_matches(_flat(), _flat(), xy, xy, s, inliers=inl, max_lines=50, show_outliers=True)
    red = _gap_colours(shown, lay, xy)[~inl]
    assert all(c[0] > c[1] + 40 and c[0] > c[2] + 40 for c in red)


def test_caption_wraps_to_the_width():
    parts = ["784 matches, 783 inliers: verified", "dinov2_vits14", "50 of 783 inliers drawn as lines"]
    assert caption_lines(parts, 2000) == [" · ".join(parts)]
    narrow = caption_lines(parts, 260)
    assert len(narrow) > 1 and " · ".join(narrow).split(" · ") == parts
    a, b = _flat(), _flat()
    one = draw_matches(a, b, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    two = draw_matches(a, b, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), caption=["x" * 200])
    assert two.height > one.height


def test_heat_map_keeps_the_images_visible_and_shows_values():
    a, b = synth_photo(8, (448, 336)), synth_photo(9, (336, 448))
    lay = layout(a.size, b.size)
    plain = compose(a, b, lay)
    va = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1))
    vb = np.ones((32, 24), np.float32)
    pic = heat_pair(a, b, va, vb)
    assert pic.width > lay.size[0]  # the colour bar beside the images
    for box in lay.boxes:
        assert _grey_close(pic, plain, box, tol=3) >= 0.95  # luminance is kept: every grey level stays
    # the old kind of overlay (a colour sheet blended over the image) fails the same measure
    x, y, w, h = lay.boxes[0]
    sheet = Image.blend(plain.crop((x, y, x + w, y + h)), Image.new("RGB", (w, h), (200, 30, 30)), 0.55)
    assert _grey_close(sheet, plain.crop((x, y, x + w, y + h)), (0, 0, w, h), tol=3) < 0.7
    # and the values are there to read: on grey, 0 is blue and 1 is red
    grey = heat_overlay(_flat((64, 32)), np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
    lo, hi = np.asarray(grey)[16, 4].astype(int), np.asarray(grey)[16, 60].astype(int)
    assert lo[2] > lo[0] + 40 and hi[0] > hi[2] + 40


def test_colour_bar_runs_from_blue_at_0_to_red_at_1():
    bar = np.asarray(colour_bar(300)).astype(int)
    column = bar[:, 12]  # inside the bar
    coloured = np.flatnonzero(column.max(axis=1) - column.min(axis=1) > 40)
    top, bottom = column[coloured[0] + 2], column[coloured[-1] - 2]
    assert top[0] > top[2] + 40 and bottom[2] > bottom[0] + 40
