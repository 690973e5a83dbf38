"""The page of `retrieve serve` as people use it (issue 23, items 12-16 and 19): refused uploads,
the counts a card and its detail show, the lines the correspondence view draws, region queries,
a server that needs a token, and keyboard / assistive-technology use (with axe-core, vendored in
tests/data/axe under its MPL-2.0 licence). One browser and one server for the module."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from retrieval import rerank, visualize
from retrieval.serve import create_app

from .conftest import synth_photo
from .helpers import Server
from .test_serve_browser import _launch

pytestmark = pytest.mark.browser  # Chromium, a process of its own: left out of the fast run (README)

TOKEN = "t0ken"
AXE = Path(__file__).parent / "data" / "axe" / "axe.min.js"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An index of 5 synthetic photos at 224 px (16 x 12 patches: a self-match has more inliers
    than the pictures' 50 lines), served with a token."""
    from typer.testing import CliRunner

    from retrieval.cli import app as cli

    root = tmp_path_factory.mktemp("page")
    photos = root / "photos"
    photos.mkdir()
    for i in range(5):
        synth_photo(200 + i, (320, 240)).save(photos / f"p{i}.jpg", quality=92)
    ix = root / "ix"
    r = CliRunner().invoke(cli, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "224",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    (root / "notes.jpg").write_bytes(b"these are notes, not a picture\n" * 20)
    with Server(create_app(ix, token=TOKEN)) as url:
        yield {"url": url, "photos": photos, "root": root}


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = _launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    """A fresh tab that was given the token; any script error fails the test."""
    errors: list[str] = []
    # bypass_csp: Playwright's waits evaluate strings (and axe is injected), which the page's CSP forbids
    pg = browser.new_page(viewport={"width": 1366, "height": 800}, bypass_csp=True)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{site['url']}/?token={TOKEN}")
    pg.wait_for_function("document.getElementById('status').textContent.includes('images indexed')")
    yield pg
    pg.close()
    assert errors == []


def _api(site, path: str, *, data: bytes | None = None, ctype: str | None = None) -> bytes:
    req = urllib.request.Request(site["url"] + path, data=data, headers={"Authorization": "Bearer " + TOKEN,
                                                                         **({"Content-Type": ctype} if ctype else {})})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def _search(site, image: Path, **fields: str) -> dict:
    boundary = "xXpageXx"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
                 f'Content-Type: image/jpeg\r\n\r\n'.encode() + image.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return json.loads(_api(site, "/api/search", data=body, ctype=f"multipart/form-data; boundary={boundary}"))


def _matches(site, qid: str, image_id: int) -> dict:
    return json.loads(_api(site, f"/api/queries/{qid}/matches/{image_id}"))


def _results(page, image: Path, n: int = 5) -> None:
    page.set_input_files("#file", str(image))
    page.wait_for_function(f"document.querySelectorAll('#results li').length === {n}")


# --- 12: a refused upload ---

def test_refused_upload_clears_results_and_says_why_by_the_upload(page, site):
    _results(page, site["photos"] / "p1.jpg")
    page.set_input_files("#file", str(site["root"] / "notes.jpg"))
    page.wait_for_selector("#upload-error:not([hidden])")
    assert page.locator("#results li").count() == 0  # the old query's results are gone
    assert (page.locator("#summary").text_content() or "") == ""
    assert page.locator("#query-box").is_hidden()  # no broken picture
    assert "no preview" in (page.locator("#drop-hint").text_content() or "")
    message = page.locator("#upload-error").text_content() or ""
    assert "notes.jpg" in message or "image" in message
    # by the upload: inside the query panel, right under the drop zone; not in the header
    panel, drop, err = (page.locator(s).bounding_box() for s in (".query-panel", "#drop", "#upload-error"))
    assert panel and drop and err
    assert panel["x"] <= err["x"] and err["x"] + err["width"] <= panel["x"] + panel["width"]
    assert 0 <= err["y"] - (drop["y"] + drop["height"]) < 40
    assert message not in (page.locator("header").text_content() or "")
    _results(page, site["photos"] / "p1.jpg")  # a good upload takes the error away
    assert page.locator("#upload-error").is_hidden()


# --- 13: one count, one meaning ---

def test_match_json_says_verified_as_reranking_does(site):
    res = _search(site, site["photos"] / "p2.jpg", k="5", rerank="true")
    top = res["hits"][0]
    assert top["path"].endswith("p2.jpg") and top["inliers"] >= rerank.MIN_INLIERS
    for h in res["hits"]:
        m = _matches(site, res["query"], h["id"])
        assert m["min_inliers"] == rerank.MIN_INLIERS
        assert m["verified"] is (m["inliers"] >= rerank.MIN_INLIERS)


def test_card_and_detail_label_each_count(page, site):
    assert page.evaluate("MIN_INLIERS") == rerank.MIN_INLIERS  # the page's bar is the engine's
    page.check("#rerank")
    _results(page, site["photos"] / "p2.jpg")
    page.wait_for_selector("#results .inl")
    cards = page.locator("#results .card")
    colours = {}
    for i in range(cards.count()):
        inl = cards.nth(i).locator(".inl")
        text = inl.text_content() or ""
        n = int(text.split("re-rank: ")[1].split(" inlier")[0])
        verified = "verified" in (inl.get_attribute("class") or "").split()
        assert verified is (n >= rerank.MIN_INLIERS), text
        assert ("verified" in text) is verified
        colours.setdefault(verified, inl.evaluate("e => getComputedStyle(e).color"))
    assert colours.get(True) and colours.get(False) and colours[True] != colours[False]  # 0 inliers: not green
    first = page.locator("#results .card").first
    card_n = int((first.locator(".inl").text_content() or "").split("re-rank: ")[1].split(" ")[0])
    first.click()
    page.wait_for_function("state.detail && state.detail.m")
    m = page.evaluate("state.detail.m")
    stats = page.locator("#detail-stats").text_content() or ""
    assert f"re-ranking: {card_n} inliers among the stored patch descriptors" in stats
    assert f"drawn here from all patch tokens: {m['matches']} patch matches, {m['inliers']} inliers" in stats


# --- 14: the correspondence view draws what the picture draws ---

def test_match_json_gives_the_pictures_lines(site, monkeypatch):
    res = _search(site, site["photos"] / "p3.jpg", k="1")
    m = _matches(site, res["query"], res["hits"][0]["id"])
    assert m["inliers"] > visualize.MAX_LINES  # a self-match: more inliers than lines
    assert len(m["pairs"]) == m["inliers"] == len(m["similarity"])
    assert m["max_lines"] == visualize.MAX_LINES and 0 < len(m["lines"]) <= visualize.MAX_LINES
    assert len(set(m["lines"])) == len(m["lines"]) and all(0 <= i < m["inliers"] for i in m["lines"])
    assert len(m["line_colours"]) == len(m["lines"])
    chosen: list[list[int]] = []
    real = visualize.choose_lines

    def spy(*a, **kw):
        out = real(*a, **kw)
        chosen.append([int(i) for i in out])
        return out

    monkeypatch.setattr(visualize, "choose_lines", spy)
    png = _api(site, f"/api/queries/{res['query']}/matches/{res['hits'][0]['id']}?format=png")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert chosen[-1] == m["lines"]  # the same lines, in the same order, as the PNG draws


def test_correspondence_view_draws_the_same_lines(page, site):
    _results(page, site["photos"] / "p3.jpg")
    page.locator("#results .card").first.click()
    page.wait_for_function("state.detail && state.detail.drawn")
    m = page.evaluate("state.detail.m")
    assert page.evaluate("state.detail.drawn") == m["lines"]
    assert 0 < len(m["lines"]) <= visualize.MAX_LINES < m["inliers"] == page.evaluate("state.detail.pairs.length")
    assert f"{len(m['lines'])} of {m['inliers']} inliers drawn as lines" in (page.locator("#pair-text").text_content() or "")


# --- 15: a region query keeps its box in the detail ---

def test_region_shows_in_the_detail(page, site):
    _results(page, site["photos"] / "p0.jpg")
    img = page.locator("#query-img").bounding_box()
    assert img
    page.mouse.move(img["x"] + img["width"] * 0.25, img["y"] + img["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(img["x"] + img["width"] * 0.75, img["y"] + img["height"] * 0.75, steps=4)
    with page.expect_response("**/api/search"):
        page.mouse.up()
    page.wait_for_function("state.result && state.result.box")
    box = page.evaluate("state.result.box")
    page.locator("#results .card").first.click()
    page.wait_for_function("state.detail && state.detail.drawn")
    m = page.evaluate("state.detail.m")
    assert m["query_box"] == pytest.approx(box, abs=0.06)  # the server's box is the one searched
    region = "region " + ", ".join(str(round(v)) for v in box)
    assert region in (page.locator("#pair-text").text_content() or "")
    assert region in (page.locator("#pair").get_attribute("aria-label") or "")
    # on the canvas: the box outlined in red, the query outside it dimmed (lighter)
    x1, y1, x2, y2 = page.evaluate("(() => { const L = layout(state.detail); "
                                   "return state.detail.m.query_box.map(v => Math.round(v * L.fq)); })()")
    edge = page.evaluate(f"Array.from(document.getElementById('pair').getContext('2d')"
                         f".getImageData({(x1 + x2) // 2}, {y1 - 1}, 1, 3).data)")
    assert any(r > 200 and g < 120 and b < 120 for r, g, b in zip(edge[0::4], edge[1::4], edge[2::4])), edge


# --- 16: a server with a token, opened without it ---

def test_page_asks_for_the_token(browser, site):
    pg = browser.new_page(bypass_csp=True)
    try:
        pg.goto(site["url"] + "/")
        pg.wait_for_selector("#token-form:not([hidden])")
        assert "send the header" not in (pg.locator("body").inner_text())
        assert pg.locator("label[for=token]").is_visible()
        pg.fill("#token", TOKEN)
        pg.press("#token", "Enter")
        pg.wait_for_function("document.getElementById('status').textContent.includes('5 images indexed')")
        assert pg.locator("#token-form").is_hidden()
        assert pg.evaluate("sessionStorage.getItem('retrieval-token')") == TOKEN
        pg.set_input_files("#file", str(site["photos"] / "p1.jpg"))
        pg.wait_for_function("document.querySelectorAll('#results li').length === 5")
    finally:
        pg.close()


# --- 19: keyboard and assistive technology ---

def test_results_open_with_space_and_enter_and_escape_returns(page, site):
    _results(page, site["photos"] / "p1.jpg")
    cards = page.locator("#results .card")
    assert cards.count() == 5 and page.locator("#results li > button.card").count() == 5
    for key, i in (("Space", 1), ("Enter", 2)):
        cards.nth(i).focus()
        page.keyboard.press(key)
        page.wait_for_selector("#detail-view:not([hidden])")
        assert page.evaluate("document.activeElement.id") == "detail-title"  # not the page's body
        page.wait_for_function("state.detail && state.detail.drawn")
        page.keyboard.press("Escape")
        page.wait_for_selector("#detail-view", state="hidden")
        assert page.evaluate(f"document.activeElement === document.querySelectorAll('#results .card')[{i}]")


def test_canvas_tabs_and_kinds_say_what_they_are(page, site):
    assert page.get_attribute("nav", "role") == "tablist"
    assert page.get_attribute("#tab-search", "aria-selected") == "true"
    page.click("#tab-index")
    assert page.get_attribute("#tab-search", "aria-selected") == "false"
    assert page.get_attribute("#tab-index", "aria-selected") == "true"
    page.click("#tab-search")
    _results(page, site["photos"] / "p1.jpg")
    page.locator("#results .card").first.click()
    page.wait_for_function("state.detail && state.detail.drawn")
    assert page.get_attribute("#pair", "role") == "img"
    said = page.get_attribute("#pair", "aria-label") or ""
    assert "p1.jpg" in said and "inliers" in said
    assert page.get_attribute("button.kind[data-kind=lines]", "aria-pressed") == "true"
    page.click("button.kind[data-kind=heatmap]")
    assert page.get_attribute("button.kind[data-kind=lines]", "aria-pressed") == "false"
    assert page.get_attribute("button.kind[data-kind=heatmap]", "aria-pressed") == "true"


def test_keyboard_focus_ring_differs_from_hover(page, site):
    _results(page, site["photos"] / "p1.jpg")
    style = "e => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineColor, s.borderTopColor]; }"
    second = page.locator("#results .card").nth(1)
    second.hover()
    hovered = second.evaluate(style)
    page.locator("#results .card").first.focus()
    page.keyboard.press("Tab")  # the first card's "more like this", then the second card
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement === document.querySelectorAll('#results .card')[1]")
    page.mouse.move(0, 0)
    focused = second.evaluate(style)
    assert hovered[0] == "none" and focused[0] != "none"  # a ring, not the hover border
    assert focused[1] != hovered[2]


def test_region_typed_from_the_keyboard(page, site):
    _results(page, site["photos"] / "p0.jpg")
    page.wait_for_selector("#region:not([disabled])")
    for name, v in zip(("x1", "y1", "x2", "y2"), (40, 30, 200, 150)):
        page.fill("#" + name, str(v))
    with page.expect_response("**/api/search"):
        page.press("#y2", "Enter")
    page.wait_for_function("state.result && state.result.box")
    assert page.locator("#box").is_visible()
    qid, first = page.evaluate("[state.result.query, state.result.hits[0].id]")
    assert _matches(site, qid, first)["query_box"] == [40, 30, 200, 150]  # the server searched that region
    page.fill("#x2", "10")  # inverted: refused on the page, said by the upload
    page.press("#x2", "Enter")
    assert "region" in (page.locator("#upload-error").text_content() or "")


def test_more_like_this_from_the_keyboard(page, site):
    """Each result's "more like this" is the next stop after its card; it searches GET
    /api/similar/{id} (the image itself left out), focus goes to the new results' summary, and a
    result of it opens its correspondences like any other."""
    _results(page, site["photos"] / "p1.jpg")
    page.locator("#results .card").first.focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "like"
    first = page.evaluate("state.result.hits[0]")
    assert first["path"].endswith("p1.jpg")
    with page.expect_response("**/api/similar/**"):
        page.keyboard.press("Enter")
    page.wait_for_function("state.like && state.result && document.querySelectorAll('#results li').length === 4")
    assert first["id"] not in page.evaluate("state.result.hits.map(h => h.id)")  # 5 indexed, itself left out
    assert page.evaluate("document.activeElement.id") == "summary"
    assert "more like p1.jpg" in (page.locator("#summary").text_content() or "")
    assert _serious(page) == []
    assert page.evaluate("document.getElementById('region').disabled")  # no region of a stored descriptor
    page.locator("#results .card").first.click()
    page.wait_for_function("state.detail && state.detail.drawn")
    assert "inliers" in (page.get_attribute("#pair", "aria-label") or "")
    assert _serious(page) == []
    page.keyboard.press("Escape")
    _results(page, site["photos"] / "p2.jpg", 5)  # a new upload ends the "more like" search
    assert page.evaluate("state.like") is None


def _serious(page) -> list[str]:
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run(document).then(r => r.violations.filter(v => "
                          "v.impact === 'serious' || v.impact === 'critical').map(v => v.id + ': ' + "
                          "v.nodes.map(n => n.target.join(' ')).join(', ')))")
    return list(found)


def test_axe_finds_nothing_serious_in_any_view(page, site):
    assert AXE.exists() and (AXE.parent / "LICENSE").exists()
    _results(page, site["photos"] / "p1.jpg")
    assert _serious(page) == []
    page.locator("#results .card").first.click()
    page.wait_for_function("state.detail && state.detail.drawn")
    assert _serious(page) == []
    page.click("#tab-index")
    page.wait_for_function("document.getElementById('index-config').textContent.length > 0")
    assert _serious(page) == []
