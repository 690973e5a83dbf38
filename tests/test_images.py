from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from retrieval import BadImageError, RetrievalError, load_image
from retrieval.images import crop_box, decode, normalize, preprocess, resize_for_model, target_size, to_rgb

from .conftest import AWKWARD, manifest_rows

ROWS = manifest_rows()  # a missing corpus fails collection loudly, never parametrizes to nothing
# Rows whose manifest text allows either outcome, and the choice this project documents (docs/images.md).
CHOSEN = {
    "tiff_float32.tiff": "index",  # mode F is stretched min..max, as issue and docs ask
}


def expected(row: dict[str, str]) -> str:
    if row["file"] in CHOSEN:
        return CHOSEN[row["file"]]
    return re.split(r"[ :]", row["expected_handling"], maxsplit=1)[0].split("-")[0]


def expected_size(row: dict[str, str]) -> tuple[int, int] | None:
    """Upright (w, h) from the manifest's expectation, else from what Pillow (+ pillow-heif) observed."""
    text = row["expected_handling"]
    m = re.search(r"WxH(?: after transpose)?\s*=\s*(\d+)x(\d+)", text) or re.search(r"RGB (\d+)x(\d+)", text)
    if m is None:
        heif = row["pillow13_plus_pillow_heif_observed"]
        observed = row["pillow13_observed"] if heif == "same" else heif
        m = re.search(r"after_transpose=(\d+)x(\d+)", observed) or re.match(r"\w+ \S+ (\d+)x(\d+)", observed)
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_manifest_has_80_rows_split_60_20():
    assert len(ROWS) == 80
    first = [re.split(r"[ :]", r["expected_handling"], maxsplit=1)[0].split("-")[0] for r in ROWS]
    assert first.count("index") == 60 and first.count("reject") == 20


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_manifest_row(row: dict[str, str]):
    path = AWKWARD / row["file"]
    if expected(row) == "index":
        im = load_image(path)
        assert im.mode == "RGB"
        size = expected_size(row)
        assert size is not None, f"manifest row without a size: {row['expected_handling']}"
        assert im.size == size
        assert np.asarray(im).std() > 0 or row["file"] == "jpeg_exif_orient8_2x1.jpg"
    else:
        with pytest.raises(BadImageError) as info:
            load_image(path)
        err = info.value
        assert isinstance(err, RetrievalError)
        message = str(err)
        assert row["file"] in message and "fix:" in message and "\n" not in message


def _thumb(name: str) -> np.ndarray:
    return np.asarray(load_image(AWKWARD / name).resize((150, 100)).convert("L"), np.float32)


@pytest.mark.parametrize("k", [0, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientations_match_upright_reference(k: int):
    ref = _thumb("jpeg_exif_orient1_landscape.jpg")
    got = _thumb(f"jpeg_exif_orient{k}_landscape.jpg")
    assert np.abs(got - ref).mean() < 1.5


def test_orientation_is_applied_not_ignored():
    """Without the transpose the mirrored file differs a lot: the test above can fail."""
    raw = Image.open(AWKWARD / "jpeg_exif_orient3_landscape.jpg").convert("L").resize((150, 100))
    ref = _thumb("jpeg_exif_orient1_landscape.jpg")
    assert np.abs(np.asarray(raw, np.float32) - ref).mean() > 20


def test_tiff_orientation_applied_once():
    # libtiff applies the TIFF orientation while decoding; rotating again would give 88x590
    assert load_image(AWKWARD / "tiff_g4_1bit_orient6.tif").size == (590, 88)


def test_sixteen_bit_gray_is_stretched_not_clipped():
    a = np.asarray(load_image(AWKWARD / "tiff_16bit_gray.tif"))
    assert a.min() == 0 and a.max() == 255  # full range; a naive convert gives all white
    raw = np.asarray(Image.open(AWKWARD / "tiff_16bit_gray.tif"), np.float64)
    expect = np.round((raw - raw.min()) * 255 / (raw.max() - raw.min()))
    assert np.abs(a[..., 0] - expect).max() <= 1


def test_float_is_stretched():
    a = np.asarray(load_image(AWKWARD / "tiff_float32.tiff"))
    assert a.min() == 0 and a.max() == 255


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 3]) == (255, 255, 255)
    half = np.asarray(to_rgb(Image.new("LA", (1, 1), (0, 128))))
    assert abs(int(half[0, 0, 0]) - 127) <= 1


def test_palette_transparency_composited():
    im = load_image(AWKWARD / "gif_transparent.gif")
    raw = Image.open(AWKWARD / "gif_transparent.gif")
    key = raw.info["transparency"]
    mask = np.asarray(raw) == key
    assert mask.any()
    assert (np.asarray(im)[mask] == 255).all()


def test_cmyk_resembles_rgb_twin():
    a = np.asarray(load_image(AWKWARD / "jpeg_cmyk_adobe.jpg"), np.float32)
    b = np.asarray(load_image(AWKWARD / "jpeg_rgb_reference.jpg"), np.float32)
    assert np.abs(a - b).mean() < 10


def test_content_not_extension():
    a = np.asarray(load_image(AWKWARD / "misnamed_png_as.jpg"))
    b = np.asarray(load_image(AWKWARD / "webp_lossless.webp"))
    assert np.array_equal(a, b)


def test_pixel_budget_is_configurable(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    assert load_image(p, max_pixels=60_000).size == (300, 200)
    with pytest.raises(BadImageError, match="pixel budget"):
        load_image(p, max_pixels=59_999)


def test_bomb_limit_restored_after_load(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImageError):
        load_image(AWKWARD / "png_large_1bit_12000x12000.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_missing_file_names_path(tmp_path):
    with pytest.raises(BadImageError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_bad_image_error_pickles():
    e = BadImageError("/x/y.jpg", "broken", fix="do this")
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.reason, back.fix, str(back)) == (e.path, e.reason, e.fix, str(e))


def test_draft_decode_keeps_long_side_and_reports_original():
    im, original = decode(AWKWARD / "jpeg_exif_orient6_landscape.jpg", min_side_hint=448)
    assert original == (1800, 1200)
    assert max(im.size) >= 448 and max(im.size) < 1800
    assert im.width > im.height  # upright after EXIF rotation


@given(w=st.integers(1, 5000), h=st.integers(1, 5000), size=st.integers(14, 1000))
def test_target_size_properties(w: int, h: int, size: int):
    tw, th = target_size(w, h, size=size, patch_size=14)
    assert tw % 14 == 0 and th % 14 == 0 and tw >= 14 and th >= 14
    assert max(tw, th) == (size // 14) * 14
    assert (tw >= th) == (w >= h) or tw == th
    # aspect ratio kept within half a patch on the shorter side
    if w >= h:
        assert abs(th - h * tw / w) <= 7 or th == 14
    else:
        assert abs(tw - w * th / h) <= 7 or tw == 14


def test_resize_and_normalize_closed_form():
    im = Image.new("RGB", (100, 50), (255, 0, 128))
    small = resize_for_model(im, size=224, patch_size=14)
    assert small.size == (224, 112)
    x = normalize(small, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    assert x.shape == (3, 112, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -2.0, (128 / 255 - 0.5) / 0.5], atol=1e-6)


def test_crop_box_clamps_and_rejects_empty():
    im = Image.new("RGB", (100, 80))
    assert crop_box(im, (-10, 10, 50.5, 200)).size == (51, 70)
    with pytest.raises(ValueError, match="no pixels"):
        crop_box(im, (120, 0, 150, 10))


def test_preprocess_shapes(photos):
    x, original = preprocess(photos[1], size=224, patch_size=14, mean=(0, 0, 0), std=(1, 1, 1))
    assert original == (240, 320)
    assert x.shape == (3, 224, 168)
