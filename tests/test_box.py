"""The one query box (issue 26 item 7): `parse_box` is the parser of `retrieve query --bbox` and
POST /api/search's `bbox`, `box_inside` the server's check against the decoded image, and
`images.crop_pixels` the one rounding of a crop (the crop itself and the mapping of match points
back to the original both use it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from retrieval.engine.serving import _to_original
from retrieval.errors import UsageError
from retrieval.images import crop_box, crop_pixels
from retrieval.types import box_inside, parse_box

from .helpers import index_tiny, one_line_error, query_index


@pytest.mark.parametrize("text, box", [("1,2,30,40", (1.0, 2.0, 30.0, 40.0)), (" 1.5, 2 ,3e1,40. ", (1.5, 2.0, 30.0, 40.0)),
                                       ("-5,-5,10,10", (-5.0, -5.0, 10.0, 10.0))])
def test_parse_box_reads_four_finite_numbers(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text, needle", [("1,2,3", "x1,y1,x2,y2"), ("a,b,c,d", "x1,y1,x2,y2"), ("1,2,3,4,5", "x1,y1,x2,y2"),
                                          ("nan,0,inf,100", "finite"), ("0,0,1e400,5", "finite"),
                                          ("10,0,5,5", "x2 > x1"), ("0,10,5,10", "y2 > y1")])
def test_parse_box_refuses_in_one_line_naming_the_option(text, needle):
    with pytest.raises(UsageError, match=needle) as e:
        parse_box(text)
    assert str(e.value).startswith("--bbox ") and "\n" not in str(e.value) and repr(text) in str(e.value)
    with pytest.raises(UsageError, match=r"^bbox .*'\.\.\.'$"):
        parse_box(text, name="bbox", quoted="'...'")


def test_box_inside_allows_the_edges_and_nothing_past_them():
    box_inside((0, 0, 640, 480), (640, 480))
    for box in ((-1, 0, 10, 10), (0, 0, 641, 10), (0, 0, 10, 481)):
        with pytest.raises(UsageError, match="not inside the 640x480 image"):
            box_inside(box, (640, 480))


@pytest.mark.parametrize("box", [(10.2, 5.7, 100.5, 80.1), (-20, -3, 50.5, 60), (600.4, 400, 700, 500.5)])
def test_the_crop_and_the_mapping_back_round_alike(box):
    im = Image.new("RGB", (640, 480))
    x0, y0, x1, y1 = crop_pixels(box, im.size)
    assert crop_box(im, box).size == (x1 - x0, y1 - y0)
    assert (x0, y0) == (max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1]))))
    # the crop's corners, in a 112 x 84 model picture of it, land on the crop's corners in the original
    back = _to_original(np.array([[0, 0], [112, 84]]), (112, 84), im.size, box)
    np.testing.assert_allclose(back, [[x0, y0], [x1, y1]])
    np.testing.assert_allclose(_to_original(np.array([[56, 42]]), (112, 84), im.size, None), [[320, 240]])


def test_a_box_with_no_pixel_inside_is_refused():
    with pytest.raises(ValueError, match="no pixels"):
        crop_pixels((700, 500, 800, 600), (640, 480))


def test_the_cli_cuts_a_box_that_reaches_past_the_edge(folder, tmp_path):
    """`retrieve query --bbox` with negative coordinates searches with the part inside the image
    (as before: docs/index.md); a box with no pixel inside is one line."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    query = str(folder / "p1.jpg")
    past = query_index(ix, query, "--bbox", "-20,-10,150,120", "--json")
    inside = query_index(ix, query, "--bbox", "0,0,150,120", "--json")
    assert past.exit_code == 0 and json.loads(past.stdout) == json.loads(inside.stdout), past.output
    one_line_error(query_index(ix, query, "--bbox", "5000,5000,6000,6000"), "box")
