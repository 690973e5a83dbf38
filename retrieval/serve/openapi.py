"""The API of `retrieve serve` as an OpenAPI 3.1 document (GET /api/openapi.json; docs/serve.md).

    document(token=False, max_upload=50_000_000)  # a dict, json.dumps-able

Every number in it comes from the code that enforces it (serve/limits.py, SearchOptions' defaults,
engine.serving.PICTURE_KINDS), so the document cannot drift from the server; tests fuzz a live
server against it with Schemathesis (tests/test_serve_schema.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..config import SearchOptions
from ..engine.dedupe import KINDS
from ..engine.serving import PICTURE_KINDS
from .limits import BBOX, MAX_ALPHA, MAX_ID, MAX_K, MAX_SIDE, MIN_SIDE, PICTURE_FORMATS, Limits

Schema = dict[str, Any]

REFUSALS = {  # what any request may meet before (or instead of) its route
    400: "bad input, or a Host header that does not name this server (a request that is not HTTP, or whose "
         f"head passes {Limits.max_head} bytes, is answered by uvicorn in plain text, without these headers)",
    403: "a request a browser marks as another origin's (Sec-Fetch-Site, Origin)",
}
# Answered by the connection's reader (serve/connections.py) or uvicorn, before the app and its headers.
TIMEOUT = (f"the request's head did not arrive in {Limits.head_timeout:g} s (or an upload's body in "
           f"{Limits.body_timeout:g} s); the connection is closed")
BUSY = (f"more than {Limits.max_connections} connections are open ({{\"error\": ...}}), or as many requests "
        f"are being answered (uvicorn's plain text)")
INDEX_ERROR = {409: "the index cannot answer (for instance damaged); the message says how to fix it"}
NOT_FOUND = {404: "no such image id or query id (an old query id: search again)"}
_SECURITY_HEADERS = {name: {"required": True, "schema": {"type": "string", "const": value}} for name, value in (
    ("Cross-Origin-Resource-Policy", "same-origin"), ("X-Content-Type-Options", "nosniff"))}


def _defaults() -> dict[str, Any]:
    return dataclasses.asdict(SearchOptions())


def search_form() -> Schema:
    """The multipart form of POST /api/search: each field's type, bounds and default."""
    d = _defaults()
    count = {"type": "integer", "maximum": MAX_K}
    return {"type": "object", "required": ["image"], "additionalProperties": False, "properties": {
        "image": {"type": "string", "format": "binary", "contentMediaType": "image/*",
                  "description": "the query image: any format `retrieve index` reads"},
        "k": {**count, "minimum": 1, "default": d["k"], "description": "how many results"},
        "bbox": {"type": "string", "pattern": f"^(?:{BBOX})$",
                 "description": "x1,y1,x2,y2 in the upright image's pixels (x2 > x1, y2 > y1): query only this box"},
        "rerank": {"type": "boolean", "default": d["rerank"],
                   "description": "re-rank the shortlist by verified patch matches"},
        "rerank_k": {**count, "minimum": 1, "default": d["rerank_k"], "description": "shortlist size for rerank"},
        "qe": {**count, "minimum": 0, "default": d["qe"],
               "description": "alpha-query expansion with this many top results (0: off)"},
        "qe_alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_ALPHA, "default": d["qe_alpha"],
                     "description": "weight exponent of query expansion"},
    }}


def _groups() -> Schema:
    """GET /api/duplicates' answer (engine.dedupe.DedupeReport.to_json)."""
    count = {"type": "integer", "minimum": 0}
    member = {"type": "object", "required": ["id", "path", "width", "height", "mtime_ns", "sha256"], "properties": {
        "id": {"type": "integer"}, "path": {"type": "string"}, "width": {"type": ["integer", "null"]},
        "height": {"type": ["integer", "null"]}, "mtime_ns": {"type": "integer"}, "sha256": {"type": ["string", "null"]}}}
    link = {"type": "object", "required": ["a", "b", "kind", "inliers", "coverage", "mirrored"], "properties": {
        "a": {"type": "string"}, "b": {"type": "string"}, "kind": {"enum": list(KINDS)},
        "score": {"type": ["number", "null"]}, "inliers": count, "coverage": {"type": "number"},
        "mirrored": {"type": "boolean"}}}
    group = {"type": "object", "required": ["kind", "keep", "members", "links"], "properties": {
        "kind": {"enum": list(KINDS)}, "keep": {"type": "string"},
        "members": {"type": "array", "minItems": 2, "items": member}, "links": {"type": "array", "items": link}}}
    return {"type": "object", "required": ["images", "candidates", "unverifiable", "groups"], "properties": {
        "images": count, "candidates": count, "unverifiable": count, "groups": {"type": "array", "items": group}}}


def _error() -> Schema:
    return {"type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {"type": "string", "description": "one line for people"}}}


def _answer(description: str, media: dict[str, Schema], *, headers: bool = True) -> Schema:
    return {"description": description, **({"headers": _SECURITY_HEADERS} if headers else {}),
            "content": {m: {"schema": s} for m, s in media.items()}}


def _json(description: str, schema: Schema) -> Schema:
    return _answer(description, {"application/json": schema})


def _operation(name: str, summary: str, ok: Schema, errors: dict[int, str], *, token: bool,
               parameters: Sequence[Schema] = (), body: Schema | None = None) -> Schema:
    """One operation: its 200 answer, the errors it may answer with {"error": ...}, and the 408 and
    503 of a slow or surplus connection."""
    responses: dict[str, Schema] = {"200": ok}
    refusals = {**REFUSALS, **({401: "no or a wrong bearer token (--token)"} if token else {}), **errors}
    error = {"$ref": "#/components/schemas/Error"}
    for status, why in sorted(refusals.items()):
        responses[str(status)] = _json(why, error)
    responses["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    responses["408"] = _answer(TIMEOUT, {"application/json": error}, headers=False)
    responses["503"] = _answer(BUSY, {"application/json": error, "text/plain": {"type": "string"}}, headers=False)
    op: Schema = {"operationId": name, "summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    return op


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _hits() -> Schema:
    hit = {"type": "object", "required": ["rank", "score", "path", "id"], "properties": {
        "rank": {"type": "integer", "minimum": 1}, "score": {"type": "number"}, "path": {"type": "string"},
        "id": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
        "inliers": {"type": "integer", "minimum": 0, "description": "with rerank only"}}}
    return {"type": "object", "required": ["query", "hits", "reranked", "size"], "properties": {
        "query": {"type": "string", "description": "the query id, for /api/queries/{qid}/..."},
        "hits": {"type": "array", "items": hit}, "reranked": {"type": "boolean"}, "size": _pair("integer")}}


def _search_parameters() -> list[Schema]:
    """The search form's options (all but the image and its box) as query parameters."""
    fields = search_form()["properties"]
    return [_query(name, {k: v for k, v in fields[name].items() if k != "description"}, fields[name]["description"])
            for name in ("k", "rerank", "rerank_k", "qe", "qe_alpha")]


def _pair(kind: str) -> Schema:
    return {"type": "array", "items": {"type": kind, "minimum": 0}, "minItems": 2, "maxItems": 2}


def _matches() -> Schema:
    count = {"type": "integer", "minimum": 0}
    return {"type": "object", "required": ["matches", "inliers", "verified", "min_inliers", "pairs", "similarity",
                                           "lines", "line_colours", "max_lines", "query_size", "query_box", "size"],
            "properties": {
                "matches": count, "inliers": count,
                "verified": {"type": "boolean", "description": "inliers >= min_inliers, the bar re-ranking uses"},
                "min_inliers": count,
                "pairs": {"type": "array", "items": {"type": "array", "items": {"type": "number"},
                                                     "minItems": 4, "maxItems": 4}},
                "similarity": {"type": "array", "items": {"type": "number"}},
                "lines": {"type": "array", "items": count,
                          "description": "indices into pairs that the matches picture draws as lines, in its order"},
                "line_colours": {"type": "array", "items": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
                "max_lines": count,
                "query_box": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"},
                                                            "minItems": 4, "maxItems": 4}]},
                "query_size": _pair("integer"), "size": _pair("integer")}}


def _paths(token: bool, max_upload: int) -> Schema:
    id_schema = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
    image_id = _path("id", id_schema)
    form = {"required": True, "content": {"multipart/form-data": {
        "schema": search_form(), "encoding": {"image": {"contentType": "image/*"}}}}}
    picture = {"type": "string", "format": "binary"}
    correspondences = _answer("pairs as JSON, or the picture `retrieve match` draws",
                              {"application/json": _matches(), "image/png": picture})
    hits = _json("hits, as `retrieve query --json`", _hits())
    hits["links"] = {  # what a client does next with a search's answer (the page does all three)
        "image": {"operationId": "image", "parameters": {"id": "$response.body#/hits/0/id"}},
        "similar": {"operationId": "similar", "parameters": {"id": "$response.body#/hits/0/id"}},
        "matches": {"operationId": "matches",
                    "parameters": {"qid": "$response.body#/query", "id": "$response.body#/hits/0/id"}}}
    return {
        "/api/health": {"get": _operation("health", "the index answers", _json("how many images are indexed", {
            "type": "object", "required": ["status", "images", "busy_s"],
            "properties": {"status": {"const": "ok"}, "images": {"type": "integer", "minimum": 0},
                           "busy_s": {"type": "number", "minimum": 0,
                                      "description": "seconds the index thread has been on its current job (0: idle)"}}}),
            INDEX_ERROR, token=token)},
        "/api/info": {"get": _operation("info", "what `retrieve info --json` prints", _json("the index's state", {
            "type": "object", "required": ["images", "config", "skipped"]}), INDEX_ERROR, token=token)},
        "/api/openapi.json": {"get": _operation("openapi", "this document", _json("OpenAPI 3.1", {"type": "object"}), {},
                                                token=token)},
        "/api/search": {"post": _operation(
            "search", "the indexed images most like an uploaded one", hits,
            {**INDEX_ERROR, 413: f"an upload over --max-upload ({max_upload} bytes)"}, token=token, body=form)},
        "/api/similar/{id}": {"get": _operation(
            "similar", "the indexed images most like an indexed one (itself left out), from its stored descriptor",
            hits, {**INDEX_ERROR, **NOT_FOUND}, token=token, parameters=[image_id, *_search_parameters()])},
        "/api/duplicates": {"get": _operation(
            "duplicates", "groups of copies in the index (exact, near) and of similar shots (similar), as `retrieve "
            "dedupe --similar --json`", _json("the groups, keeper first", _groups()),
            {409: "the index cannot answer (for instance damaged), or holds more images than the server groups: "
                  "the message says to run `retrieve dedupe`"}, token=token)},
        "/api/images/{id}": {"get": _operation(
            "image", "an indexed image, upright", _answer("the image as JPEG", {"image/jpeg": picture}),
            {**INDEX_ERROR, **NOT_FOUND}, token=token, parameters=[image_id, _query(
                "max", {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE}, "longer side in pixels")])},
        "/api/queries/{qid}/matches/{id}": {"get": _operation(
            "matches", "a recent query's verified correspondences with an indexed image", correspondences,
            {**INDEX_ERROR, **NOT_FOUND}, token=token,
            parameters=[_path("qid", {"type": "string"}), image_id, *_picture_parameters()])},
        "/api/pairs/{a}/{b}/matches": {"get": _operation(
            "pair_matches", "two indexed images' verified correspondences (a duplicate group's keeper a and a member "
            "b), as `retrieve dedupe --html` draws them", correspondences,
            {**INDEX_ERROR, 404: "no indexed image with id a or b"}, token=token,
            parameters=[_path("a", id_schema), _path("b", id_schema), *_picture_parameters()])},
    }


def _picture_parameters() -> list[Schema]:
    """?format= and ?kind= of the correspondences routes."""
    formats = {"enum": list(PICTURE_FORMATS), "default": PICTURE_FORMATS[0]}
    return [_query("format", formats, "the answer's form"),
            _query("kind", {"enum": list(PICTURE_KINDS), "default": PICTURE_KINDS[0]}, "with format=png: which picture")]


def document(*, token: bool, max_upload: int) -> Schema:
    """The OpenAPI 3.1 document of a server with (token=True) or without a bearer token."""
    doc: Schema = {
        "openapi": "3.1.0",
        "info": {"title": "retrieve serve", "version": "1",
                 "description": "Image instance retrieval over one index (docs/serve.md). Errors are "
                                "{\"error\": \"one line\"}; every answer carries the headers of docs/serve.md, Security."},
        "paths": _paths(token, max_upload),
        "components": {"schemas": {"Error": _error()}},
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


__all__ = ["document", "search_form"]
