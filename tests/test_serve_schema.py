"""retrieve serve against its own OpenAPI document (issue 23 item 20): Schemathesis fuzzes every
documented operation of a live server on 127.0.0.1; no answer may be a 5xx, have an undocumented
status or content type, or a body or headers that do not match the document. docs/serve.md's API
table is checked against the same document.

Each operation gets 25 examples (valid and invalid ones), derandomized so that every run sends the
same requests; RETRIEVAL_FUZZ_EXAMPLES=300 looks further (that is how `?max=` was found)."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from retrieval.serve import DEFAULT_MAX_UPLOAD, Limits, create_app
from retrieval.serve.openapi import document, search_form

from .conftest import ROOT, synth_photo
from .helpers import Server
from .test_serve_limits import _endless, _Live, _trickle

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
TOKEN = "s3cret-token"


def _jpeg(seed: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    synth_photo(seed, size).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


# The upload: real small JPEGs (so that searches run, re-ranking and boxes included) or bytes that
# are no image at all; Schemathesis' own samples of other image types come on top.
UPLOADS = st.one_of(st.sampled_from([_jpeg(7, (96, 72)), _jpeg(8, (64, 120))]), st.binary(max_size=64))


@pytest.fixture(scope="module")
def uploads() -> Iterator[None]:
    """Schemathesis draws image/* parts from UPLOADS (its registry is global: removed afterwards)."""
    from schemathesis.core.media_types import MEDIA_TYPE_STRATEGIES

    schemathesis.openapi.media_type("image/jpeg", UPLOADS)
    yield
    MEDIA_TYPE_STRATEGIES.pop("image/jpeg", None)


@pytest.fixture(scope="module")
def live(served, uploads) -> Iterator[str]:
    with Server(create_app(served["index"])) as url:
        yield url


@pytest.fixture(scope="module")
def api(live):
    return schemathesis.openapi.from_url(f"{live}/api/openapi.json")


@pytest.fixture(scope="module")
def live_with_token(served, uploads) -> Iterator[str]:
    with Server(create_app(served["index"], token=TOKEN)) as url:
        yield url


@pytest.fixture(scope="module")
def api_with_token(live_with_token):
    return schemathesis.openapi.from_url(f"{live_with_token}/api/openapi.json",
                                         headers={"Authorization": f"Bearer {TOKEN}"})


FUZZ = settings(max_examples=int(os.environ.get("RETRIEVAL_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
# Schemathesis' pytest loader (from_fixture) fails under pytest 9 (it reads Function._nodeid): the
# operations are taken from the document, each fuzzed with its own Hypothesis run.
OPERATIONS = [(method.upper(), path) for path, ops in document(token=False, max_upload=1)["paths"].items()
              for method in ops]


def _real(url: str, headers: dict[str, str] | None) -> dict[str, list[str]]:
    """Path values that name something: indexed ids, and the query id of a search just made."""
    r = httpx.post(f"{url}/api/search", files={"image": ("q.jpg", _jpeg(3, (80, 60)), "image/jpeg")},
                   data={"k": "4"}, headers=headers)
    assert r.status_code == 200, r.text
    ids = [str(h["id"]) for h in r.json()["hits"]]
    return {"qid": [r.json()["query"]], "id": ids, "a": ids, "b": ids}  # a, b: the two images of a pair


def _fuzz(api: Any, method: str, path: str, headers: dict[str, str] | None = None) -> list[int]:
    """The statuses of the answers, each checked against the document. Half the cases get path values
    that name an indexed image and a recent query, so that those answers are fuzzed too, not only 404s."""
    operation, statuses = api[path][method], []
    real = _real(api.location.rsplit("/api/", 1)[0], headers)

    def named(case: Any, values: dict[str, str] | None) -> Any:
        if values is not None and case.path_parameters:
            case.path_parameters.update({k: v for k, v in values.items() if k in case.path_parameters})
        return case

    names = st.none() | st.fixed_dictionaries({k: st.sampled_from(v) for k, v in real.items()})

    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))  # valid and not

    @FUZZ
    @given(case=st.builds(named, cases, names))
    def check(case: Any) -> None:
        statuses.append(case.call_and_validate(checks=CHECKS, headers=headers).status_code)

    check()
    return statuses


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_operation_answers_as_documented(api, method, path):
    assert 200 in _fuzz(api, method, path)  # searches ran, images and matches were drawn: not only refusals


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_with_a_token_too(api_with_token, method, path):
    assert 200 in _fuzz(api_with_token, method, path, headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_document_is_served_and_needs_the_token(live, live_with_token):
    """What the fuzz tests above go through (OPERATIONS) is what a live server publishes."""
    r = httpx.get(f"{live}/api/openapi.json")
    assert r.status_code == 200 and r.json() == document(token=False, max_upload=DEFAULT_MAX_UPLOAD)
    assert "security" not in r.json() and "401" not in r.text
    url = f"{live_with_token}/api/openapi.json"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == document(token=True, max_upload=DEFAULT_MAX_UPLOAD)
    assert r.json()["security"] == [{"bearer": []}]
    assert all("401" in op["responses"] for ops in r.json()["paths"].values() for op in ops.values())


@pytest.fixture(scope="module")
def client(served) -> Iterator[TestClient]:
    with TestClient(create_app(served["index"]), base_url="http://127.0.0.1") as c:
        yield c


def _search(c: TestClient, **fields: str) -> httpx.Response:
    return c.post("/api/search", files={"image": ("q.jpg", _jpeg(3, (80, 60)), "image/jpeg")}, data=fields)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"rerank_k": "0"}, "rerank_k must be at least 1"), ({"rerank_k": "1001"}, "rerank_k must be at most 1000"),
    ({"rerank_k": "1e2"}, "rerank_k must be a whole number"), ({"qe_alpha": "0"}, "qe_alpha must be a number"),
    ({"qe_alpha": "-1"}, "qe_alpha"), ({"qe_alpha": "nan"}, "qe_alpha"), ({"qe_alpha": "inf"}, "qe_alpha"),
    ({"qe_alpha": "1e999"}, "qe_alpha"), ({"qe_alpha": "100.5"}, "at most 100"), ({"qe_alpha": "\u0663"}, "qe_alpha"),
    ({"qe_alpha": "1_0"}, "qe_alpha"),
])
def test_rerank_k_and_qe_alpha_are_bounded_and_strict(client, fields, needle):
    r = _search(client, **fields)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.mark.parametrize("fields", [{"rerank_k": "1000", "rerank": "true"}, {"qe": "2", "qe_alpha": "100"},
                                    {"qe": "2", "qe_alpha": " 2.5e-1 "}, {"qe": "2", "qe_alpha": ".5"}])
def test_rerank_k_and_qe_alpha_within_bounds_are_taken(client, fields):
    assert _search(client, **fields).status_code == 200


@pytest.mark.parametrize("query", ["?max=", "?max=%20", ""])
def test_an_empty_max_is_no_max(client, served, query):
    """Found by the fuzzer: `?max=` was max 0, a ZeroDivisionError and a 500."""
    r = client.get(f"/api/images/1{query}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
    assert r.content == client.get("/api/images/1").content


def test_search_then_its_links(api):
    """Stateful: searches, then the documented links of their answers (the hit's image, the
    query's correspondences with it), every answer checked as above. 12 runs: 8 were enough
    before GET /api/similar/{id} (one more link, and one more operation answering with the links) was added."""
    class Workflow(api.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None)
            seen.add((case.operation.label, response.status_code))

    seen: set[tuple[str, int]] = set()
    Workflow.run(settings=settings(FUZZ, max_examples=12, stateful_step_count=4))
    assert {("GET /api/images/{id}", 200), ("GET /api/queries/{qid}/matches/{id}", 200),
            ("GET /api/similar/{id}", 200)} <= seen, seen


def _conforms(answer: bytes, path: str, method: str) -> int:
    """A raw HTTP answer checked against the document: status, content type, {"error"} body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    media = re.search(rb"(?im)^content-type: *([^;\r]+)", head).group(1).decode()  # type: ignore[union-attr]
    doc = document(token=False, max_upload=DEFAULT_MAX_UPLOAD)
    documented = doc["paths"][path][method]["responses"][str(status)]["content"]
    assert media in documented, (status, media, list(documented))
    if media == "application/json":
        jsonschema.validate(json.loads(body), doc["components"]["schemas"]["Error"])
    return status


def test_answers_from_before_the_app_are_documented_too(served):
    """The connection's own refusals (serve/connections.py, uvicorn), which Schemathesis never
    provokes: a head too slow (408), too large (400, uvicorn's plain text), a connection too many (503)."""
    with _Live(create_app(served["index"]), Limits(head_timeout=1.0, max_connections=2)) as live:
        start = f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n".encode()
        with live.connect() as s:
            assert _conforms(_trickle(s, _endless(start, b"X-Slow: 1\r\n")) or b"", "/api/health", "get") == 408
        with live.connect() as s:
            assert _conforms(_trickle(s, _endless(start + b"X-Big: ", b"x" * 4096)) or b"", "/api/health", "get") == 400
        held = [live.connect() for _ in range(2)]
        try:
            time.sleep(0.2)  # the server has accepted them
            with live.connect() as s:
                assert _conforms(_trickle(s, iter([start + b"\r\n"] + [b""] * 20)) or b"", "/api/health", "get") == 503
        finally:
            for s in held:
                s.close()


# --- docs/serve.md's API table against the document -----------------------------------------------------
def _api_section() -> str:
    text = (ROOT / "docs" / "serve.md").read_text()
    return text.split("## API", 1)[1].split("\n## ", 1)[0]


def _table_rows() -> list[str]:
    return [line for line in _api_section().splitlines() if line.startswith("| `")]


def test_docs_table_lists_every_operation_and_no_other():
    documented = {(m.upper(), p) for p, ops in document(token=False, max_upload=1)["paths"].items() for m in ops}
    in_docs = set()
    for row in _table_rows():
        m = re.match(r"\| `(GET|POST|PUT|DELETE|PATCH) (/[^`?\[ ]*)", row)
        assert m, row
        in_docs.add((m.group(1), m.group(2)))
    assert in_docs == documented


def test_docs_name_every_parameter_and_form_field():
    paths = document(token=False, max_upload=1)["paths"]
    rows = "\n".join(_table_rows())
    for ops in paths.values():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p["in"] == "query":
                    assert f"{p['name']}=" in rows, p["name"]
    fields = _api_section().split("`POST /api/search` fields:", 1)[1].split("\n\n", 1)[0]
    for name in search_form()["properties"]:
        assert f"`{name}`" in fields, name


def _bounded() -> dict[str, Any]:
    """Every documented number a client sends: form fields and query parameters, by name."""
    out: dict[str, Any] = dict(search_form()["properties"])
    for ops in document(token=False, max_upload=1)["paths"].values():
        for op in ops.values():
            out.update({p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] == "query"})
    return {name: s for name, s in out.items() if s.get("type") in ("integer", "number")}


def test_docs_give_each_numbers_bounds_and_default():
    """The prose's numbers are the document's (so the limits' and SearchJob's): range and default."""
    text = " ".join(_api_section().split())
    ranges = text.split("a number out of its range", 1)[1].split(")", 1)[0]
    fields = text.split("`POST /api/search` fields:", 1)[1]
    for name, s in _bounded().items():
        low = f"{s['minimum']}" if "minimum" in s else f"above {s['exclusiveMinimum']}"
        assert re.search(rf"`{name}`[^,;]* {low} to {s['maximum']:g}\b", ranges), (name, ranges)
        if "default" in s:
            assert re.search(rf"`{name}` \([^)]*default {s['default']:g}\b", fields), name
