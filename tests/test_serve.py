"""retrieve serve: the HTTP API against the CLI's answers, its refusals, and concurrency."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from retrieval.cli import app as cli
from retrieval.config import SearchOptions
from retrieval.engine.serving import UploadReader
from retrieval.images import load_image
from retrieval.serve import create_app, parse_size
from retrieval.serve.batching import Batcher, IndexThread, SearchJob

from .conftest import ROOT, synth_photo
from .helpers import Embeds, Server, free_port

runner = CliRunner()
TINY = ["--model", "test_tiny", "--size", "112", "--workers", "0"]
LOCAL = "http://127.0.0.1"  # TestClient's own default, http://testserver, is not a name the server answers to


def _cli(*args: str) -> Any:
    r = runner.invoke(cli, list(args))
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        yield c


def _search(c: TestClient, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/api/search", files={"image": (path.name, f, "image/jpeg")}, data=fields)


def _cli_hits(served, path: Path, *args: str) -> list[dict[str, Any]]:
    r = _cli("query", str(path), "--index", str(served["index"]), "--json", *args)
    return json.loads(r.stdout)


def _same_hits(api: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """The same hits, written the same way (one serialisation: SearchResult.to_json)."""
    assert [sorted(h) for h in api] == [sorted(h) for h in ref]
    assert [(h["rank"], h["path"], h.get("id"), h.get("inliers")) for h in api] == \
           [(h["rank"], h["path"], h.get("id"), h.get("inliers")) for h in ref]
    assert np.allclose([h["score"] for h in api], [h["score"] for h in ref], atol=1e-4)


def test_handlers_are_module_level_functions(client):
    """Starlette's layout: handlers read what they share from request.app.state, not closures made
    by create_app for each app (they were)."""
    from starlette.routing import Route

    endpoints = [r.endpoint for r in client.app.routes if isinstance(r, Route)]
    assert len(endpoints) >= 7
    assert all("<locals>" not in e.__qualname__ for e in endpoints), [e.__qualname__ for e in endpoints]


def test_health(client, served):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "images": 9, "busy_s": 0}


@pytest.mark.parametrize("options", [
    {}, {"k": "4"}, {"k": "5", "rerank": "true"}, {"k": "3", "qe": "2"}, {"k": "3", "bbox": "30,20,200,180"},
    {"k": "3", "bbox": "30,20,200,180", "rerank": "true"}, {"k": "50"},
    {"k": "5", "rerank": "true", "rerank_k": "2"}, {"k": "4", "qe": "3", "qe_alpha": "0.5"},
    {"k": "4", "qe": "2", "qe_alpha": "12", "rerank": "true", "rerank_k": "3", "bbox": "30,20,200,180"},
])
def test_search_equals_the_cli(client, served, options):
    r = _search(client, served["query"], **options)
    assert r.status_code == 200, r.text
    body = r.json()
    args = []
    for name, flag in (("k", "-k"), ("bbox", "--bbox"), ("qe", "--qe"), ("rerank_k", "--rerank-k"),
                       ("qe_alpha", "--qe-alpha")):
        if name in options:
            args += [flag, options[name]]
    if options.get("rerank") == "true":
        args.append("--rerank")
    ref = _cli_hits(served, served["query"], *args)
    _same_hits(body["hits"], ref)
    assert isinstance(body["query"], str) and body["query"]
    ids = {h["id"] for h in body["hits"]}
    assert len(ids) == len(body["hits"])
    if "rerank" in options:  # only the shortlist is verified (as the CLI's)
        assert all("inliers" in h for h in body["hits"][: int(options.get("rerank_k", 100))])


def test_images_by_id_upright_and_nothing_else(client, served):
    body = _search(client, served["photos"] / "rotated.jpg", k="1").json()
    hit = body["hits"][0]
    assert hit["path"].endswith("rotated.jpg")
    r = client.get(f"/api/images/{hit['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    got = Image.open(io.BytesIO(r.content))
    assert got.size == load_image(served["photos"] / "rotated.jpg").size == (1800, 1200)  # upright
    thumb = Image.open(io.BytesIO(client.get(f"/api/images/{hit['id']}?max=300").content))
    assert thumb.size == (300, 200)
    for bad in ["/api/images/999999", "/api/images/-1", "/api/images/abc", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                "/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/1/../../../etc/passwd", "/api/images/%2Fetc%2Fpasswd"]:
        r = client.get(bad)
        assert r.status_code == 404, bad
        assert set(r.json()) == {"error"} and "root:" not in r.text
    assert client.get("/api/images/1?max=0").status_code == 400


def test_matches_json_png_and_cache_miss(client, served, tmp_path):
    body = _search(client, served["query"], k="3").json()
    qid, top = body["query"], body["hits"][0]
    m = client.get(f"/api/queries/{qid}/matches/{top['id']}")
    assert m.status_code == 200
    data = m.json()
    assert data["inliers"] <= data["matches"] and len(data["pairs"]) == data["inliers"] > 0
    qw, qh = Image.open(served["query"]).size
    w, h = Image.open(top["path"]).size
    for qx, qy, x, y in data["pairs"]:  # in each image's own pixels
        assert 0 <= qx <= qw and 0 <= qy <= qh and 0 <= x <= w and 0 <= y <= h
    # the same picture `retrieve match` draws for the two files
    out = tmp_path / "pair.png"
    dtype = client.get("/api/info").json()["config"]["backbone"]["dtype"]  # what `auto` resolved to
    r = _cli("match", str(served["query"]), top["path"], "--out", str(out), "--model", "test_tiny", "--size", "112",
             "--dtype", dtype)
    assert f"{data['matches']} matches, {data['inliers']} inliers" in r.output
    png = client.get(f"/api/queries/{qid}/matches/{top['id']}?format=png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(Image.open(out)))
    for kind in ("heatmap", "pca"):
        pic = client.get(f"/api/queries/{qid}/matches/{top['id']}?format=png&kind={kind}")
        assert pic.status_code == 200
        ref = out.with_name(f"pair_{kind}.png")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(pic.content))), np.asarray(Image.open(ref)))
    assert client.get(f"/api/queries/{qid}/matches/{top['id']}?format=gif").status_code == 400
    assert client.get(f"/api/queries/{qid}/matches/999999").status_code == 404
    miss = client.get(f"/api/queries/not-a-query/matches/{top['id']}")
    assert miss.status_code == 404 and "most recent searches" in miss.json()["error"]


def test_box_pairs_are_in_the_uploaded_images_pixels(client, served):
    body = _search(client, served["query"], k="1", bbox="100,60,260,200").json()
    data = client.get(f"/api/queries/{body['query']}/matches/{body['hits'][0]['id']}").json()
    assert data["pairs"]
    for qx, qy, _, _ in data["pairs"]:
        assert 100 <= qx <= 260 and 60 <= qy <= 200


def test_query_cache_is_bounded(served):
    with TestClient(create_app(served["index"], cache_size=2), base_url=LOCAL) as c:
        qids = [_search(c, served["query"], k="1").json()["query"] for _ in range(3)]
        image_id = 1
        assert c.get(f"/api/queries/{qids[0]}/matches/{image_id}").status_code == 404
        assert c.get(f"/api/queries/{qids[2]}/matches/{image_id}").status_code == 200


def test_query_cache_is_bounded_by_upload_bytes(served):
    """Uploads are kept (their pictures are drawn only when asked for): a byte budget below two
    uploads keeps only the newest query, however many the count allows."""
    size = Path(served["query"]).stat().st_size
    with TestClient(create_app(served["index"], cache_size=8, cache_bytes=size + size // 2), base_url=LOCAL) as c:
        qids = [_search(c, served["query"], k="1").json()["query"] for _ in range(3)]
        for qid in qids[:2]:
            assert c.get(f"/api/queries/{qid}/matches/1").status_code == 404
        assert c.get(f"/api/queries/{qids[2]}/matches/1?format=png").status_code == 200


def test_info_is_what_the_cli_prints(client, served):
    ref = json.loads(_cli("info", "--index", str(served["index"]), "--json").stdout)
    got = client.get("/api/info").json()
    assert got["images"] == ref["images"] == 9 and got["config"] == ref["config"]
    assert got["fingerprint"] == ref["fingerprint"] and got["skipped"] == ref["skipped"]
    assert set(got) == set(ref)


@pytest.mark.parametrize("fields, upload, needle", [
    ({}, b"this is not an image", "cannot be used"),
    ({}, "png_truncated.png", "cannot be used"),
    ({}, "gif_decompression_bomb.gif", "cannot be used"),
    ({"bbox": "200,10,100,50"}, None, "x2 > x1"),
    ({"bbox": "10,10,5000,50"}, None, "not inside"),
    ({"bbox": "1,2,3"}, None, "x1,y1,x2,y2"),
    ({"bbox": "nan,1,2,3"}, None, "finite"),
    ({"k": "0"}, None, "at least 1"),
    ({"k": "ten"}, None, "whole number"),
    ({"k": "2.5"}, None, "whole number"),
    ({"qe": "-1"}, None, "at least 0"),
    ({"rerank": "maybe"}, None, "true or false"),
])
def test_bad_input_is_400_in_one_line(client, served, awkward_dir, fields, upload, needle):
    if upload is None:
        content = served["query"].read_bytes()
    elif isinstance(upload, bytes):
        content = upload
    else:
        content = (awkward_dir / upload).read_bytes()
    r = client.post("/api/search", files={"image": ("q.jpg", content)}, data=fields)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"]
    assert "\n" not in r.json()["error"] and "Traceback" not in r.text
    assert "retrieval-serve-" not in r.json()["error"]  # the private temporary path is not shown


def test_no_file_and_wrong_method(client):
    assert client.post("/api/search", data={"k": "3"}).status_code == 400
    assert client.get("/api/search").status_code == 405
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()


def test_oversized_upload_is_413_without_reading_it_all(served):
    with TestClient(create_app(served["index"], max_upload=20_000), base_url=LOCAL) as c:
        big = b"\xff" * 200_000
        r = c.post("/api/search", files={"image": ("big.jpg", big)})
        assert r.status_code == 413 and "20000" in r.json()["error"]
        # no Content-Length (chunked): the body is counted as it streams in
        def chunks():
            head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
                    b"Content-Type: image/jpeg\r\n\r\n")
            yield head
            for _ in range(100):
                yield b"\xff" * 10_000

        r = c.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        # a small one still passes
        assert _search(c, served["query"], k="1").status_code == 200


def test_body_is_counted_as_it_streams_in():
    from retrieval.serve.forms import TooLarge, counting

    pulled = []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def drain():
        r = counting(receive, 5_500)
        while True:
            await r()

    with pytest.raises(TooLarge):
        asyncio.run(drain())
    assert len(pulled) == 6  # stopped at the first chunk past the limit, not at the end of the body


def test_parse_size():
    assert parse_size("50MB") == 50_000_000 and parse_size("1MiB") == 2**20 and parse_size("2048") == 2048
    assert parse_size("1.5 kb") == 1500
    for bad in ["", "-1MB", "lots", "5XB", "0"]:
        with pytest.raises(ValueError):
            parse_size(bad)


def test_token_required_on_every_api_request(served):
    with TestClient(create_app(served["index"], token="s3cret"), base_url=LOCAL) as c:
        for path in ["/api/health", "/api/info", "/api/images/1", "/api/queries/x/matches/1", "/api/nothing"]:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert _search(c, served["query"]).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/health", headers=ok).status_code == 200
        with open(served["query"], "rb") as f:
            assert c.post("/api/search", files={"image": f}, headers=ok).status_code == 200
        assert c.get("/").status_code == 200  # the page itself carries no data


def test_cli_refuses_other_hosts_without_token(served):
    r = runner.invoke(cli, ["serve", "--index", str(served["index"]), "--host", "0.0.0.0"])
    assert r.exit_code != 0
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--token" in lines[0]
    bad = runner.invoke(cli, ["serve", "--index", str(served["index"]), "--max-upload", "lots"])
    assert bad.exit_code == 2 and "--max-upload" in bad.output


def test_batcher_embeds_concurrent_queries_together(served, tmp_path):
    thread = IndexThread(served["index"])
    try:
        reader = thread.run(UploadReader.of)
        files = [reader.read((served["photos"] / f"p{i}.jpg").read_bytes()) for i in range(5)]

        embedded = Embeds()

        async def go():
            b = Batcher(thread, on_embed=embedded)
            return await asyncio.gather(*(b.search(SearchJob(upload, SearchOptions(k=3))) for upload in files))

        out = asyncio.run(go())
        assert (embedded.calls, embedded.queries) == (1, 5)  # one embedding call for the five
        for i, s in enumerate(out):
            alone = thread.run(lambda idx, i=i: idx.search(served["photos"] / f"p{i}.jpg", SearchOptions(k=3)))
            assert [h.id for h in s.result.hits] == [h.id for h in alone.hits]
            assert np.allclose([h.score for h in s.result.hits], [h.score for h in alone.hits], atol=1e-4)
    finally:
        thread.close()


def test_48_requests_from_16_clients_all_equal(served):
    data = served["query"].read_bytes()
    with Server(create_app(served["index"])) as url:
        def one(_: int) -> tuple[int, Any]:
            with httpx.Client(base_url=url, timeout=120) as c:
                r = c.post("/api/search", files={"image": ("q.jpg", data)}, data={"k": "5"})
                return r.status_code, [(h["id"], round(h["score"], 4)) for h in r.json().get("hits", [])]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(48)))
    assert [s for s, _ in results] == [200] * 48
    ids = [[i for i, _ in hits] for _, hits in results]
    assert all(x == ids[0] for x in ids)
    scores = np.array([[s for _, s in hits] for _, hits in results])
    assert np.allclose(scores, scores[0], atol=1e-4)
    _same_hits([{"rank": r + 1, "path": "", "score": s} for r, (_, s) in enumerate(results[0][1])],
               [{"rank": h["rank"], "path": "", "score": h["score"]} for h in _cli_hits(served, served["query"], "-k", "5")])


def test_new_images_from_a_concurrent_index_run_are_seen(served, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(served["photos"], photos)
    ix = tmp_path / "ix"
    _cli("index", str(photos), "--index", str(ix), *TINY)
    with TestClient(create_app(ix), base_url=LOCAL) as c:
        assert c.get("/api/health").json()["images"] == 9
        new = photos / "new.jpg"
        synth_photo(999, (300, 300)).save(new, quality=92)
        before = _search(c, new, k="1").json()["hits"][0]
        assert not before["path"].endswith("new.jpg")
        _cli("index", str(photos), "--index", str(ix))  # another writer, its own connection
        assert c.get("/api/health").json()["images"] == 10
        after = _search(c, new, k="1").json()["hits"][0]
        assert after["path"] == str(new.resolve()) and after["score"] == pytest.approx(1.0, abs=1e-4)
        r = c.get(f"/api/images/{after['id']}")
        assert r.status_code == 200


# --- file names that are not UTF-8 (Linux names are bytes; docs/index.md) --------------------------
ODD = os.fsdecode(b"bad\xff\xfe.jpg")  # surrogate escapes, as os.fsdecode gives them
ODD_SKIPPED = os.fsdecode(b"skip\xfe.jpg")


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    """An index holding a file whose name is not UTF-8, and skipping another such (not an image)."""
    root = tmp_path_factory.mktemp("odd")
    photos = root / "photos"
    photos.mkdir()
    for i in range(4):
        synth_photo(200 + i).save(photos / f"p{i}.jpg", quality=92)
    shutil.copy(photos / "p2.jpg", photos / ODD)
    (photos / ODD_SKIPPED).write_bytes(b"not an image")
    ix = root / "ix"
    _cli("index", str(photos), "--index", str(ix), *TINY)
    return {"photos": photos, "index": ix}


def test_non_utf8_file_names_are_answered_as_the_cli_writes_them(odd):
    """Before the fix every answer naming such a file was 500 (UnicodeEncodeError): search, info."""
    with TestClient(create_app(odd["index"]), base_url=LOCAL) as c:
        r = _search(c, odd["photos"] / "p0.jpg", k="7")
        assert r.status_code == 200, r.text
        assert "\\udcff\\udcfe" in r.text  # JSON's escape of the surrogates, as `--json` prints them
        hits = r.json()["hits"]
        ref = json.loads(_cli("query", str(odd["photos"] / "p0.jpg"), "--index", str(odd["index"]), "--json",
                              "-k", "7").stdout)
        _same_hits(hits, ref)
        bad = next(h for h in hits if "bad" in h["path"])
        assert os.fsencode(bad["path"]) == os.fsencode(odd["photos"] / ODD)  # the file system's own bytes back
        assert c.get(f"/api/images/{bad['id']}").status_code == 200
        m = c.get(f"/api/queries/{r.json()['query']}/matches/{bad['id']}")
        assert m.status_code == 200 and m.json()["inliers"] <= m.json()["matches"]
        assert c.get(f"/api/queries/{r.json()['query']}/matches/{bad['id']}?format=png").status_code == 200

        info = c.get("/api/info")
        assert info.status_code == 200, info.text
        cli_info = json.loads(_cli("info", "--index", str(odd["index"]), "--json").stdout)
        assert info.json()["skipped"] == cli_info["skipped"]
        assert [os.fsencode(s["path"]) for s in info.json()["skipped"]] == [os.fsencode(odd["photos"] / ODD_SKIPPED)]


def test_errors_naming_such_a_file_are_one_readable_line():
    from starlette.requests import Request

    from retrieval.errors import RetrievalError
    from retrieval.serve.app import _retrieval_error

    request = Request({"type": "http", "method": "GET", "path": "/api/images/3", "headers": [], "query_string": b""})
    r = asyncio.run(_retrieval_error(request, RetrievalError(f"/photos/{ODD} changed while it was read")))
    assert r.status_code == 409
    assert json.loads(r.body) == {"error": "/photos/bad\\xff\\xfe.jpg changed while it was read"}  # as the CLI shows it


# --- the port ---------------------------------------------------------------------------------------
def test_port_in_use_is_one_line_before_anything_is_announced(served, monkeypatch):
    """Before: the success line, then uvicorn's multi-line ERROR, exit 3."""
    import retrieval.serve

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the index was opened before the port was known to be free")

    monkeypatch.setattr(retrieval.serve, "create_app", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(cli, ["serve", "--index", str(served["index"]), "--port", str(port)])
    assert r.exit_code == 1 and "serving" not in r.stdout, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is in use; fix: pass --port N (or stop the other server)"]


def test_bind_refusals():
    from retrieval.errors import RetrievalError, UsageError
    from retrieval.serve import bind

    with pytest.raises(UsageError, match="not an address of this machine"):
        bind("192.0.2.1", 0)  # TEST-NET-1: never this machine's
    with pytest.raises(UsageError, match="cannot be resolved"):
        bind("no-such-host.invalid", 0)
    if os.geteuid() != 0:
        with pytest.raises(RetrievalError, match="--port 1024 or above"):
            bind("127.0.0.1", 80)
    sockets = bind("localhost", 0)  # every address of localhost, one port
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
        for s in sockets:  # bound but not yet listening: the server does that
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    finally:
        for s in sockets:
            s.close()


@pytest.mark.subprocess
def test_serve_announces_the_port_it_listens_on_and_stops_on_ctrl_c(served):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--index", str(served["index"]),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"serving {served['index']} on http://127.0.0.1:{port}/"), (line, proc.stderr)
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not answer"
                time.sleep(0.1)
        assert r.json() == {"status": "ok", "images": 9, "busy_s": 0}
        second = subprocess.run([sys.executable, "-m", "retrieval", "serve", "--index", str(served["index"]),
                                 "--port", str(port)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                                check=False)
        assert second.returncode == 1 and second.stdout == "", second.stdout
        assert f"port {port} on 127.0.0.1 is in use" in second.stderr and "Errno" not in second.stderr
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err and "Aborted" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
