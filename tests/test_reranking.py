"""engine/reranking.py: re-ranking is a stage given the store and a function that makes local
descriptors from files; it no longer calls back into `Index` (issue 26 item 3)."""

from __future__ import annotations

import sqlite3

import pytest

from retrieval.config import SearchOptions
from retrieval.engine import Index
from retrieval.engine.commit import stored_pca
from retrieval.engine.files import STORE_FILE
from retrieval.engine.reranking import Reranking, stored_local
from retrieval.engine.search import search
from retrieval.store import Store

from .helpers import TINY_CONFIG, make_folder


def test_reranking_takes_the_store_and_makes_only_the_missing_local_descriptors(tmp_path):
    """Before, search asked Index._candidate_local, which asked Index.embed_files: the stage could
    not run without an Index. Now a bare Store and any `local_of` do, and `local_of` is asked once,
    for the candidates stored without local descriptors only."""
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    files = make_folder(photos, range(8))
    options = SearchOptions(k=5, rerank=True, rerank_k=8)
    with Index.open_or_create(ix, TINY_CONFIG) as idx:
        idx.update([photos])
        q = idx.queries([files[4]])[0]
        expected = idx.search_embedded(q, options)
        vec, whitening = idx.ensure_vectors(), idx.whitening()
    lost = sorted([str(files[1]), str(files[4])])
    store = Store(ix / STORE_FILE)
    try:
        pca = stored_pca(store)
        assert pca is not None
        paths = store.paths(store.descriptor_ids())
        kept, missing = stored_local(store, list(paths), pca)
        assert missing == []
        by_path = {paths[i]: f for i, f in kept.items()}
        with sqlite3.connect(ix / STORE_FILE) as conn:
            conn.execute("UPDATE images SET local_feats = NULL, local_coords = NULL WHERE path IN (?, ?)", lost)
        asked: list[list[str]] = []

        def local_of(paths, pca):  # noqa: ANN001, ANN202
            asked.append(sorted(paths))
            return {p: by_path[p] for p in paths}  # what was stored: the ranking must not change

        got = search(q, store=store, vec=vec, whitening=whitening, options=options, rerank=Reranking(store, local_of))
    finally:
        store.close()
    assert asked == [lost]
    assert [(h.id, h.path, h.inliers) for h in got.hits] == [(h.id, h.path, h.inliers) for h in expected.hits]
    assert got.hits[0].path == str(files[4]) and got.reranked


def test_a_rerank_asked_without_the_stage_is_refused(tmp_path):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    files = make_folder(photos, range(3))
    with Index.open_or_create(ix, TINY_CONFIG) as idx:
        idx.update([photos])
        q = idx.queries([files[0]])[0]
        with pytest.raises(ValueError, match="re-ranking stage"):
            search(q, store=idx.store, vec=idx.ensure_vectors(), whitening=None, options=SearchOptions(rerank=True))
