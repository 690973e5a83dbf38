"""The index folder end to end: incremental updates, whitening, staleness, crashes, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import BadImageError, RetrievalError
from retrieval.config import SearchOptions
from retrieval.engine import Index, VectorIndexInfo
from retrieval.backbone import model as backbone_model
from retrieval.engine.files import writer_lock
from retrieval.images import load_image
from retrieval.errors import ArtifactMismatchError

from .conftest import synth_photo
from .helpers import CHOSEN, ROWS, TINY_CONFIG, expected, make_folder





def ranking(idx: Index, queries, k=5):
    return [[(h.path, h.score) for h in idx.search(q, SearchOptions(k=k)).hits] for q in queries]


def assert_same_ranking(a, b):
    for qa, qb in zip(a, b):
        assert [p for p, _ in qa] == [p for p, _ in qb]
        np.testing.assert_allclose([s for _, s in qa], [s for _, s in qb], atol=1e-4)


@pytest.fixture()
def no_model(monkeypatch):
    """Fail loudly if anything tries to load a backbone."""

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backbone_model, "load_backbone", boom)


def test_incremental_equals_full_rebuild(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(10))
    queries = [synth_photo(100 + i).save(tmp_path / f"q{i}.png") or tmp_path / f"q{i}.png" for i in range(3)]
    with Index.open_or_create(tmp_path / "inc", TINY_CONFIG) as idx:
        first = idx.update([photos])
        assert (first.added, first.unchanged) == (10, 0)
        # add two, change one's content, delete one, touch one (new mtime, same bytes)
        make_folder(photos, [20, 21])
        synth_photo(55).save(files[3])
        files[5].unlink()
        os.utime(files[7], ns=(time.time_ns(), time.time_ns() + 10**9))
        s = idx.update([photos])
        assert (s.added, s.updated, s.removed, s.unchanged) == (2, 1, 1, 8)
        inc = ranking(idx, queries + [files[3]])
        inc_paths = sorted(r.path for r in idx.store.rows())
    with Index.open_or_create(tmp_path / "full", TINY_CONFIG) as full:
        full.update([photos])
        assert sorted(r.path for r in full.store.rows()) == inc_paths
        assert_same_ranking(inc, ranking(full, queries + [files[3]]))


def test_unchanged_folder_does_no_model_work(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(4))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        gen = idx.store.generation
    def boom(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(backbone_model, "load_backbone", boom)
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 5 * 10**9))  # timestamp only
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        s = idx.update([photos])
        assert (s.added, s.updated, s.unchanged) == (0, 0, 4)
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        assert idx.store.generation == gen + 1  # only the touched timestamp was written
        assert idx.info().vector_index.fresh is True  # and nothing derived was rebuilt


def test_whitening_fitted_refit_and_used(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    make_folder(photos, range(70), size=(64, 48))
    cfg = {**TINY_CONFIG, "image": {"size": 56}, "pooling": {"pooling": "cls"}, "whitening": {"min_images": 10}}
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        s = idx.update([photos])
        assert s.whitened
        w = idx.whitening()
        assert w is not None and w.fitted_on == 70 and w.dim_out == 32
        # search == brute force over whitened stored descriptors
        ids, raw = idx.store.descriptors()
        q = photos / "img_005.png"
        xq = w.apply(idx.queries([q])[0].raw)
        order = np.argsort(-(w.apply(raw) @ xq[0]))[:5]
        hits = idx.search(q, SearchOptions(k=5)).hits
        assert [h.id for h in hits] == list(ids[order])
    # refit with a reduced dimension, without touching the model
    def boom(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(backbone_model, "load_backbone", boom)
    with Index.open_or_create(tmp_path / "ix", {**cfg, "whitening": {"min_images": 10, "dim": 8}}) as idx:
        idx.refresh(refit=True)
        assert idx.whitening().dim_out == 8
        assert idx.info().vector_index == VectorIndexInfo(fresh=True, kind="flat", vectors=70, dim=8)


def test_below_threshold_no_whitening(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, range(3))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        assert idx.update([photos]).whitened is False
        assert idx.info().whitening is None


@pytest.mark.parametrize("damage", ["garbage", "old_generation", "missing"])
def test_stale_vector_index_is_rebuilt_not_used(tmp_path, damage):
    photos = tmp_path / "photos"
    make_folder(photos, range(5))
    ix = tmp_path / "ix"
    with Index.open_or_create(ix, TINY_CONFIG) as idx:
        idx.update([photos])
        old = (ix / "vectors.npz").read_bytes()
        make_folder(photos, [40])
        idx.update([photos])
        want_after = ranking(idx, [photos / "img_002.png"])
    if damage == "garbage":
        (ix / "vectors.npz").write_bytes(b"not an index")
    elif damage == "old_generation":
        (ix / "vectors.npz").write_bytes(old)  # one image short: must not be used
    else:
        (ix / "vectors.npz").unlink()
    with Index.open(ix) as idx:
        assert idx.info().vector_index.fresh is False
        got = ranking(idx, [photos / "img_002.png"])
        assert_same_ranking(got, want_after)
        assert idx.ensure_vectors().ntotal == 6
        assert idx.info().vector_index.fresh is True  # rebuilt and saved


@pytest.mark.subprocess
def test_awkward_images_end_to_end(tmp_path, awkward_dir):
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "workers": 1}) as idx:
        s = idx.update([awkward_dir])
        info = idx.info()
    to_index = {r["file"] for r in ROWS if expected(r) == "index"}
    to_reject = {r["file"] for r in ROWS if expected(r) == "reject"}
    assert (len(to_index), len(to_reject)) == (60 + len(CHOSEN), 20 - len(CHOSEN))
    assert info.images == len(to_index)
    skipped = {Path(x.path).name: x.reason for x in info.skipped}
    assert set(skipped) == to_reject and all(skipped.values())
    assert len(s.skipped) == len(to_reject)


def test_skipped_files_not_retried_unless_asked(tmp_path, awkward_dir, monkeypatch):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(awkward_dir / "zero_bytes.jpg", photos / "z.jpg")
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        assert len(idx.update([photos]).skipped) == 1
        again = idx.update([photos])
        assert (again.unchanged, again.still_refused) == (0, 1)
        assert len(idx.update([photos], retry_skipped=True).skipped) == 1


def test_query_errors(tmp_path, awkward_dir):
    with pytest.raises(RetrievalError, match="no index at"):
        Index.open(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([empty])
        with pytest.raises(RetrievalError, match="holds no images"):
            idx.search(awkward_dir / "bmp_24bit.bmp")
    make_folder(empty, [1])
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([empty])
        with pytest.raises(BadImageError, match="png_truncated.png"):
            idx.search(awkward_dir / "png_truncated.png")
        with pytest.raises(BadImageError, match="bbox"):
            idx.search(empty / "img_001.png", bbox=(500, 500, 600, 600))


def test_a_refused_query_gets_its_readers_fix(tmp_path, awkward_dir):
    """The fix a query's refusal names is the reader's own (--max-pixels for a 200 MP photo, the raw
    converter's export for a RAW file, the path for a missing file), as load_image gives it."""
    photos = tmp_path / "photos"
    make_folder(photos, [1])
    raw = tmp_path / "IMG_0001.NEF"
    raw.write_bytes(b"\x00" * 64)
    refused = [awkward_dir / r["file"] for r in ROWS if expected(r) == "reject"] + [raw, tmp_path / "gone.jpg"]
    fixes = {}
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        for path in refused:
            with pytest.raises(BadImageError) as want:
                load_image(path)
            with pytest.raises(BadImageError) as got:
                idx.search(path)
            assert (got.value.reason, got.value.fix) == (want.value.reason, want.value.fix), path.name
            fixes[path.name] = got.value.fix
    assert "--max-pixels" in fixes["heic_200mp.heic"] and "--max-pixels" in fixes["gif_decompression_bomb.gif"]
    assert "raw converter" in fixes["IMG_0001.NEF"] and "path" in fixes["gone.jpg"]


def test_config_and_weights_mismatch(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, range(2))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
    with pytest.raises(ArtifactMismatchError, match="size 112 in the index, 224 asked"):
        Index.open_or_create(tmp_path / "ix", {"image": {"size": 224}})
    with Index.open(tmp_path / "ix") as idx:
        idx.store.set_meta(weights_id="sha256:other")
        with pytest.raises(ArtifactMismatchError, match="give the original weights file") as e:
            idx.backbone()
        assert e.value.command == "--weights FILE" and "--" not in str(e.value)


def test_bbox_query_equals_cropped_file(tmp_path):
    photos = tmp_path / "photos"
    files = make_folder(photos, range(4), size=(200, 150))
    crop = tmp_path / "crop.png"
    Image.open(files[1]).crop((20, 10, 150, 120)).save(crop)
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        a = idx.queries([files[1]], bbox=(20, 10, 150, 120))[0].raw
        b = idx.queries([crop])[0].raw
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert ranking(idx, [crop]) == [[(h.path, h.score) for h in idx.search(files[1], bbox=(20, 10, 150, 120)).hits]]


def test_stop_after_batch_then_resume(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, range(12))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        s = idx.update([photos], should_stop=lambda: True)
        done = idx.store.count("ok")
        assert s.interrupted and s.added == done and 0 < done < 12
        assert idx.info().vector_index.fresh is True  # what was done is queryable
        s2 = idx.update([photos])
        assert not s2.interrupted and (s2.added, s2.unchanged) == (12 - done, done)
        assert idx.store.count("ok") == 12


def test_remove_and_lock(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, range(4))
    make_folder(photos / "sub", [9])
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        assert idx.remove([photos / "sub"]) == 1
        assert idx.remove([photos / "img_000.png"]) == 1
        assert idx.store.count("ok") == 3 and idx.info().vector_index.vectors == 3
        with writer_lock(tmp_path / "ix"):
            with pytest.raises(RetrievalError, match="another"):
                idx.update([photos])


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _index_cmd(folder: Path, ix: Path) -> list[str]:
    return [sys.executable, "-m", "retrieval", "index", str(folder), "--index", str(ix), "--model", "test_tiny",
            "--size", "112", "--batch", "2", "--workers", "0"]


@pytest.mark.subprocess
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_loses_nothing_committed(tmp_path, sig):
    photos = tmp_path / "photos"
    make_folder(photos, range(60), size=(320, 240))
    ix = tmp_path / "ix"
    proc = subprocess.Popen(_index_cmd(photos, ix), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _count(ix / "store.sqlite") < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "indexing finished before it could be interrupted"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    committed = _count(ix / "store.sqlite")
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again" in out
        assert committed < 60
    else:
        assert proc.returncode == -signal.SIGKILL
    assert committed >= 4
    # the partial index answers queries
    with Index.open(ix) as idx:
        assert len(idx.search(photos / "img_001.png", SearchOptions(k=3)).hits) == 3
    rerun = subprocess.run(_index_cmd(photos, ix), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with Index.open(ix) as idx:
        rows = list(idx.store.rows())
        assert len(rows) == 60 and len({r.path for r in rows}) == 60
        assert idx.store.count("ok") == 60
        resumed = ranking(idx, [photos / "img_010.png"])
    with Index.open_or_create(tmp_path / "fresh", {**TINY_CONFIG, "batch": 2}) as fresh:
        fresh.update([photos])
        assert_same_ranking(resumed, ranking(fresh, [photos / "img_010.png"]))


@pytest.mark.subprocess
def test_full_size_weights_file_index_and_query(tmp_path, vits_state_dict):
    """`retrieve index DIR --weights FILE` then `retrieve query IMG` with a full-size ViT-S
    checkpoint in the official key layout (random values: no real weights exist here)."""
    import torch

    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(vits_state_dict(), ckpt)
    photos = tmp_path / "photos"
    make_folder(photos, range(3))
    env = {**os.environ, "RETRIEVAL_INDEX": str(tmp_path / "ix")}
    base = [sys.executable, "-m", "retrieval"]
    r = subprocess.run(base + ["index", str(photos), "--weights", str(ckpt), "--size", "112", "--workers", "0"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    q = subprocess.run(base + ["query", str(photos / "img_001.png"), "--json", "-k", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert q.returncode == 0, q.stderr
    hits = json.loads(q.stdout)
    assert hits[0]["path"] == str(photos / "img_001.png") and len(hits) == 2
    with Index.open(tmp_path / "ix") as idx:
        assert idx.config.backbone.name == "dinov2_vits14" and idx.config.backbone.weights == str(ckpt)
    # the file moved: query says how to fix it, and --weights with the same bytes works
    moved = tmp_path / "moved.pth"
    ckpt.rename(moved)
    q = subprocess.run(base + ["query", str(photos / "img_001.png")], capture_output=True, text=True, env=env)
    assert q.returncode == 1 and "not found" in q.stderr
    q = subprocess.run(base + ["query", str(photos / "img_001.png"), "--weights", str(moved)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert q.returncode == 0, q.stderr


# --- regressions found in review ---------------------------------------------------------------

def test_emptied_index_can_change_model(tmp_path, vits_state_dict):
    import torch

    ckpt = tmp_path / "s.pth"
    torch.save(vits_state_dict(), ckpt)
    photos = tmp_path / "photos"
    files = make_folder(photos, range(2))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        idx.remove([photos])
    cfg = {"backbone": {"name": "dinov2_vits14", "weights": str(ckpt)}, "image": {"size": 224}, "workers": 0}
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        idx.update([photos])
        assert idx.local_pca().mean.shape == (384,)  # refitted for the new model
        assert idx.search(files[0], SearchOptions(k=1, rerank=True)).hits[0].path == str(files[0])


def test_whitening_options_take_effect_without_data_change(tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, range(70), size=(64, 48))
    cfg = {**TINY_CONFIG, "image": {"size": 56}, "pooling": {"pooling": "cls"}, "whitening": {"min_images": 10}}
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        assert idx.update([photos]).whitened
    with Index.open_or_create(tmp_path / "ix", {**cfg, "whitening": {"min_images": 10, "dim": 8}}) as idx:
        idx.update([photos])
        assert idx.whitening().dim_out == 8
    with Index.open_or_create(tmp_path / "ix", {**cfg, "whitening": {"enabled": False}}) as idx:
        assert idx.update([photos]).whitened is False and idx.whitening() is None


def test_vectors_of_a_deleted_store_are_not_reused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_folder(a, range(3))
    files_b = make_folder(b, range(10, 13))
    ix = tmp_path / "ix"
    with Index.open_or_create(ix, TINY_CONFIG) as idx:
        idx.update([a])
    for f in ix.glob("store.sqlite*"):
        f.unlink()
    with Index.open_or_create(ix, TINY_CONFIG) as idx:
        idx.update([b])
        hit = idx.search(files_b[1], SearchOptions(k=1)).hits[0]
        assert hit.path == str(files_b[1]) and hit.score == pytest.approx(1.0, abs=1e-4)


def test_unreadable_folder_is_not_deleted(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    make_folder(photos, range(2))
    make_folder(photos / "nas", range(5, 8))
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([photos])
        real = os.scandir

        def flaky(path):
            if str(path).endswith("nas"):
                raise PermissionError(13, "Permission denied")
            return real(path)

        monkeypatch.setattr(os, "scandir", flaky)
        s = idx.update([photos])
        assert s.removed == 0 and idx.store.count("ok") == 5


def test_retry_skipped_even_after_touch(tmp_path, awkward_dir):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(awkward_dir / "png_large_1bit_12000x12000.png", photos / "big.png")
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        assert len(idx.update([photos]).skipped) == 1
    os.utime(photos / "big.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "image": {"size": 112, "max_pixels": 200_000_000}}) as idx:
        s = idx.update([photos], retry_skipped=True)
        assert s.skipped == [] and idx.store.count("ok") == 1


def test_query_is_embedded_like_the_database(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    big = photos / "big.jpg"
    synth_photo(5, (1800, 1350)).save(big, quality=92)  # large enough for a JPEG draft decode
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "image": {"size": 224}}) as idx:
        idx.update([photos])
        _, stored = idx.store.descriptors()
        np.testing.assert_allclose(idx.queries([big])[0].raw, stored, atol=1e-5)


def test_wrong_weights_path_is_refused_not_saved(tmp_path, vits_state_dict):
    import torch

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(vits_state_dict(), a)
    sd = vits_state_dict()
    sd["norm.weight"] = sd["norm.weight"] + 1
    torch.save(sd, b)
    photos = tmp_path / "photos"
    make_folder(photos, range(2))
    cfg = {"backbone": {"name": "dinov2_vits14", "weights": str(a)}, "image": {"size": 112}, "workers": 0}
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        idx.update([photos])
    with pytest.raises(ArtifactMismatchError, match="original weights file"):
        Index.open_or_create(tmp_path / "ix", {"backbone": {"weights": str(b)}})
    with Index.open(tmp_path / "ix") as idx:
        assert idx.config.backbone.weights == str(a)


def test_weights_file_hashed_once_per_version(tmp_path, monkeypatch, vits_state_dict):
    from retrieval.backbone import weights as W

    import torch

    ckpt = tmp_path / "s.pth"
    torch.save(vits_state_dict(), ckpt)
    photos = tmp_path / "photos"
    files = make_folder(photos, range(2))
    cfg = {"backbone": {"name": "dinov2_vits14", "weights": str(ckpt)}, "image": {"size": 112}, "workers": 0}
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        idx.update([photos])
    calls = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p: calls.append(p) or real(p))
    with Index.open(tmp_path / "ix") as idx:
        idx.search(files[0], SearchOptions(k=1))
    assert calls == []  # same file, same size and mtime: the stored hash is trusted
    os.utime(ckpt, ns=(time.time_ns(), time.time_ns() + 10**9))
    with Index.open(tmp_path / "ix") as idx:
        idx.search(files[0], SearchOptions(k=1))
    assert len(calls) == 1  # touched: hashed again (and still the same bytes, so accepted)


class _ReadOnlyStore:
    readonly = True

    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def get_meta(self, key: str):
        return self.meta.get(key)

    def set_meta(self, **values) -> None:
        raise AssertionError(f"a read-only store was written: {values}")


def test_weights_checked_on_a_read_only_index_hand_on_the_hash_they_computed(tmp_path, monkeypatch):
    """A read-only store cannot remember a weights file's hash; the driver's check still hands the
    hash it computed to the Ray workers (Weights.hashes), which then do not read the file again."""
    from retrieval.backbone import weights as W
    from retrieval.config import BackboneConfig, EngineConfig
    from retrieval.engine import weights_identity

    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"weights of a test")
    store = _ReadOnlyStore({"weights_id": "sha256:" + W.file_sha256(ckpt)})
    config = EngineConfig(backbone=BackboneConfig(name="dinov2_vits14", weights=str(ckpt)))
    got = weights_identity.checked(store, config, tmp_path, weights=None)  # type: ignore[arg-type]
    calls: list[str] = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p: calls.append(p) or real(p))
    assert W.file_id(ckpt, dict(got.hashes)) == got.id  # what a worker does with them
    assert calls == []


def test_auto_dtype_is_resolved_once_and_stored(tmp_path, monkeypatch):
    import torch

    from retrieval.backbone import native_dtype

    photos = tmp_path / "photos"
    make_folder(photos, range(2))
    want = native_dtype(torch.device("cpu"))
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "backbone": {"name": "test_tiny", "device": "cpu"}}) as idx:
        assert idx.config.backbone.dtype == want  # concrete, never "auto"
        idx.update([photos])
        assert idx.backbone().dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[want]
    # another machine (no native bf16) opening it keeps the index's dtype
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_dtype(torch.device("cpu")) == "fp32"
    with Index.open_or_create(tmp_path / "ix", {}) as idx:
        assert idx.config.backbone.dtype == want
    with Index.open_or_create(tmp_path / "new", {"backbone": {"name": "test_tiny", "device": "cpu"}}) as idx:
        assert idx.config.backbone.dtype == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    with Index.open_or_create(tmp_path / "newer", {"backbone": {"name": "test_tiny", "device": "cpu"}}) as idx:
        assert idx.config.backbone.dtype == "bf16"


def test_local_descriptors_made_where_the_model_ran_equal_the_numpy_ones(tmp_path):
    from retrieval import local
    from retrieval.engine import embed

    photos = tmp_path / "photos"
    files = make_folder(photos, range(8))
    # 64 patches per image at 112 px: the patch PCA is fitted after the second batch of 2, so the
    # later batches get local descriptors during the run (on a GPU from local.select_many, whose
    # equality with select is tested in test_local; here on the CPU from select per image)
    with Index.open_or_create(tmp_path / "ix", {**TINY_CONFIG, "batch": 2}) as idx:
        idx.update([photos])
        pca = idx.local_pca()
        assert pca is not None
        ids, _ = idx.store.descriptors()
        paths = idx.store.paths(ids)
        stored = idx.store.local(ids)
        tokens = {e.path: e for e in embed([str(f) for f in files], backbone=idx.backbone(), image=idx.config.image)}
    made = [int(i) for i in ids if stored[int(i)] is not None]  # rows embedded before the PCA have none yet
    assert len(made) >= 4
    for i in made:
        feats, coords, grid = stored[i]
        got = local.unpack(feats, coords, grid, pca.dim)
        want = local.select(tokens[paths[i]].patches, grid, pca)
        np.testing.assert_array_equal(got.xy, want.xy)
        np.testing.assert_allclose(got.feats.astype(np.float32), want.feats.astype(np.float32), atol=2e-3)


def test_an_open_index_sees_a_whitening_set_by_another_connection(index):
    """Index caches the decoded whitening and the vector index per store generation; a change
    made through another connection (another process: `retrieve eval`, a concurrent run) bumps
    the generation and is seen by the next search."""
    import numpy as np

    from retrieval import Index
    from retrieval import whitening as wh
    from retrieval.engine import derived
    from retrieval.store import Store

    with Index.open(index) as idx:
        assert idx.whitening() is None
        before = idx.ensure_vectors()
        assert idx.ensure_vectors() is before  # nothing changed: not re-checked
        ids, x = idx.store.descriptors()
        w = wh.fit(np.concatenate([x, -x, x * 0.5 + 0.1]), dim=None)
        with Store(index / "store.sqlite") as other:
            derived.set_whitening(other, idx.config, w, "test")
        got = idx.whitening()
        assert got is not None and got.digest() == w.digest()
        assert idx.ensure_vectors().fingerprint != before.fingerprint  # rebuilt for the new whitening


def test_a_vector_rebuild_decodes_the_whitening_once(index, monkeypatch):
    """The fingerprint, the saved file's check and the rebuild share one decoded whitening record."""
    from retrieval import Index
    from retrieval import whitening as wh
    from retrieval.engine.files import VECTORS_FILE

    decode, calls = wh.decode, []
    monkeypatch.setattr(wh, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    with Index.open(index) as idx:
        assert idx.store.get_meta("whitening") is not None  # a record to decode (one saying: none fitted)
        (index / VECTORS_FILE).unlink()
        calls.clear()
        assert idx.ensure_vectors().ntotal > 0  # rebuilt: no file, nothing cached
        assert len(calls) == 1
