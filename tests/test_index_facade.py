"""`Index` is a thin facade over the engine's stages (issue 26 items 2 and 5): one way to embed a
query file, and no update, weights or re-ranking logic of its own."""

from __future__ import annotations

import ast
import inspect
import textwrap

from retrieval.engine import Index

# What Index offers (README's Python API, docs/scale.md, the CLI, serve, eval and scripts use these)
PUBLIC = {"open", "open_or_create", "close", "backbone", "device", "fingerprint", "queries", "local_pca", "update",
          "whitening", "refresh", "ensure_vectors", "search", "search_many", "search_embedded", "remove", "exclusions",
          "exclude", "count", "info", "path", "store", "config", "similar", "files", "require_images"}
LONGEST = 12  # statement lines of a method, its docstring left out: wiring, not logic


def test_one_query_embedding_entry_point():
    """Before: embed_queries, queries, query_tokens and embed_query (and embed_files) on Index."""
    names = {n for n in vars(Index) if not n.startswith("_")}
    assert names == PUBLIC - {"path", "store", "config"}


def test_every_method_is_wiring():
    """Before: update (about 45 lines), _embed_and_commit (40), weights identity and the GPU probe
    lived in Index. `info` is left out: its typed form is another change's (issue 26)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Index)))
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef)
    long = {}
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name == "info":
            continue
        body = fn.body[1:] if ast.get_docstring(fn) else fn.body
        lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
        if lines > LONGEST:
            long[fn.name] = lines
    assert long == {}
