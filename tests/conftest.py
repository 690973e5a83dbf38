"""Shared fixtures: the tiny random backbone, synthetic photos, and the repository's test data."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # in the repository: tests never read outside it (tests/data/README.md)
AWKWARD = DATA / "awkward-images"
GND = DATA / "revisitop-gnd"

# A test that starts a process carries one of these markers (pyproject.toml says what each means), so
# that the fast run (README, Development), which leaves them out, is quick and checks all the rest.
CHILD_MARKERS = ("subprocess", "ray", "browser")
UNMARKED = ("started a process ({}) but is not marked: mark this test @pytest.mark.subprocess "
            "(or ray, or browser) so that the fast run leaves it out")


@contextmanager
def _no_children(started: list[str]) -> Iterator[None]:
    """Every way this interpreter starts a process (subprocess, multiprocessing's spawn and
    forkserver, os.fork, os.system, posix_spawn) refuses, and is recorded in `started`."""
    import _posixsubprocess

    def refuse(what: str):  # noqa: ANN202
        def refused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started.append(what)
            raise RuntimeError(UNMARKED.format(what))
        return refused

    real_child = subprocess.Popen._execute_child

    def child(self, args, *rest, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # ctypes.util.find_library asks `ldconfig -p` (torch's first import does, through CUDA's
        # library finder): a library lookup, whichever test happens to import torch first.
        if isinstance(args, (list, tuple)) and args and os.path.basename(str(args[0])) == "ldconfig":
            return real_child(self, args, *rest, **kwargs)
        return refuse("subprocess")()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", child)
        mp.setattr(_posixsubprocess, "fork_exec", refuse("multiprocessing"))
        for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                mp.setattr(os, name, refuse(f"os.{name}"))
        yield


def _guarded(item: pytest.Item):  # noqa: ANN202
    """A hook wrapper's body: an unmarked test that starts a process, in its fixtures' setup or
    teardown too, fails naming the marker it needs (even where the code under test caught the
    refusal); a marked test runs as it is."""
    if any(item.get_closest_marker(m) for m in CHILD_MARKERS):
        return (yield)
    started: list[str] = []
    try:
        with _no_children(started):
            result = yield
    except BaseException:
        if not started:
            raise
        result = None
    if started:
        pytest.fail(UNMARKED.format(", ".join(sorted(set(started)))), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # noqa: ANN201
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # noqa: ANN201
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):  # noqa: ANN201
    return (yield from _guarded(item))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`, the fast run in README's Development), each worker's PyTorch gets
    its share of the cores, not all of them: N workers each running OpenMP's full team spin-wait
    against each other (on 2 cores, `-n 2` took 124 s of CPU with full teams and 80 s with one
    thread each, for the same tests). A test that wants every core (test_fidelity) says so itself."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(scope="session", autouse=True)
def _one_click_command_per_app() -> Iterator[None]:
    """CliRunner.invoke(app, ...) has typer build the app's click command anew each time, evaluating
    every command's annotations: about 20 ms of CPU a call, several hundred calls a run. The command
    is built once per app object instead (a re-imported app, as test_cli_defaults makes, is another
    object and gets its own); click runs a command any number of times."""
    import weakref

    import typer.main
    import typer.testing

    real = typer.main.get_command
    commands: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_command(typer_instance: typer.Typer):  # noqa: ANN202
        if typer_instance not in commands:
            commands[typer_instance] = real(typer_instance)
        return commands[typer_instance]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing, "_get_command", get_command)
        yield


@pytest.fixture(scope="session")
def tiny():
    from retrieval import load_backbone

    return load_backbone("test_tiny", device="cpu")


@pytest.fixture(scope="session", autouse=True)
def _one_tls_context() -> Iterator[None]:
    """Every httpx client makes a TLS context, parsing certifi's CA bundle (about 20 ms of CPU), though
    the tests speak plain HTTP to 127.0.0.1; the serve tests make hundreds of clients (16 at once in
    the concurrency tests), so the clients with httpx's default verification share one instead."""
    import threading

    from httpx._transports import default

    real = default.create_ssl_context
    made: dict[bool, Any] = {}
    lock = threading.Lock()

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return real(verify=verify, cert=cert, trust_env=trust_env)
        with lock:
            if trust_env not in made:
                made[trust_env] = real(verify=True, cert=None, trust_env=trust_env)
            return made[trust_env]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(default, "create_ssl_context", create_ssl_context)
        yield


@pytest.fixture(scope="session")
def vits_state_dict():  # noqa: ANN201
    """A function giving a private copy of helpers.official_like_small_state_dict(registers): the
    random initialisation of a ViT-S runs once per register count a session, not once per test."""
    from .helpers import official_like_small_state_dict

    made: dict[int, dict] = {}

    def state_dict(registers: int = 0) -> dict:
        if registers not in made:
            made[registers] = official_like_small_state_dict(registers)
        return {k: v.clone() for k, v in made[registers].items()}

    return state_dict


@pytest.fixture(scope="session")
def awkward_dir() -> Path:
    if not (AWKWARD / "MANIFEST.tsv").is_file():
        pytest.fail(f"test data missing: {AWKWARD} (part of the repository; is the clone complete?)")
    return AWKWARD


def manifest_rows() -> list[dict[str, str]]:
    with open(AWKWARD / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def synth_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A seeded picture with shapes and texture, so that tokens differ between seeds."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(3,))
    a = np.empty((h, w, 3), np.uint8)
    a[:] = base
    a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        color = tuple(int(c) for c in rng.integers(0, 255, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    return im


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    out = []
    for i, size in enumerate([(320, 240), (240, 320), (320, 240), (500, 200)]):
        p = tmp_path / f"photo_{i}.jpg"
        synth_photo(i, size).save(p, quality=92)
        out.append(p)
    return out


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Five seeded photos, p0.jpg to p4.jpg."""
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(5):
        synth_photo(i).save(d / f"p{i}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(photos folder, index folder) of 12 small photos: a store of 16 pages of 4 KB."""
    from .helpers import TINY_ARGS, make_photos, run

    root = tmp_path_factory.mktemp("built")
    photos = root / "photos"
    make_photos(photos, range(12))
    r = run("index", str(photos), "--index", str(root / "index"), *TINY_ARGS)
    assert r.exit_code == 0, r.output
    return photos, root / "index"


@pytest.fixture()
def index(built, tmp_path) -> Path:
    """A private copy of the built index."""
    import shutil

    return Path(shutil.copytree(built[1], tmp_path / "index"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, awkward_dir) -> dict[str, Path]:
    """An index of 8 synthetic photos plus one stored rotated (EXIF orientation 6)."""
    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    photos.mkdir()
    for i in range(8):
        synth_photo(100 + i, (320, 240) if i % 2 else (240, 320)).save(photos / f"p{i}.jpg", quality=92)
    shutil.copy(awkward_dir / "jpeg_exif_orient6_landscape.jpg", photos / "rotated.jpg")
    ix = root / "ix"
    from typer.testing import CliRunner

    from retrieval.cli import app

    r = CliRunner().invoke(app, ["index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    query = root / "query.jpg"  # not indexed: a crop of p3 re-encoded
    Image.open(photos / "p3.jpg").crop((20, 10, 300, 230)).save(query, quality=85)
    return {"root": root, "photos": photos, "index": ix, "query": query}
