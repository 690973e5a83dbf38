"""GET /api/similar/{id} (issue 24, "More like this" in serve): `retrieve query --like id:N` over
HTTP, answered as a search (its query id opens the hits' correspondences), refusals as documented."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from retrieval.cli import app as cli
from retrieval.engine import Index
from retrieval.serve import create_app

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def client(served) -> Iterator[TestClient]:
    with TestClient(create_app(served["index"]), base_url=LOCAL) as c:
        yield c


def _ids(served) -> dict[str, int]:
    with Index.open(served["index"]) as idx:
        return {r.path: r.id for r in idx.files()}


@pytest.mark.parametrize(("query", "flags"), [({}, []), ({"k": "3"}, ["-k", "3"]),
                                               ({"k": "4", "rerank": "true"}, ["-k", "4", "--rerank"]),
                                               ({"k": "3", "qe": "2", "qe_alpha": "0.5"},
                                                ["-k", "3", "--qe", "2", "--qe-alpha", "0.5"])])
def test_similar_equals_query_like(client, served, query, flags):
    image_id = _ids(served)[str(served["photos"] / "p3.jpg")]
    r = client.get(f"/api/similar/{image_id}", params=query)
    assert r.status_code == 200, r.text
    body = r.json()
    cli_run = CliRunner().invoke(cli, ["query", "--like", f"id:{image_id}", "--index", str(served["index"]), "--json",
                                       *flags])
    assert cli_run.exit_code == 0, cli_run.output
    ref = json.loads(cli_run.stdout)
    assert [(h["rank"], h["path"], h.get("inliers")) for h in body["hits"]] == \
           [(h["rank"], h["path"], h.get("inliers")) for h in ref]
    assert np.allclose([h["score"] for h in body["hits"]], [h["score"] for h in ref], atol=1e-4)
    assert image_id not in {h["id"] for h in body["hits"]}  # itself left out
    assert body["size"] == [320, 240] and isinstance(body["query"], str)  # p3 is 320 x 240


def test_similar_query_id_opens_correspondences(client, served):
    ids = _ids(served)
    body = client.get(f"/api/similar/{ids[str(served['photos'] / 'p2.jpg')]}", params={"k": "2"}).json()
    other = body["hits"][0]["id"]
    m = client.get(f"/api/queries/{body['query']}/matches/{other}")
    assert m.status_code == 200, m.text
    assert m.json()["query_size"] == body["size"] and m.json()["query_box"] is None
    png = client.get(f"/api/queries/{body['query']}/matches/{other}", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_similar_refusals(client, served):
    r = client.get("/api/similar/99999")
    assert r.status_code == 404 and r.json() == {"error": "no indexed image with id 99999"}
    assert client.get("/api/similar/x1").status_code == 404
    r = client.get("/api/similar/1", params={"k": "0"})
    assert r.status_code == 400 and "k must be at least 1" in r.json()["error"]
    r = client.get("/api/similar/1", params={"rerank": "maybe"})
    assert r.status_code == 400 and "rerank must be true or false" in r.json()["error"]
