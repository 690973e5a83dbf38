#!/usr/bin/env python3
"""Query latency: global search at several collection sizes, exact vs IVF / HNSW / IVF-PQ, with recall@10.

    python scripts/bench_query.py [--sizes 10000,100000,1000000] [--dim 768] [--kinds flat,ivf,hnsw,ivfpq]
                                  [--queries 200] [--json FILE] [--tmp DIR]

Vectors are synthetic unit vectors with cluster structure (so approximate indexes face a
realistic task), generated in chunks of 100k from per-chunk seeds and written once to a file
(the database, like the store's rows on disk): each kind reads it chunk by
chunk (as the engine streams the store), so its build never holds all the vectors in memory.
Every kind is built with `build_chunked` from 20k-row chunks (equal to a one-shot `build`). Queries are drawn from the same distribution with
another seed (distinct from the database). For each size and kind: build time, median search
latency for one query and per query in a batch, recall@10 against exact search over the same
vectors, bytes per vector the index holds in memory (`VectorIndex.nbytes`) and, for ivfpq, the
bytes per vector of its exact file on disk, and the build's peak RSS (each kind is built and
searched in its own child process, so one kind's memory never counts against another's).
Also, once: the time to embed one 448 px query with ViT-S/14 (random weights) and to re-rank
100 candidates from compact local descriptors. The automatic index-kind threshold
(retrieval.vectors.AUTO_EXACT_MAX) comes from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval import vectors as vindex
from retrieval.config import INDEX_KINDS

CHUNK = 100_000


def vectors(n: int, d: int, seed: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows start..stop of the seed's n vectors (any slice of chunks gives the same rows)."""
    stop = n if stop is None else stop
    centres = np.random.default_rng(seed).normal(size=(max(16, n // 500), d)).astype(np.float32)
    out = []
    for c0 in range(start - start % CHUNK, stop, CHUNK):
        rng = np.random.default_rng([seed, c0])
        m = min(CHUNK, n - c0)
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.normal(size=(m, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x[max(start - c0, 0): stop - c0])
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def chunks(n: int, d: int, db: Path | None = None, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks: generated, or read from the database file `db` (plain reads, no mmap)."""
    for s in range(0, n, size):
        e = min(n, s + size)
        x = vectors(n, d, 0, s, e) if db is None else np.fromfile(db, np.float32, (e - s) * d, offset=4 * s * d)
        yield np.arange(s, e, dtype=np.int64), x.reshape(e - s, d)


def write_database(n: int, d: int, path: Path) -> None:
    with open(path, "wb") as f:
        f.writelines(x.tobytes() for _, x in chunks(n, d))


def ground_truth(n: int, d: int, xq: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top k ids over the n vectors, chunk by chunk."""
    best_s = np.full((len(xq), 0), -np.inf, np.float32)
    best_i = np.zeros((len(xq), 0), np.int64)
    for ids, xb in chunks(n, d):
        s = np.concatenate([best_s, xq @ xb.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(xq), len(ids)))], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def sample_rows(db: Path, d: int, rows: np.ndarray) -> np.ndarray:
    """The vectors at `rows` (in that order), each read from the database file."""
    out = np.zeros((len(rows), d), np.float32)
    with open(db, "rb") as f:
        for j, r in enumerate(rows):
            f.seek(4 * int(r) * d)
            out[j] = np.frombuffer(f.read(4 * d), np.float32)
    return out


def measure(idx: vindex.VectorIndex, xq: np.ndarray, truth: np.ndarray) -> dict:
    single = []
    for q in xq[:50]:
        t0 = time.perf_counter()
        idx.search(q[None], 10)
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    _, got = idx.search(xq, 10)
    batch = (time.perf_counter() - t0) / len(xq)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    return {"recall_at_10": recall, "ms_per_query": 1000 * statistics.median(single),
            "ms_per_query_batched": 1000 * batch}


def bench_kind(kind: str, n: int, d: int, xq: np.ndarray, truth: np.ndarray, tmp: str,
               sweep: list[tuple[int, int]] | None = None) -> list[dict]:
    exact, db = Path(tmp) / f"bench-{os.getpid()}.f32", Path(tmp) / "database.f32"
    try:
        t0 = time.perf_counter()
        # every kind from a training sample and chunks of 20k rows (the same index as `build` gives)
        idx = vindex.build_chunked(sample_rows(db, d, vindex.train_rows(kind, n)), chunks(n, d, db, 20_000),
                                   n=n, dim=d, kind=kind, fingerprint="b", data_version=0, exact_path=exact)
        build = time.perf_counter() - t0
        rss = peak_rss()
        base = {"vectors": n, "kind": kind, "bytes_per_vector": idx.nbytes() / n,
                "disk_bytes_per_vector": idx.exact_nbytes() / n, "build_s": build, "peak_rss_bytes": rss}
        rows = [{**base, **measure(idx, xq, truth)}]
        for nprobe, floor in (sweep or []) if kind == "ivfpq" else []:  # other search settings, same index
            idx.faiss_index.nprobe = nprobe
            rows.append({**base, **measure(dataclasses.replace(idx, rescore_min=floor), xq, truth),
                         "nprobe": nprobe, "shortlist": floor})
        return rows
    finally:
        exact.unlink(missing_ok=True)


def peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM (Linux), which starts afresh at exec;
    ru_maxrss elsewhere (on Linux it keeps the parent's peak from before the child's exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)


def _child(args: tuple) -> list[dict]:
    return bench_kind(*args)


def embed_and_rerank_ms() -> tuple[float, float]:
    import torch

    from retrieval.backbone.model import Backbone
    from retrieval.backbone.registry import registry
    from retrieval.backbone.vit import build_vit
    from retrieval.rerank import verify

    arch = registry()["dinov2_vits14"]
    vit = build_vit(arch, init=True)  # random weights: the time of a forward pass does not depend on them
    bb = Backbone(arch, vit, device=torch.device("cpu"), dtype=torch.float32, weights_id="random")
    x = torch.randn(1, 3, 336, 448)
    bb.encode(x)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        bb.encode(x)
        times.append(time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(768, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cands = []
    for _ in range(100):  # unit rows, like stored local descriptors
        c = rng.normal(size=(224, 64))
        cands.append((c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float16))
    qxy, cxy = rng.uniform(0, 32, (768, 2)), rng.uniform(0, 32, (224, 2))
    t0 = time.perf_counter()
    for c in cands:
        verify(q, qxy, c.astype(np.float32), cxy)
    return 1000 * statistics.median(times), 1000 * (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq", help="comma-separated: flat, ivf, hnsw, ivfpq")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", help="also write the rows to this file (a JSON list)")
    ap.add_argument("--ivfpq-sweep", default="", help="extra ivfpq search settings on the same index, "
                    "NPROBE:SHORTLIST pairs, comma-separated (e.g. 128:1000,256:2000)")
    ap.add_argument("--tmp", help="folder for ivfpq's exact file (default: the system's temporary folder)")
    ap.add_argument("--no-model", action="store_true", help="skip the embed / re-rank timings")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    for kind in kinds:
        if kind not in INDEX_KINDS or kind == "auto":
            ap.error(f"unknown kind {kind!r}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; dim {args.dim}")
    if not args.no_model:
        e, r = embed_and_rerank_ms()
        print(f"embed one 448x336 query (ViT-S/14, fp32): {e:.0f} ms; re-rank 100 candidates: {r:.0f} ms")
    print(f"{'n':>9} {'kind':5} {'build s':>8} {'1 query ms':>10} {'batched ms/q':>12} {'recall@10':>9} "
          f"{'RAM B/vec':>9} {'disk B/vec':>10} {'peak RSS MB':>11}")
    rows: list[dict] = []
    sweep = [(int(a), int(b)) for a, b in (p.split(":") for p in args.ivfpq_sweep.split(",") if p)]
    ctx = mp.get_context("spawn")
    for n in (int(s) for s in args.sizes.split(",")):
        xq = vectors(args.queries, args.dim, 1)
        truth = ground_truth(n, args.dim, xq)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            write_database(n, args.dim, Path(tmp) / "database.f32")
            for kind in kinds:
                with ctx.Pool(1) as pool:
                    got = pool.apply(_child, ((kind, n, args.dim, xq, truth, tmp, sweep),))
                rows.extend(got)
                for r in got:
                    extra = f"  nprobe {r['nprobe']}, shortlist >= {r['shortlist']}" if "nprobe" in r else ""
                    print(f"{n:9d} {kind:5} {r['build_s']:8.1f} {r['ms_per_query']:10.2f} "
                          f"{r['ms_per_query_batched']:12.3f} {r['recall_at_10']:9.3f} {r['bytes_per_vector']:9.0f} "
                          f"{r['disk_bytes_per_vector']:10.0f} {r['peak_rss_bytes'] / 2**20:11.0f}{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
