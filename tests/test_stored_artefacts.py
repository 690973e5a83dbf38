"""Each stored artefact has one writer and one reader, shared by the engine and `retrieve check`:
what the engine refuses, check reports in the same words, and what check passes, the engine reads
(issue 26 item 4). The index is the tiny backbone's: 32-d tokens, 64-d descriptors."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval import local
from retrieval import whitening as wh

from .helpers import clean_exit, error_lines, run


def _meta(index: Path, key: str) -> Any:
    with sqlite3.connect(index / "store.sqlite") as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else json.loads(row[0])


def _set_meta(index: Path, key: str, value: Any) -> None:
    with sqlite3.connect(index / "store.sqlite") as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     [key, json.dumps(value)])
    conn.close()


def _whitening(dim_in: int = 64, seed: int = 0) -> wh.Whitening:
    return wh.fit(np.random.default_rng(seed).normal(size=(300, dim_in)).astype(np.float32))


def _record(index: Path, w: wh.Whitening) -> dict[str, Any]:
    """A whitening record for the index's current rows and settings, as the engine writes one
    (spelt out: the stored format, not whitening.encode, is what is compared)."""
    state = _meta(index, "whitening")
    return {**state, "data": _npz(mean=w.mean, projection=w.projection, fitted_on=np.int64(w.fitted_on)),
            "digest": w.digest()}


def _npz(**arrays: Any) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode()


def _nan_projection(index: Path) -> dict[str, Any]:
    w = _whitening()
    p = w.projection.copy()
    p[0, 0] = np.nan
    return _record(index, wh.Whitening(w.mean, p, w.fitted_on))  # its digest is the damaged arrays' own


DAMAGED_WHITENINGS: dict[str, Callable[[Path], Any]] = {
    "bytes that are not an npz": lambda ix: {**_record(ix, _whitening()), "data": base64.b64encode(b"xx").decode()},
    "text that is not base64": lambda ix: {**_record(ix, _whitening()), "data": "not base64!"},
    "another whitening's digest": lambda ix: {**_record(ix, _whitening()), "digest": _whitening(seed=1).digest()},
    "values that are not finite": _nan_projection,
    "for 16-d descriptors": lambda ix: _record(ix, _whitening(16)),
    "not a record": lambda ix: [1, 2],
}


def _errors(r: Any) -> list[str]:
    return [x.removeprefix("error").strip() for x in r.stdout.splitlines() if x.startswith("error")]


def _refused_alike(index: Path, photo: Path, *query: str) -> str:
    """The engine refuses the index with one line, and check reports that very line."""
    c = run("check", "--index", str(index))
    assert c.exit_code == 1 and clean_exit(c), c.output
    found = _errors(c)
    q = run("query", str(photo), "--index", str(index), *query)
    assert q.exit_code == 1 and clean_exit(q) and "unexpected" not in q.output, q.output
    said = [x for x in error_lines(q) if not x.startswith("info:")]  # "rebuilding the vector index" is no error
    assert len(found) == 1 and said == [f"error: {found[0]}"], (found, q.stderr)
    return found[0]


@pytest.mark.parametrize("damage", DAMAGED_WHITENINGS)
def test_a_whitening_the_engine_refuses_is_what_check_reports(built, index, damage):
    photos, _ = built
    _set_meta(index, "whitening", DAMAGED_WHITENINGS[damage](index))
    said = _refused_alike(index, photos / "photo_003.jpg")
    assert str(index / "store.sqlite") in said and "--refit-whitening" in said


def test_a_whitening_check_passes_is_what_the_engine_uses(built, index):
    photos, _ = built
    before = json.loads(run("query", str(photos / "photo_003.jpg"), "--index", str(index), "--json").stdout)
    _set_meta(index, "whitening", _record(index, _whitening()))  # learned elsewhere: `retrieve eval --whiten-from`
    c = run("check", "--index", str(index))
    assert c.exit_code == 0 and any("whitening: PCA 64 -> 64" in x for x in c.stdout.splitlines()), c.stdout
    q = run("query", str(photos / "photo_003.jpg"), "--index", str(index), "--json")
    assert q.exit_code == 0, q.output
    assert [h["path"] for h in json.loads(q.stdout)] != [h["path"] for h in before] or \
        [h["score"] for h in json.loads(q.stdout)] != [h["score"] for h in before]  # it was applied


@pytest.mark.parametrize("refit", [["--refit-whitening"], []], ids=["the fix it names", "a plain run"])
def test_a_damaged_whitening_is_refitted_by_the_next_index_run(built, index, refit):
    photos, _ = built
    _set_meta(index, "whitening", DAMAGED_WHITENINGS["another whitening's digest"](index))
    r = run("index", str(photos), "--index", str(index), *refit, "--workers", "0")
    assert r.exit_code == 0, r.output
    assert run("check", "--index", str(index)).exit_code == 0
    assert run("query", str(photos / "photo_003.jpg"), "--index", str(index)).exit_code == 0


def _pca(d: int = 32, k: int = 16, seed: int = 0) -> local.LocalPCA:
    return local.fit_pca(np.random.default_rng(seed).normal(size=(200, d)).astype(np.float32), dim=k)


DAMAGED_PCAS: dict[str, Callable[[], Any]] = {
    "bytes that are not an npz": lambda: base64.b64encode(b"xx").decode(),
    "text that is not base64": lambda: "not base64!",
    "values that are not finite": lambda: _npz(mean=np.full(32, np.nan, np.float32),
                                               components=_pca().components),
    "components without a second axis": lambda: _npz(mean=np.zeros(32, np.float32), components=np.zeros(32)),
    "for 16-d tokens": lambda: _npz(mean=_pca(16, 8).mean, components=_pca(16, 8).components),
    "not text": lambda: {"mean": 0},
}


@pytest.mark.parametrize("damage", DAMAGED_PCAS)
def test_a_patch_pca_the_engine_refuses_is_what_check_reports(built, index, damage):
    photos, _ = built
    _set_meta(index, "local_pca", DAMAGED_PCAS[damage]())
    said = _refused_alike(index, photos / "photo_003.jpg", "--rerank")
    assert str(index / "store.sqlite") in said and "restore a backup" in said


def test_local_descriptors_check_passes_are_what_the_engine_reads(built, index):
    """A row cut short: check names it; the engine, re-ranking over it, refuses it in one line
    where it failed with a bug's message before; intact rows read alike in both."""
    photos, _ = built
    with sqlite3.connect(index / "store.sqlite") as conn:
        conn.execute("UPDATE images SET local_coords = substr(local_coords, 1, 40) "
                     "WHERE id = (SELECT min(id) FROM images WHERE local_feats IS NOT NULL)")
    conn.close()
    c = run("check", "--index", str(index))
    assert c.exit_code == 1 and len(_errors(c)) == 1 and "do not fit their grid" in _errors(c)[0], c.stdout
    q = run("query", str(photos / "photo_003.jpg"), "--index", str(index), "--rerank")
    assert q.exit_code == 1 and clean_exit(q) and "unexpected" not in q.output, q.output
    assert len(error_lines(q)) == 1 and "do not fit" in q.stderr, q.stderr


def test_a_descriptor_check_reports_is_one_the_engine_refuses(built, index):
    """A global descriptor cut short: check names the row, and the engine, rebuilding its vectors
    from the store, refuses it in one line naming the store (a bug's message before)."""
    photos, _ = built
    with sqlite3.connect(index / "store.sqlite") as conn:
        conn.execute("UPDATE images SET descriptor = substr(descriptor, 1, 100) WHERE id = (SELECT max(id) FROM images)")
    conn.close()
    (index / "vectors.npz").unlink()  # rebuilt from the descriptors by the next query
    c = run("check", "--index", str(index))
    assert c.exit_code == 1 and len(_errors(c)) == 1 and "descriptor of the wrong size" in _errors(c)[0], c.stdout
    q = run("query", str(photos / "photo_003.jpg"), "--index", str(index))
    assert q.exit_code == 1 and clean_exit(q) and "unexpected" not in q.output, q.output
    said = [x for x in error_lines(q) if not x.startswith("info:")]
    assert len(said) == 1 and str(index / "store.sqlite") in said[0] and "retrieve check" in said[0], q.stderr
