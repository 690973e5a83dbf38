"""GET /api/similar/{id} (issue 24, "More like this" in serve): `retrieve query --like id:N` over
HTTP, answered as a search (its query id opens the hits' correspondences), refusals as documented.
GET /api/pairs/{a}/{b}/matches (issue 24, the Duplicates view's patch matches on hover): two indexed
images' correspondences, the keeper `a` as the query, made by the engine function the contact sheet
of `retrieve dedupe --html` draws with (maps.pair of the two files' views)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from retrieval.cli import app as cli
from retrieval.engine import Index
from retrieval.engine.maps import pair, view
from retrieval.engine.serving import pair_correspondences
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


def test_pair_json_is_the_engines_pair(client, served):
    ids = _ids(served)
    pa, pb = str(served["photos"] / "p3.jpg"), str(served["photos"] / "rotated.jpg")
    r = client.get(f"/api/pairs/{ids[pa]}/{ids[pb]}/matches")
    assert r.status_code == 200, r.text
    body = r.json()
    with Index.open(served["index"]) as idx:
        ref = pair_correspondences(idx, ids[pa], ids[pb])
        bb = idx.backbone()
        sheet = pair(view(pa, backbone=bb, image=idx.config.image), view(pb, backbone=bb, image=idx.config.image))
    assert ref is not None and body == ref.to_json()
    assert (body["matches"], body["inliers"]) == (sheet.n_matches, sheet.n_inliers)  # what the sheet draws
    assert body["matches"] > 0 and len(body["pairs"]) == body["inliers"]
    assert body["query_size"] == [320, 240] and body["query_box"] is None  # p3, the query side, is 320 x 240
    png = client.get(f"/api/pairs/{ids[pa]}/{ids[pb]}/matches", params={"format": "png", "kind": "heatmap"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


def test_pair_refusals(client, served):
    known = next(iter(_ids(served).values()))
    for a, b in ((99999, known), (known, 99999)):
        r = client.get(f"/api/pairs/{a}/{b}/matches")
        assert r.status_code == 404 and r.json() == {"error": f"no indexed image with id {a} or {b}"}
    assert client.get(f"/api/pairs/x1/{known}/matches").status_code == 404
    r = client.get(f"/api/pairs/{known}/{known}/matches", params={"format": "gif"})
    assert r.status_code == 400 and r.json() == {"error": "format must be json or png, got 'gif'"}
    r = client.get(f"/api/pairs/{known}/{known}/matches", params={"format": "png", "kind": "lines"})
    assert r.status_code == 400 and "kind must be one of matches, heatmap, pca" in r.json()["error"]
