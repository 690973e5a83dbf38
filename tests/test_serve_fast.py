"""A search's upload goes from the request's bytes in memory to the decoder (issue 28): no file is
written, and each query is decoded once."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from starlette.testclient import TestClient

from retrieval import images
from retrieval.config import SearchOptions
from retrieval.images import readers
from retrieval.serve import create_app
from retrieval.serve.batching import Batcher, IndexThread, SearchJob

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
    """Five concurrent uploads: five decodes, in one embedding call (a guard: the picture drawn
    for a match is decoded only when asked for)."""
    calls: list[str] = []
    real = readers.decode

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(readers, "decode", counting)
    thread = IndexThread(served["index"])
    try:
        files = [(served["photos"] / f"p{i}.jpg").read_bytes() for i in range(5)]

        async def go():
            b = Batcher(thread)
            out = await asyncio.gather(*(b.search(SearchJob(data, SearchOptions(k=3))) for data in files))
            return b.embedded, out

        embedded, out = asyncio.run(go())
        assert (embedded.calls, embedded.queries) == (1, 5)
        assert len(calls) == 5
        assert [s.result.hits[0].path for s in out] == [str(served["photos"] / f"p{i}.jpg") for i in range(5)]
    finally:
        thread.close()


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
