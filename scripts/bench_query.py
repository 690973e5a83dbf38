#!/usr/bin/env python3
"""Query latency: global search at several collection sizes, exact vs IVF / HNSW, with recall@10.

    python scripts/bench_query.py [--sizes 10000,100000,1000000] [--dim 768] [--kinds flat,ivf,hnsw]
                                  [--queries 200]

Vectors are synthetic unit vectors with cluster structure (so approximate indexes face a
realistic task). For each size and kind: build time, median search latency for one query and
per query in a batch, recall@10 against exact search. Also, once: the time to embed one 448 px
query with ViT-S/14 (random weights) and to re-rank 100 candidates from compact local
descriptors. The automatic index-kind threshold (retrieval.vectors.AUTO_EXACT_MAX) comes from here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from retrieval import vectors as vindex


def vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(16, n // 500), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_kind(kind: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict:
    t0 = time.perf_counter()
    idx = vindex.build(xb, np.arange(len(xb)), kind=kind, fingerprint="b", generation=0)
    build = time.perf_counter() - t0
    single = []
    for q in xq[:50]:
        t0 = time.perf_counter()
        idx.search(q[None], 10)
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    _, got = idx.search(xq, 10)
    batch = (time.perf_counter() - t0) / len(xq)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    return {"build_s": build, "single_ms": 1000 * statistics.median(single), "batch_ms": 1000 * batch, "recall": recall}


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
    ap.add_argument("--kinds", default="flat,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-model", action="store_true", help="skip the embed / re-rank timings")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; dim {args.dim}")
    if not args.no_model:
        e, r = embed_and_rerank_ms()
        print(f"embed one 448x336 query (ViT-S/14, fp32): {e:.0f} ms; re-rank 100 candidates: {r:.0f} ms")
    print(f"{'n':>9} {'kind':5} {'build s':>8} {'1 query ms':>10} {'batched ms/q':>12} {'recall@10':>9}")
    for n in (int(s) for s in args.sizes.split(",")):
        xb = vectors(n, args.dim, 0)
        xq = vectors(args.queries, args.dim, 1)
        truth = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
        for kind in args.kinds.split(","):
            r = bench_kind(kind, xb, xq, truth)
            print(f"{n:9d} {kind:5} {r['build_s']:8.1f} {r['single_ms']:10.2f} {r['batch_ms']:12.3f} {r['recall']:9.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
