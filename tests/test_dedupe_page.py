"""The web page's Duplicates part (index view): GET /api/duplicates' groups as thumbnails, the
keeper first, with a token-guarded server (images fetched with the token); hovering over or
focusing a copy shows its patch matches with the keeper (GET /api/pairs/{a}/{b}/matches)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from retrieval.serve import create_app

from .conftest import synth_photo
from .helpers import Server, index_tiny
from .test_serve_browser import _launch
from .test_serve_page import _serious

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
    asked: list[str] = []  # the pair pictures the page asked for
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
        page.wait_for_function("[...document.querySelectorAll('#dups figure img')].every((i) => i.complete && i.naturalWidth > 0)")
        assert "groups of copies" in page.inner_text("#dups-summary")
        page.on("request", lambda r: asked.append(r.url.split("/api/", 1)[-1]) if "/api/pairs/" in r.url else None)
        for n, how in enumerate(("hover", "focus")):  # the mouse over a copy, or the keyboard on it
            group = groups.nth(n)
            assert group.locator("img.dup-pair").is_hidden()
            getattr(group.locator("figure").nth(1), how)()
            group.locator("img.dup-pair").wait_for(state="visible")
            page.wait_for_function("(g) => { const i = g.querySelector('img.dup-pair'); "
                                   "return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); }",
                                   arg=group.element_handle())
            assert "(keep) and" in group.locator("img.dup-pair").get_attribute("alt")
        assert _serious(page) == []  # axe: the focusable copies and their pictures included
        assert len(asked) == 2 and all(a.startswith("pairs/") and a.endswith("/matches?format=png") for a in asked)
        browser.close()
    assert errors == []
