"""`retrieve index --ray` (issue 13): the files embedded by Ray workers, planned and committed by
the driver exactly as without Ray. One local Ray runtime (2 CPUs and a declared GPU, a small
object store, no dashboard, its files in the test's temporary folder) serves the module;
`--ray local` uses the runtime the process already holds. Ray is part of the `test` extra: a
missing Ray fails here."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import engine
from retrieval.engine.commit import StoredEmbedding
from retrieval.engine.distributed import Cluster, Embedder, check_address, from_columns, to_columns
from retrieval.errors import UsageError
from retrieval.types import Skipped

from .conftest import AWKWARD
from .helpers import TINY_ARGS, TINY_CONFIG, error_lines, make_photos, run

BAD = ["jpeg_truncated_progressive.jpg", "jpeg_truncated_baseline_photo.jpg"]
ODD_NAME = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8: Linux names are bytes, and Arrow strings must be UTF-8


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    import logging

    import ray

    # one GPU declared (Ray's resources are labels): the cluster's shape is a GPU node's, so decoding
    # runs in tasks of its own and its pixels cross to the actor as a GPU cluster's do; the model
    # runs on the CPU (torch finds no CUDA device). The CPU shape is checked in test_pool_sizing.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=80 * 2**20,
             logging_level=logging.WARNING, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """21 photos (more than the 16 a new index learns its patch PCA from), one named in Latin-1, and
    two refused files."""
    root = tmp_path_factory.mktemp("rayphotos") / "photos"
    make_photos(root, range(20))
    make_photos(root / "more", [20])[0].rename(root / ODD_NAME)
    for name in BAD:
        shutil.copy(AWKWARD / name, root / name)
    return root


def _rows(index: Path) -> dict[bytes, tuple]:
    """Every stored row by its path's bytes (a name that is not UTF-8 is stored as a BLOB)."""
    with sqlite3.connect(index / "store.sqlite") as conn:
        cur = conn.execute("SELECT path, status, error, sha256, width, height, descriptor, local_feats, local_coords "
                           "FROM images")
        return {r[0] if isinstance(r[0], bytes) else os.fsencode(r[0]): r[1:] for r in cur.fetchall()}


def _query(index: Path, image: Path) -> list[dict]:
    r = run("query", str(image), "--index", str(index), "--json", "-k", "23")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.ray
def test_ray_gives_the_same_index_as_one_process(ray_runtime, folder, tmp_path):
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    r = run("index", str(folder), "--index", str(alone), *TINY_ARGS)
    assert r.exit_code == 0, r.output
    alone_warned = r.stderr.splitlines()
    r = run("index", str(folder), "--index", str(spread), *TINY_ARGS, "--ray", "local")
    assert r.exit_code == 0, r.output
    assert "added 21, updated 0, removed 0, unchanged 0, skipped 2" in r.stdout
    warned = sorted(x for x in r.stderr.splitlines() if x.startswith("warning: skipped"))
    assert len(warned) == 2 and warned == sorted(x for x in alone_warned if x.startswith("warning: skipped"))
    assert all("; fix: " in x for x in warned)  # the reader's fix crosses Ray's columns too
    assert ray_runtime.is_initialized()  # a runtime this process held is used, not shut down

    a, b = _rows(alone), _rows(spread)
    assert sorted(a) == sorted(b) and len(a) == 23 and os.fsencode(folder / ODD_NAME) in a
    for path, (status, error, sha, w, h, desc, feats, coords) in a.items():
        s2, e2, sha2, w2, h2, desc2, feats2, coords2 = b[path]
        assert (status, error, sha, w, h) == (s2, e2, sha2, w2, h2), path
        if status == "skipped":
            assert os.fsdecode(os.path.basename(path)) in BAD and "truncated" in error
            continue
        np.testing.assert_allclose(np.frombuffer(desc2, np.float32), np.frombuffer(desc, np.float32), atol=1e-5)
        assert coords2 == coords  # the same patches kept, by the same (frozen) patch PCA
        np.testing.assert_allclose(np.frombuffer(feats2, np.float16).astype(np.float32),
                                   np.frombuffer(feats, np.float16).astype(np.float32), atol=2e-3)
    for name in ("photo_003.jpg", "photo_017.jpg", ODD_NAME):
        qa, qb = _query(alone, folder / name), _query(spread, folder / name)
        assert [h["path"] for h in qa] == [h["path"] for h in qb]
        np.testing.assert_allclose([h["score"] for h in qb], [h["score"] for h in qa], atol=1e-4)

    again = run("index", str(folder), "--index", str(spread), *TINY_ARGS, "--ray", "local")
    assert again.exit_code == 0, again.output
    assert "added 0, updated 0, removed 0, unchanged 21, skipped 0, still refused 2" in again.stdout
    assert _rows(spread) == b


@pytest.mark.ray
def test_ray_resizes_to_the_backbones_patch_like_one_process(ray_runtime, tmp_path):
    """DINOv3 (patch 16) through --ray: the decode tasks resize to multiples of 16 before any model
    exists (at 14, a 160 x 120 photo would be 112 x 84 and its descriptor another)."""
    photos = tmp_path / "photos"
    make_photos(photos, range(5))
    args = ["--model", "test_tiny_v3", "--size", "112", "--workers", "0", "--batch", "4"]
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    assert run("index", str(photos), "--index", str(alone), *args).exit_code == 0
    r = run("index", str(photos), "--index", str(spread), *args, "--ray", "local")
    assert r.exit_code == 0, r.output
    a, b = _rows(alone), _rows(spread)
    assert sorted(a) == sorted(b) and len(a) == 5
    for path, row in a.items():
        assert row[5] is not None and row[7] == b[path][7]  # the same patches kept, on the same 5 x 7 grid
        np.testing.assert_allclose(np.frombuffer(b[path][5], np.float32), np.frombuffer(row[5], np.float32),
                                   atol=1e-5)


class DiesOnce(Embedder):
    """Kills its worker process in its first call (once per folder: a marker file beside it);
    notes the size of every call that returns."""

    def __call__(self, batch):  # noqa: ANN001, ANN204
        marker = Path(os.fsdecode(batch["path"][0])).parent.parent / "died-once"
        if not marker.exists():
            marker.touch()
            os._exit(1)
        out = super().__call__(batch)
        with open(marker.parent / "calls", "a") as f:
            f.write(f"{len(batch['path'])}\n")
        return out


@pytest.mark.ray
def test_a_worker_that_dies_is_retried_and_no_row_is_lost_or_doubled(ray_runtime, tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, range(10))
    with engine.Index.open_or_create(tmp_path / "index", {**TINY_CONFIG, "batch": 1}) as idx:
        summary = idx.update([photos], cluster=Cluster("local", embedder=DiesOnce))
        assert (tmp_path / "died-once").exists()  # the worker did die
        assert (summary.added, summary.updated, summary.skipped, summary.interrupted) == (10, 0, [], False)
        assert idx.count() == 10
    # a call takes 4 x batch files, no more (results come back per call): 4, 4, 2
    assert sorted(int(n) for n in (tmp_path / "calls").read_text().split()) == [2, 4, 4]
    rows = _rows(tmp_path / "index")
    assert sorted(Path(os.fsdecode(p)).name for p in rows) == [f"photo_{i:03d}.jpg" for i in range(10)]


@pytest.mark.ray
def test_stopping_keeps_what_was_committed_and_the_same_command_continues(ray_runtime, tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, range(10))
    with engine.Index.open_or_create(tmp_path / "index", TINY_CONFIG) as idx:
        first = idx.update([photos], cluster=Cluster("local"), should_stop=lambda: True)
        assert first.interrupted and 0 < first.added < 10
        assert idx.count() == first.added
        rest = idx.update([photos], cluster=Cluster("local"))
        assert (rest.added, rest.unchanged, rest.interrupted) == (10 - first.added, first.added, False)
        assert idx.count() == 10


def test_ray_missing_is_one_line_naming_the_pip_command(tmp_path, monkeypatch):
    make_photos(tmp_path / "photos", range(2))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = run("index", str(tmp_path / "photos"), "--index", str(tmp_path / "index"), *TINY_ARGS, "--ray", "local")
    assert r.exit_code == 1
    assert error_lines(r) == ['error: --ray needs Ray, which is not installed; install it with: '
                              'pip install "retrieval[ray]"']
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("address", ["nonsense", "", "http://head:6379", "ray://", "head:port", "ray://head"])
def test_nonsense_addresses_are_refused_in_one_line(tmp_path, address):
    make_photos(tmp_path / "photos", range(1))
    r = run("index", str(tmp_path / "photos"), "--index", str(tmp_path / "index"), *TINY_ARGS, "--ray", address)
    assert r.exit_code == 2
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray {address!r} is not a Ray address")
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("address", ["local", "auto", "10.0.0.5:6379", "ray://head-node:10001", "ray://[::1]:10001"])
def test_addresses_ray_takes_are_accepted(address):
    assert check_address(address) == address
    with pytest.raises(UsageError):
        check_address(address + " x")


@pytest.mark.ray
def test_a_local_runtime_keeps_token_auth_without_rays_warning(tmp_path_factory):
    """Ray warns on every start that it chose token authentication; `--ray local` keeps the token
    and drops the line (a real runtime, in a process of its own, so this module's is not reused)."""
    temp = str(tmp_path_factory.mktemp("rt"))  # short: Ray's socket paths must fit 107 bytes
    code = ("import ray, logging; from retrieval.engine.distributed import connect; "
            f"assert connect('local', num_cpus=1, object_store_memory=80 * 2**20, _temp_dir={temp!r}); "
            "import os; print(os.environ.get('RAY_AUTH_MODE')); "  # Ray sets it when it turns the token on
            "level = logging.getLogger('ray._private.authentication.authentication_token_setup').level; "
            "ray.shutdown(); print('level', level)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["token", "level 0"]  # authenticated; the logger's level given back
    assert "Token authentication" not in r.stderr


def test_results_cross_as_plain_columns_and_come_back_the_same():
    rng = np.random.default_rng(0)
    e1 = StoredEmbedding("/p/a.jpg", "ab" * 32, 640, 480, rng.normal(size=8).astype(np.float32), (3, 4), b"\x01\x02", b"\x03",
                  None)
    e2 = StoredEmbedding("/p/b.jpg", "cd" * 32, 10, 20, rng.normal(size=8).astype(np.float32), (2, 2), None, None,
                  rng.normal(size=(4, 6)).astype(np.float32))
    cols = to_columns([(0, e1), (0, Skipped(3, "/p/c.png", "truncated file", "re-save it")), (1, e2)], call="x")
    odd = to_columns([(0, Skipped(0, "/p/" + ODD_NAME, "not an image"))], call="y")
    assert from_columns(odd)[0][0] == Skipped(-1, "/p/" + ODD_NAME, "not an image")
    for v in cols.values():  # numpy columns of str, int, bool or bytes: nothing else crosses
        assert isinstance(v, np.ndarray) and all(isinstance(x, (str, bytes, np.integer, np.bool_)) for x in v)
    groups = from_columns(cols)
    assert [len(g) for g in groups] == [2, 1]
    a, c, b = groups[0][0], groups[0][1], groups[1][0]
    assert isinstance(a, StoredEmbedding) and isinstance(b, StoredEmbedding) and isinstance(c, Skipped)
    assert (c.path, c.reason, c.fix) == ("/p/c.png", "truncated file", "re-save it")  # warned with its fix
    for got, want in ((a, e1), (b, e2)):
        assert (got.path, got.sha256, got.width, got.height, got.grid, got.local_feats, got.local_coords) == \
            (want.path, want.sha256, want.width, want.height, want.grid, want.local_feats, want.local_coords)
        np.testing.assert_array_equal(got.descriptor, want.descriptor)
    assert a.patches is None
    np.testing.assert_array_equal(b.patches, e2.patches)


def test_an_error_raised_on_a_worker_reaches_the_user_as_its_own_line():
    from retrieval.engine.distributed import _as_retrieval_error
    from retrieval.errors import ArtifactMismatchError, RetrievalError

    raised = ArtifactMismatchError("weights on node n1 differ from the index's")
    try:  # a failed task: Ray raises its own error with the worker's as the cause
        try:
            raise raised
        except ArtifactMismatchError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert _as_retrieval_error(outer) is raised
    # an actor that died in its constructor: only the text of the worker's error comes back
    died = RuntimeError("The actor died ...\nTraceback ...\nretrieval.errors.ArtifactMismatchError: weights on node "
                        "n1 differ from the index's")
    got = _as_retrieval_error(died)
    assert isinstance(got, RetrievalError) and str(got) == "weights on node n1 differ from the index's"
    other = _as_retrieval_error(ConnectionError("node lost\nobject store full"))
    assert str(other).startswith("the Ray run failed (ConnectionError: object store full)")


class _FakeRay:
    def __init__(self, resources: dict, nodes: list[dict]) -> None:
        self.resources, self.node_list = resources, nodes

    def cluster_resources(self) -> dict:
        return self.resources

    def nodes(self) -> list[dict]:
        return self.node_list


def test_pool_sizing():
    from retrieval.engine.distributed import pool

    def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
        return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}}

    # GPUs: an actor per GPU, one CPU each; decoding in one-CPU tasks of its own (not fused)
    embed, decode, actors = pool(_FakeRay({"CPU": 48, "GPU": 8}, [node(16), node(16, 4), node(16, 4)]))
    assert (embed, decode, actors) == ({"num_gpus": 1, "num_cpus": 1}, {"num_cpus": 1}, 8)
    # CPUs only: an actor per node of the smallest node's cores; decoding with equal resources (fused)
    embed, decode, actors = pool(_FakeRay({"CPU": 40}, [node(16), node(8), node(16), node(64, alive=False)]))
    assert embed == decode == {"num_cpus": 8} and actors == 5
    assert pool(_FakeRay({"CPU": 2}, [node(2)])) == ({"num_cpus": 2}, {"num_cpus": 2}, 1)


@pytest.mark.subprocess
def test_decode_tasks_start_without_torch_or_ray():
    """A decode task's process imports the module of its function, and only that."""
    import subprocess

    code = "import sys, retrieval.engine.distributed; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
