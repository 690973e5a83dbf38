#!/usr/bin/env python3
"""Cost of re-ranking per query (top 100 by default), against plain search, on this machine.

    python scripts/bench_rerank.py [--images 120] [--rerank-k 100] [--queries 5] [--size 448]
                                   [--model dinov2_vits14 --weights FILE]

Without --weights, a ViT-S/14 with random weights in the official key layout is used: timings
do not depend on the weight values (the rankings do, so none are reported). Prints median
milliseconds per query for: embedding the query, global search, re-ranking the shortlist
(mutual-NN patch matching + RANSAC over stored local descriptors), and the ratio of a
re-ranked query to a plain one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import photos, random_checkpoint  # noqa: E402

from retrieval import Index, SearchOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--rerank-k", type=int, default=SearchOptions.rerank_k)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--weights", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        files = photos(root / "photos", args.images)
        weights = args.weights or random_checkpoint(args.model, root)
        cfg = {"backbone": {"name": args.model, "weights": str(weights)}, "image": {"size": args.size}}
        with Index.open_or_create(root / "ix", cfg) as idx:
            t0 = time.perf_counter()
            idx.update([root / "photos"])
            index_s = time.perf_counter() - t0
            embed, plain, reranked = [], [], []
            for q in files[: args.queries]:
                t0 = time.perf_counter()
                idx.queries([q])
                embed.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                idx.search(q, SearchOptions(k=10))
                plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                idx.search(q, SearchOptions(k=10, rerank=True, rerank_k=args.rerank_k))
                reranked.append(time.perf_counter() - t0)
            local_bytes = idx.store.db.execute(
                "SELECT avg(length(local_feats) + length(local_coords)) FROM images").fetchone()[0]
    e, p, r = (1000 * statistics.median(v) for v in (embed, plain, reranked))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}, "
          f"size {args.size}, {args.images} images indexed in {index_s:.1f} s")
    print(f"local descriptors: {local_bytes / 1024:.1f} KB per image")
    print(f"per query (median of {args.queries}): embed {e:.0f} ms | plain search total {p:.0f} ms | "
          f"re-ranked (top {args.rerank_k}) total {r:.0f} ms")
    print(f"re-ranking cost: {r - p:.0f} ms per query ({(r - p) / args.rerank_k:.2f} ms per candidate); "
          f"ratio re-ranked / plain = {r / p:.2f}")


if __name__ == "__main__":
    main()
