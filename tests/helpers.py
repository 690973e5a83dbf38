"""Helpers shared by test modules (test modules never import each other; fixtures live in conftest.py)."""

from __future__ import annotations

import re
import time
import threading
import socket
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import AWKWARD, manifest_rows, synth_photo

runner = CliRunner()
# the tiny random backbone at a small size: as an index configuration, and as CLI arguments
TINY_CONFIG = {"backbone": {"name": "test_tiny"}, "image": {"size": 112}, "workers": 0, "batch": 4}
TINY_ARGS = ["--model", "test_tiny", "--size", "112", "--workers", "0", "--batch", "4"]

WIDE = {"COLUMNS": "100000"}  # rich folds nothing: one message is one line


def make_folder(root: Path, seeds, size=(160, 120)) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for s in seeds:
        p = root / f"img_{s:03d}.png"
        synth_photo(s, size).save(p)
        out.append(p)
    return out


def make_photos(folder: Path, seeds) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in seeds:
        p = folder / f"photo_{s:03d}.jpg"
        synth_photo(s, (160, 120)).save(p, quality=90)
        out.append(p)
    return out


def run(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def index_tiny(folder: Path, ix: Path, *more: str):  # noqa: ANN201
    """`retrieve index` with the tiny backbone, in this process; it must succeed."""
    r = runner.invoke(app, ["index", str(folder), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                            "--workers", "0", *more])
    assert r.exit_code == 0, r.output
    return r


def query_index(ix: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, ["query", *args, "--index", str(ix)])


def one_line_error(r, *words: str) -> None:  # noqa: ANN001
    """Failed with one error line (warnings and progress aside), no traceback, naming each of `words`."""
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("warning:", "progress:"))]
    assert len(lines) == 1 and lines[0].startswith(("error:", "Usage", "Error")) or "Invalid value" in r.stderr, \
        r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def clean_exit(r) -> bool:
    """Ended through the CLI's error boundary (typer.Exit), not an escaped exception."""
    return r.exception is None or isinstance(r.exception, SystemExit)


def error_lines(r) -> list[str]:
    """stderr without the test backbone's random-weights warning and progress lines."""
    return [x for x in r.stderr.splitlines() if x.strip() and "random weights" not in x and not x.startswith("progress:")]


def corrupt(store: Path, *, offset: int = 5000, size: int = 2048, seed: int = 0) -> None:
    assert not Path(str(store) + "-wal").exists()  # every page is in the file itself
    assert store.stat().st_size >= offset + size + 4096  # the bytes land inside b-tree pages, not past the end
    with open(store, "r+b") as f:
        f.seek(offset)
        f.write(np.random.default_rng(seed).bytes(size))


def count_rows(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return int(conn.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0])


# --- a full disk --------------------------------------------------------------------------------
class FullOnSecondBatch(sqlite3.Cursor):
    """Below the store's guard: the COMMIT of the second transaction that inserts images fails
    the way SQLite fails when the disk fills (after rolling back, as SQLite does on SQLITE_FULL)."""

    batches = 0
    in_batch = False

    def execute(self, sql, parameters=(), /):
        cls = FullOnSecondBatch
        if sql.startswith("INSERT INTO images"):
            cls.in_batch = True
        elif sql == "COMMIT" and cls.in_batch:
            cls.in_batch = False
            cls.batches += 1
            if cls.batches == 2:
                super().execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, parameters)


# the awkward-image manifest: what each file must give
ROWS = manifest_rows() if (AWKWARD / "MANIFEST.tsv").is_file() else []
# Rows whose manifest text allows either outcome, and the choice this project documents (docs/images.md).
CHOSEN = {
    "tiff_float32.tiff": "index",  # mode F is stretched min..max, as issue and docs ask
}


def expected(row: dict[str, str]) -> str:
    if row["file"] in CHOSEN:
        return CHOSEN[row["file"]]
    return re.split(r"[ :]", row["expected_handling"], maxsplit=1)[0].split("-")[0]


def index_with_full_disk(tmp_path: Path, monkeypatch, n: int = 10):  # noqa: ANN001, ANN201
    """`retrieve index` of n photos (batches of 4) whose second batch's COMMIT fails as on a full
    disk; returns (result, photos folder, index folder), the failure injection undone."""
    from retrieval.store import connection

    photos, index = tmp_path / "photos", tmp_path / "index"
    make_photos(photos, range(n))

    class Injected(connection._Cursor, FullOnSecondBatch):
        pass

    monkeypatch.setattr(FullOnSecondBatch, "batches", 0)
    monkeypatch.setattr(connection, "_Cursor", Injected)
    r = run("index", str(photos), "--index", str(index), *TINY_ARGS)
    batches = FullOnSecondBatch.batches
    monkeypatch.undo()
    assert batches == 2
    return r, photos, index


def official_like_small_state_dict(registers: int = 0) -> dict[str, torch.Tensor]:
    """A ViT-S state dict in the official key layout, made from our own model's keys and random
    values (timm's layout and initialisation, as test_vit checks, without importing timm: about 3 s of
    CPU with torchvision). Tests take it through conftest's vits_state_dict, made once a session."""
    from retrieval.backbone import registry
    from retrieval.backbone.vit import build_vit

    model = build_vit(registry()["dinov2_vits14_reg" if registers else "dinov2_vits14"], init=True)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, 384)
    if registers:
        sd["register_tokens"] = sd.pop("reg_token")
        cls_pos = torch.randn(1, 1, 384)
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        sd["cls_token"] = sd["cls_token"] - cls_pos
    return sd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Embeds:
    """create_app(on_embed=...)'s count, called on the index thread: the server's embedding calls
    and the queries in them (what a test asks of "was anything searched")."""

    def __init__(self) -> None:
        self.calls = self.queries = 0

    def __call__(self, n: int) -> None:
        self.calls += 1
        self.queries += n


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def old_store(path: Path, version: int) -> Path:
    """A store file as schema `version` wrote it (the migrations up to it, run by hand), holding one
    indexed row for /a.jpg; opening it with Store migrates it to today's schema."""
    import sqlite_utils

    from retrieval.store import schema

    db = sqlite_utils.Database(path)
    for step in (schema._v1, schema._v2, schema._v3)[:version]:
        step(db)
    db.execute("INSERT INTO images(path, size, mtime_ns, sha256, status) VALUES ('/a.jpg', 1, 2, 'h', 'ok')")
    db.execute(f"PRAGMA user_version = {version}")
    db.conn.commit()
    db.conn.close()
    return path
