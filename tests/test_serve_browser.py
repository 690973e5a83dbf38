"""The page of `retrieve serve` in a real browser: Playwright driving Debian's chromium.

Not skipped when the browser is missing: scripts/test.sh installs it, and a page nobody opened
is not a tested page."""

from __future__ import annotations

import logging
import shutil
import pytest

from retrieval.serve import create_app

from .helpers import Embeds, Server

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


# --- other origins (docs/serve.md, "Security") -------------------------------------------------------
# What a hostile page runs against the server at `base` ("" for its own origin): read the index,
# show a photo, and search with a picture it draws. Promise results: a status, "blocked" (the
# browser kept the answer from the page), "opaque" (no-cors: sent, answer unreadable), "error".
ATTACK = """async (base) => {
  const out = {};
  try { const r = await fetch(base + "/api/info"); out.info = r.status; } catch (e) { out.info = "blocked"; }
  out.img = await new Promise((done) => {
    const i = new Image(); i.onload = () => done(i.naturalWidth); i.onerror = () => done("error");
    i.src = base + "/api/images/1?max=64";
  });
  const c = document.createElement("canvas"); c.width = 64; c.height = 48;
  c.getContext("2d").fillRect(8, 8, 30, 20);
  const blob = await new Promise((done) => c.toBlob(done, "image/jpeg"));
  const form = new FormData(); form.append("image", blob, "q.jpg"); form.append("k", "1000");
  try {
    const r = await fetch(base + "/api/search", { method: "POST", body: form, mode: base ? "no-cors" : "cors" });
    out.post = r.type === "opaque" ? "opaque" : r.status;
  } catch (e) { out.post = "blocked"; }
  return out;
}"""


@pytest.fixture(scope="module")
def attacked(served):
    """A server on 127.0.0.1, a second origin's server on another loopback port (its page is reached
    as http://127.0.0.1:OTHER, same-site, and as http://evil.example:OTHER, cross-site), and one
    chromium in which rebind.example and evil.example resolve to 127.0.0.1 (DNS rebinding without DNS)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b"<!doctype html><title>another site</title><p>nothing to see"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    searched = Embeds()
    app = create_app(served["index"], on_embed=searched)
    p = sync_playwright().start()
    try:
        with Server(app) as url:
            # Local Network Access off: Chromium alone (not Firefox, not Safari) keeps a page it
            # counts as public, as the rebound page is, from reaching loopback; the server must not rely on it
            browser = p.chromium.launch(executable_path=_chromium(), args=[
                "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP rebind.example 127.0.0.1, "
                                                 "MAP evil.example 127.0.0.1",
                "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests"])
            try:
                yield {"browser": browser, "url": url, "port": int(url.rsplit(":", 1)[1]), "searched": searched,
                       "other": other.server_address[1]}
            finally:
                browser.close()
    finally:
        p.stop()
        other.shutdown()
        other.server_close()


def _refusals(caplog) -> list[str]:
    """The server's refusals of /api requests (not of a favicon the browser asks for on its own)."""
    return [m for m in (r.getMessage() for r in caplog.records if r.name.startswith("retrieval.serve"))
            if m.startswith("refused ") and m.split()[2].startswith("/api/")]


def test_a_rebound_name_gets_nothing(attacked, caplog):
    """DNS rebinding: a page at rebind.example:PORT, its name re-pointed at 127.0.0.1, is the
    server's origin to the browser, so only the Host check stands between it and the index.
    Before: it read /api/info (200), showed photos and searched with k=1000000."""
    port, searched = attacked["port"], attacked["searched"]
    context = attacked["browser"].new_context()
    try:
        page = context.new_page()
        assert page.goto(f"http://rebind.example:{port}/").status == 400  # the page itself
        # the attacker's own page, served under that name before the name was re-pointed
        context.route(f"http://rebind.example:{port}/attack.html",
                      lambda route: route.fulfill(body='<!doctype html><link rel="icon" href="data:,"><p>hello',
                                                    content_type="text/html"))
        page.goto(f"http://rebind.example:{port}/attack.html")
        before = searched.queries
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="retrieval.serve"):
            got = page.evaluate(ATTACK, "")
        assert got == {"info": 400, "img": "error", "post": 400}
        assert searched.queries == before
        refused = _refusals(caplog)
        assert len(refused) == 3 and all("rebind.example" in x for x in refused), refused
    finally:
        context.close()


@pytest.mark.parametrize("site", ["evil.example", "127.0.0.1"])  # cross-site; same site, another port
def test_another_origin_can_neither_show_nor_search(attacked, caplog, site):
    """Before: another site's <img src=http://127.0.0.1:PORT/api/images/1> loaded (so it could
    show and count the photos), and its blind POST searched, evicting the user's cached queries."""
    url, searched = attacked["url"], attacked["searched"]
    context = attacked["browser"].new_context()
    try:
        page = context.new_page()
        page.goto(f"http://{site}:{attacked['other']}/")
        before = searched.queries
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="retrieval.serve"):
            got = page.evaluate(ATTACK, url)
        assert got == {"info": "blocked", "img": "error", "post": "blocked"}  # before: "opaque", sent and run
        assert searched.queries == before  # the POST did not search
        refused = _refusals(caplog)
        assert len(refused) == 3 and all("Sec-Fetch-Site" in x for x in refused), refused
        assert {x.split()[2].split(":")[0] for x in refused} == {"/api/info", "/api/images/1", "/api/search"}
    finally:
        context.close()


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_the_page_itself_still_reads_shows_and_searches(attacked, name):
    """The same requests from the server's own origin work, under its real CSP (no bypass)."""
    searched = attacked["searched"]
    context = attacked["browser"].new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        assert page.goto(f"http://{name}:{attacked['port']}/").status == 200
        page.wait_for_selector("#status:has-text('9 images')")
        before = searched.queries
        got = page.evaluate(ATTACK, "")
        assert got["info"] == 200 and got["post"] == 200 and isinstance(got["img"], int) and got["img"] > 0, got
        assert searched.queries == before + 1
    finally:
        context.close()
    assert errors == []
