"""A search's upload goes from the request's bytes in memory to the decoder (issue 28): no file is
written, and each query is decoded once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from starlette.testclient import TestClient

from retrieval import images
from retrieval.images import decoding, readers
from retrieval.serve import create_app

from .conftest import ROOT

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
                          "--size", "112", "--images", "6", "--clients", "1,2", "--requests", "4", "--mixed", "0"],
                         capture_output=True, text=True, timeout=600, env=env, check=True).stdout
    assert "queries per forward pass" in out
    assert re.search(r"^\| 1 \|.*\| 1\.0 \(4 in 4\) \|$", out, re.MULTILINE)  # one client: one query per pass
    assert re.search(r"^\| 2 \|.*\| [12]\.\d \(4 in [234]\) \|$", out, re.MULTILINE)
