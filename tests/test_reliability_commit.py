"""Issue 27, items 1, 10 and 11: a new index commits from its first batches whatever comes first
(refused files, tiny images), holding a bounded patch-PCA sample; a killed `--ray local` driver
leaves no Ray process behind; the summary line says `whitened` only when a whitening was fitted
in that run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.config import SearchOptions
from retrieval.engine import Index, update
from retrieval.errors import RetrievalError
from retrieval.engine.commit import LOCAL_PCA_FILES

from .helpers import TINY_ARGS, TINY_CONFIG, make_folder, make_photos, run

REFUSED = 20  # more than LOCAL_PCA_FILES, all before the images in discovery order


def refused_first(folder: Path, images: int, size: tuple[int, int] = (160, 120)) -> None:
    """`REFUSED` files that are refused (fake camera RAW files, empty JPEGs) named to come first,
    then `images` photos."""
    folder.mkdir(parents=True)
    for i in range(REFUSED):
        if i % 2:
            (folder / f"a_{i:03d}.jpg").write_bytes(b"")
        else:
            (folder / f"a_{i:03d}.nef").write_bytes(b"II*\x00 not really a raw file")
    make_folder(folder, range(images), size=size)


def watch_held(monkeypatch) -> list[int]:
    """Record, each time a forward batch's results come out of the model, how many results that
    came out before are held in memory uncommitted (results given minus rows in the store)."""
    held: list[int] = []
    given = [0]
    embedded = update.embedded_here

    def watched(model, paths, pca):
        for group in embedded(model, paths, pca):
            held.append(given[0] - model.store.count())
            given[0] += len(group)
            yield group

    monkeypatch.setattr(update, "embedded_here", watched)
    return held


@pytest.mark.parametrize("case", ["refused first", "tiny images"])
def test_a_new_index_holds_a_bounded_sample(tmp_path, monkeypatch, case):
    """Before the fix the files after a sample that could not fit the patch PCA were all held
    (tokens included) and committed at the end of the run."""
    photos = tmp_path / "photos"
    if case == "refused first":
        refused_first(photos, 40, size=(64, 48))
        cfg, n = TINY_CONFIG, 40
    else:  # 4 patch tokens an image: 16 images are too few for the PCA (local.MIN_FIT_PATCHES = 256)
        make_folder(photos, range(90), size=(40, 30))
        cfg, n = {**TINY_CONFIG, "image": {"size": 28}}, 90
    held = watch_held(monkeypatch)
    with Index.open_or_create(tmp_path / "ix", cfg) as idx:
        summary = idx.update([photos])
        assert summary.added == n and idx.count() == n
        assert len(held) > n // cfg["batch"] - 2  # watched every forward batch
        assert max(held) <= LOCAL_PCA_FILES + cfg["batch"], held
        pca = idx.local_pca()
        assert pca is not None
        local = [r for r in idx.store.blob_sizes() if r.status == "ok" and r.local_feats is not None]
        if case == "refused first":  # the sample's images waited for the PCA and got local descriptors
            assert len(local) == n
        else:  # the first tiny ones were let go without (made on demand), later ones have them
            assert 0 < len(local) < n
        assert idx.search(photos / "img_005.png", SearchOptions(k=3, rerank=True)).hits[0].path == str(photos / "img_005.png")


def test_the_sample_held_when_embedding_fails_is_saved(tmp_path, monkeypatch):
    """Embedding that fails midway (a Ray run whose files did not all come back) keeps what came
    back, the patch-PCA sample held in memory included, as the error says."""
    photos = tmp_path / "photos"
    make_folder(photos, range(10), size=(64, 48))
    embedded = update.embedded_here

    def fails(model, paths, pca):
        for i, group in enumerate(embedded(model, paths, pca)):
            if i == 2:
                raise RetrievalError("2 files did not come back; what came back is saved")
            yield group

    monkeypatch.setattr(update, "embedded_here", fails)
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        with pytest.raises(RetrievalError, match="did not come back"):
            idx.update([photos])
        assert idx.count() == 2 * TINY_CONFIG["batch"]
    monkeypatch.undo()
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        assert idx.update([photos]).added == 10 - 2 * TINY_CONFIG["batch"]


# `retrieve index ...` in a child that stops, as if busy, once the driver has taken in a number of
# embedded images over the run (the code after a `yield` runs when the consumer asks for the next group, that
# is after it committed what it would of this one), and says so by writing a marker file
PAUSING_CHILD = """
import sys, time
from pathlib import Path
from retrieval.cli import app
from retrieval.engine import update
from retrieval.types import Skipped

marker, after = Path(sys.argv[1]), int(sys.argv[2])
embedded, seen = update.embedded_here, [0]

def paused(model, paths, pca):
    for group in embedded(model, paths, pca):
        yield group
        seen[0] += sum(not isinstance(r, Skipped) for r in group)
        if seen[0] >= after:
            marker.write_text(str(seen[0]))
            time.sleep(600)

update.embedded_here = paused
sys.argv = ["retrieve", *sys.argv[3:]]
app()
"""


def _ok_rows(db: Path) -> int:
    """Images committed to the store at `db` (0 before there is one)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.subprocess
def test_killed_after_refused_files_keeps_committed_images(tmp_path):
    """`kill -9` mid-run of a new index whose first files are refused, once half its images are
    embedded: they were committed from the first batches on (before the fix: none until the
    run's end, so none after a kill)."""
    photos = tmp_path / "photos"
    refused_first(photos, 60, size=(64, 48))
    ix, marker = tmp_path / "ix", tmp_path / "paused"
    args = ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "56", "--batch", "2",
            "--workers", "0"]
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_CHILD, str(marker), "30", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and marker.exists(), proc.communicate(timeout=60)[0]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    committed = _ok_rows(ix / "store.sqlite")
    assert 30 - LOCAL_PCA_FILES - 2 <= committed <= 30  # at most the bounded sample was in memory only
    rerun = run(*args)
    assert rerun.exit_code == 0, rerun.output
    assert "added " + str(60 - committed) in rerun.stdout
    with Index.open(ix) as idx:
        assert idx.count() == 60 and idx.store.count("skipped") == REFUSED
        assert idx.local_pca() is not None


@pytest.mark.ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watcher of a local runtime reads /proc")
@pytest.mark.parametrize("stdin", ["inherited", "a file"])
def test_a_killed_local_ray_driver_leaves_no_ray_process(tmp_path, tmp_path_factory, stdin):
    """Before: `ray::DashboardAgent` and `ray::RuntimeEnvAgent` outlived a driver killed with
    SIGKILL by about 65 s (trying to tell the dead GCS that their raylet died). A driver whose
    standard input is a file (as under CI, where pytest's capture file took the closed fd 0) kept
    its watcher waiting for an end of pipe that never came: the watcher now also watches the
    driver's process."""
    import ray  # noqa: F401  (psutil comes with Ray)
    import psutil

    photos = tmp_path / "photos"
    make_photos(photos, range(200))
    ix = tmp_path / "ix"
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path_factory.mktemp("rt"))}  # short: socket paths fit 107 bytes
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "index", str(photos), "--index", str(ix), *TINY_ARGS,
                             "--ray", "local"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            stdin=open(tmp_path / "stdin", "w+b") if stdin == "a file" else None)
    deadline = time.monotonic() + 180
    while _ok_rows(ix / "store.sqlite") == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    runtime = psutil.Process(proc.pid).children(recursive=True)
    names = {p.name() for p in runtime if p.is_running()}
    assert {"raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20  # without the watcher: 60 s and more
    while time.monotonic() < deadline and [p for p in runtime if _alive(p)]:
        time.sleep(0.5)
    assert [(p.name(), p.cmdline()[:3], p.ppid()) for p in runtime if _alive(p)] == []
    assert _ok_rows(ix / "store.sqlite") > 0


def _alive(p) -> bool:  # noqa: ANN001
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_summary_says_whitened_only_when_fitted(tmp_path):
    """An unchanged rerun refits nothing, and its summary line must not say `whitened`."""
    photos = tmp_path / "photos"
    make_folder(photos, range(70), size=(64, 48))
    preset = tmp_path / "few.toml"
    preset.write_text("[whitening]\nmin_images = 10\n")
    args = ["index", str(photos), "--index", str(tmp_path / "ix"), "--model", "test_tiny", "--size", "56", "--workers",
            "0", "--pooling", "cls", "--config", str(preset)]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "added 70" in first.stdout and first.stdout.rstrip().endswith("| whitened")
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "unchanged 70" in again.stdout and not again.stdout.rstrip().endswith("whitened")
    refit = run(*args, "--refit-whitening")
    assert refit.exit_code == 0, refit.output
    assert refit.stdout.rstrip().endswith("| whitened")
