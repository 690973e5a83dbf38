"""A search's upload goes from the request's bytes in memory to the decoder (issue 28): no file is
written, each query is decoded once, and off the index thread (which only runs forward passes and
searches), so that decoding overlaps with the model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx

import numpy as np
import pytest
from starlette.testclient import TestClient

from retrieval import images
from retrieval.images import decoding, readers
from retrieval.serve import create_app

from .conftest import ROOT
from .helpers import Server

LOCAL = "http://127.0.0.1"


def test_a_search_writes_no_file(served, tmp_path, monkeypatch):
    """The server creates no file for a search (it used to copy each upload to a temporary file
    and read it back), and keeps no uploads folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    created: list[str] = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append(os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        monkeypatch.setattr(os, "open", spy)
        r = c.post("/api/search", files={"image": ("q.jpg", served["query"].read_bytes(), "image/jpeg")},
                   data={"k": "3"})
        monkeypatch.setattr(os, "open", real_open)
        assert r.status_code == 200, r.text
        assert created == []
        assert list(tmp.rglob("*")) == []


def test_each_query_is_decoded_once(served, monkeypatch):
    """A search decodes its upload once (a guard: the readable-size picture that correspondences
    are drawn on is decoded only when a result is opened)."""
    calls: list[str] = []

    def counting(real):
        def decode(path, **kwargs):
            calls.append(str(path))
            return real(path, **kwargs)
        return decode

    monkeypatch.setattr(readers, "decode", counting(readers.decode))
    monkeypatch.setattr(decoding, "decode", counting(decoding.decode))
    monkeypatch.setattr(images, "decode", counting(images.decode))
    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        calls.clear()  # opening the app decodes nothing of the query's
        r = c.post("/api/search", files={"image": ("q.jpg", served["query"].read_bytes(), "image/jpeg")},
                   data={"k": "3"})
        assert r.status_code == 200, r.text
        assert len(calls) == 1


def test_uploads_are_decoded_off_the_index_thread(served, monkeypatch):
    """The index thread only runs forward passes and searches: each upload is decoded and resized
    on another thread (it used to be decoded on the index thread, one after another, while the
    model waited)."""
    threads: list[str] = []
    real = readers.decode

    def decode(path, **kwargs):
        threads.append(threading.current_thread().name)
        return real(path, **kwargs)

    monkeypatch.setattr(readers, "decode", decode)
    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        for fields in ({"k": "3"}, {"k": "3", "bbox": "10,10,200,150"}):
            r = c.post("/api/search", files={"image": ("q.jpg", served["query"].read_bytes(), "image/jpeg")},
                       data=fields)
            assert r.status_code == 200, r.text
    assert len(threads) == 2
    assert not any(name.startswith("retrieval-index") for name in threads), threads


def test_two_uploads_are_decoded_at_once(served, monkeypatch):
    """Both cores decode uploads: two searches' uploads are read on two threads at the same time
    (they were read one after another by a single thread while pixel_limit's scopes could not
    overlap safely)."""
    together = threading.Barrier(2)
    met: list[tuple[str, bool]] = []
    real = readers.decode

    def decode(path, **kwargs):
        try:
            together.wait(timeout=10)  # only returns once the other upload is being decoded too
            met.append((threading.current_thread().name, True))
        except threading.BrokenBarrierError:
            met.append((threading.current_thread().name, False))
        return real(path, **kwargs)

    monkeypatch.setattr(readers, "decode", decode)
    assert _searches_at_once(served, clients=2, searches=2) == [200, 200]
    assert [ok for _, ok in met] == [True, True], met
    assert len({name for name, _ in met}) == 2 and all(n.startswith("retrieval-upload") for n, _ in met), met


def test_a_refused_upload_among_concurrent_searches_fails_only_itself(served, awkward_dir):
    """Good and refused uploads searched at once: each refused one gets its own one-line 400 (the
    message it gets alone), every good one its hits."""
    good = served["query"].read_bytes()
    bad = {"text": b"this is not an image", "truncated": (awkward_dir / "png_truncated.png").read_bytes()}
    uploads = [("good", good)] * 5 + [("text", bad["text"])] + [("good", good)] * 5 + [("truncated", bad["truncated"])]
    with Server(create_app(served["index"])) as url:
        def one(item: tuple[str, bytes]) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=120) as c:
                return c.post("/api/search", files={"image": ("q.jpg", item[1])}, data={"k": "3"})

        with ThreadPoolExecutor(len(uploads)) as pool:
            answers = dict(enumerate(pool.map(one, uploads)))
        alone = {name: one((name, data)) for name, data in bad.items()}
    for i, (name, _) in enumerate(uploads):
        r = answers[i]
        if name == "good":
            assert r.status_code == 200 and len(r.json()["hits"]) == 3, r.text
        else:
            assert r.status_code == 400 and "cannot be used" in r.json()["error"], r.text
            assert r.json() == alone[name].json()


def test_concurrent_uploads_leave_pillows_settings_as_they_were(served):
    """Pillow's pixel limit and the warnings hook are process-wide: decoding uploads on several
    threads, each in its own scope, interleaved the scopes and left a wrapper of the warnings hook
    behind each time (a chain that grew with uptime)."""
    from PIL import Image

    show, limit = warnings.showwarning, Image.MAX_IMAGE_PIXELS
    assert _searches_at_once(served, clients=16, searches=48) == [200] * 48
    assert warnings.showwarning is show and Image.MAX_IMAGE_PIXELS == limit


def test_concurrent_pictures_leave_pillows_settings_as_they_were(served):
    """Pictures (GET /api/images/{id}, the PNG correspondence pictures) are decoded by a pool of
    threads, each decode in its own pixel_limit scope: overlapping scopes must share Pillow's
    process-wide settings and restore them when the last one closes, not leave a wrapper of the
    warnings hook behind each overlap."""
    from PIL import Image

    show, limit = warnings.showwarning, Image.MAX_IMAGE_PIXELS
    with Server(create_app(served["index"])) as url, httpx.Client(base_url=url, timeout=120) as c:
        found = c.post("/api/search", files={"image": ("q.jpg", served["query"].read_bytes())}, data={"k": "4"})
        assert found.status_code == 200, found.text
        qid, ids = found.json()["query"], [h["id"] for h in found.json()["hits"]]
        paths = [f"/api/images/{i}" for i in ids] + [f"/api/images/{i}?max=64" for i in ids]
        paths += [f"/api/queries/{qid}/matches/{ids[0]}?format=png&kind={kind}" for kind in ("matches", "heatmap", "pca")]

        def one(n: int) -> int:
            with httpx.Client(base_url=url, timeout=120) as each:
                return each.get(paths[n % len(paths)]).status_code

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(one, range(4 * len(paths)))) == [200] * (4 * len(paths))
    assert warnings.showwarning is show and Image.MAX_IMAGE_PIXELS == limit


def _searches_at_once(served, *, clients: int, searches: int) -> list[int]:
    """The status codes of `searches` searches of the query, sent by `clients` clients at once to a
    server on a real socket."""
    data = served["query"].read_bytes()
    with Server(create_app(served["index"])) as url:
        def one(_: int) -> int:
            with httpx.Client(base_url=url, timeout=120) as c:
                return c.post("/api/search", files={"image": ("q.jpg", data)}, data={"k": "1"}).status_code

        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(one, range(searches)))


def test_read_bytes_is_read_file_without_the_file(served):
    path = served["query"]
    kw = {"sizes": (112, 56), "patch_size": 14}
    a, b = images.read_file(str(path), **kw), images.read_bytes("upload", path.read_bytes(), **kw)
    assert isinstance(a, images.PreparedFile)
    assert (a.sha256, a.nbytes, a.original_wh) == (b.sha256, b.nbytes, b.original_wh)
    assert all(np.array_equal(x, y) for x, y in zip(a.pixels, b.pixels, strict=True))


@pytest.mark.subprocess
def test_bench_serve_counts_the_queries_in_each_forward_pass():
    """The benchmark reads the server's own count of embedding calls and queries per level."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_serve.py"), "--model", "test_tiny",
                          "--size", "112", "--images", "6", "--clients", "1,2", "--requests", "4", "--mixed", "0",
                          "--rounds", "2"],
                         capture_output=True, text=True, timeout=600, env=env, check=True).stdout
    assert "queries per forward pass" in out
    # two rounds of max(4 // 2, 2 x clients) requests a level
    assert re.search(r"^\| 1 \|.*\| 1\.0 \(4 in 4\) \|$", out, re.MULTILINE)  # one client: one query per pass
    assert re.search(r"^\| 2 \|.*\| [12]\.\d \(8 in [4-8]\) \|$", out, re.MULTILINE)
