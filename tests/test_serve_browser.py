"""The page of `retrieve serve` in a real browser: Playwright driving Debian's chromium.

Not skipped when the browser is missing: scripts/test.sh installs it, and a page nobody opened
is not a tested page."""

from __future__ import annotations

import shutil
import pytest

from retrieval.serve import create_app

from .helpers import Server

pytestmark = pytest.mark.browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium found: install it (`apt-get install -y chromium`; scripts/test.sh does this as root)")


def _launch(p):
    return p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])


def test_page_search_and_correspondences(served, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    errors: list[str] = []
    with Server(create_app(served["index"], token="t0ken")) as url, sync_playwright() as p:
        browser = _launch(p)
        try:
            # bypass_csp: Playwright's waits evaluate strings, which the page's own CSP forbids
            page = browser.new_page(viewport={"width": 1366, "height": 800}, bypass_csp=True)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/?token=t0ken")
            assert "token" not in page.url  # taken out of the address bar, kept for the tab
            page.wait_for_function("document.getElementById('status').textContent.includes('9 images')")
            page.set_input_files("#file", str(served["query"]))
            page.wait_for_selector("#results li img.thumb")
            page.wait_for_function(
                "[...document.querySelectorAll('#results img.thumb')].length > 0 && "
                "[...document.querySelectorAll('#results img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
            n = page.locator("#results li").count()
            assert n == 9  # k=20 asked, 9 indexed
            names = page.locator("#results .name").all_text_contents()
            assert all(x.endswith(".jpg") for x in names)
            page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
            page.locator("#results li").first.click()
            page.wait_for_selector("#detail-view:not([hidden])")
            page.wait_for_function("document.getElementById('detail-stats').textContent.includes('verified')")
            stats = page.locator("#detail-stats").text_content() or ""
            assert "patch matches" in stats
            size = page.evaluate("[document.getElementById('pair').width, document.getElementById('pair').height]")
            assert size[0] > 300 and size[1] >= 200  # the two images side by side, drawn
            drawn = page.evaluate("state.detail.pairs.length")
            assert drawn > 0
            first = page.evaluate("state.detail.pairs[0].a")
            box = page.locator("#pair").bounding_box()
            assert box is not None
            scale = box["width"] / size[0]
            page.mouse.move(box["x"] + first[0] * scale, box["y"] + first[1] * scale)
            assert page.evaluate("state.detail.hover") >= 0  # hovering a query patch picks its match
            page.screenshot(path=str(tmp_path / "correspondences.png"), full_page=True)
            page.click("button.kind[data-kind=heatmap]")
            page.wait_for_function("document.getElementById('picture').complete && "
                                   "document.getElementById('picture').naturalWidth > 0")
            page.click("#tab-index")
            page.wait_for_function("document.getElementById('index-facts').children.length > 0")
            assert "9 indexed" in (page.locator("#index-facts").text_content() or "")
            page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert (tmp_path / "correspondences.png").stat().st_size > 0


def test_page_escapes_file_names(tmp_path):
    """A file named like markup shows as text."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    from typer.testing import CliRunner

    from retrieval.cli import app as cli

    from .conftest import synth_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    evil = '<img src=x onerror="window.pwned=1">.jpg'
    for i, name in enumerate([evil, "plain.jpg"]):
        synth_photo(i).save(photos / name, format="JPEG")
    ix = tmp_path / "ix"
    r = CliRunner().invoke(cli, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    with Server(create_app(ix)) as url, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(bypass_csp=True)
            page.goto(url + "/")
            page.set_input_files("#file", str(photos / "plain.jpg"))
            page.wait_for_selector("#results li .name")
            names = page.locator("#results .name").all_text_contents()
            assert evil in names
            assert page.evaluate("window.pwned === undefined")
            assert page.locator("#results img:not(.thumb)").count() == 0
        finally:
            browser.close()


def test_page_shows_non_utf8_file_names(tmp_path):
    """Names whose bytes are not UTF-8 (JSON: "\\udcff") show as \\xNN, as the CLI shows them, in
    the results, the result's page and the Index tab's skipped files; before the fix the search
    and the Index tab were server errors (500)."""
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    from typer.testing import CliRunner

    from retrieval.cli import app as cli

    from .conftest import synth_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    synth_photo(1).save(photos / "plain.jpg", format="JPEG")
    synth_photo(1).save(photos / os.fsdecode(b"caf\xe9 \xff.jpg"), format="JPEG")  # Latin-1, not UTF-8
    (photos / os.fsdecode(b"skip\xfe.jpg")).write_bytes(b"not an image")
    ix = tmp_path / "ix"
    r = CliRunner().invoke(cli, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    errors: list[str] = []
    with Server(create_app(ix)) as url, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(bypass_csp=True)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            page.set_input_files("#file", str(photos / "plain.jpg"))
            page.wait_for_selector("#results li .name")
            assert sorted(page.locator("#results .name").all_text_contents()) == ["caf\\xe9 \\xff.jpg", "plain.jpg"]
            titles = [page.locator("#results .name").nth(i).get_attribute("title") for i in range(2)]
            assert str(photos) + "/caf\\xe9 \\xff.jpg" in titles
            page.locator("#results li", has_text="caf").click()
            page.wait_for_function("document.getElementById('detail-stats').textContent.includes('verified')")
            assert (page.locator("#detail-title").text_content() or "").endswith("/caf\\xe9 \\xff.jpg")
            page.click("#tab-index")
            page.wait_for_selector("#skipped:not([hidden])")
            assert page.locator("#skipped td").first.text_content() == str(photos) + "/skip\\xfe.jpg"
            assert page.locator("#status").text_content() == ""  # no error shown
        finally:
            browser.close()
    assert errors == []
