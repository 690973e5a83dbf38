"""The web page's Duplicates part (index view): GET /api/duplicates' groups as thumbnails, the
keeper first, with a token-guarded server (images fetched with the token)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from retrieval.serve import create_app

from .conftest import synth_photo
from .helpers import Server, index_tiny
from .test_serve_browser import _launch

pytestmark = pytest.mark.browser  # Chromium, a process of its own: left out of the fast run (README)

TOKEN = "dedupe-page-token"


def test_index_view_shows_duplicate_groups_keeper_first(tmp_path):
    from playwright.sync_api import sync_playwright

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        synth_photo(300 + i, (320, 240)).save(photos / f"p{i}.jpg", quality=92)
    Image.open(photos / "p0.jpg").save(photos / "q0_recompressed.jpg", quality=50)
    shutil.copy(photos / "p1.jpg", photos / "q1_same.jpg")
    index_tiny(photos, tmp_path / "ix")
    errors: list[str] = []
    with Server(create_app(tmp_path / "ix", token=TOKEN)) as url, sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(bypass_csp=True)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/?token={TOKEN}")
        page.click("#tab-index")
        page.click("#find-dups")
        page.wait_for_function("document.querySelectorAll('#dups .dup-group').length >= 2")
        groups = page.locator("#dups .dup-group")
        heads = [groups.nth(i).locator("h4").inner_text() for i in range(2)]
        assert sorted(heads) == ["exact, 2 images", "near, 2 images"]
        captions = page.locator("#dups figcaption").all_inner_texts()
        assert sum(c.startswith("keep: ") for c in captions) == 2
        assert any(c.startswith("keep: ") and "p0.jpg" in c for c in captions)
        page.wait_for_function("[...document.querySelectorAll('#dups img')].every((i) => i.complete && i.naturalWidth > 0)")
        assert "groups of copies" in page.inner_text("#dups-summary")
        browser.close()
    assert errors == []
