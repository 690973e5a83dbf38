#!/usr/bin/env python3
"""Indexing on Ray against one process, and the driver's commit ceiling (docs/scale.md).

    python scripts/bench_ray.py [--images 200] [--model dinov2_vits14] [--size 224] [--batch 16]
                                [--folder DIR] [--weights FILE] [--rows 4000] [--parts local,ray,commit]

Each part runs in its own fresh process, one after the other:
  local   Index.update of --folder into a new index, in this process (the single-process path);
  ray     the same with --ray local: a Ray runtime started on this machine, Ray Data decoding and
          an actor pool embedding, the driver committing;
  commit  the driver alone, embedding free: --rows synthetic results of the size the defaults
          store (a 2 x 384 = 768-d descriptor for ViT-S's cls+gem, local.DEFAULT_PATCHES local
          descriptors of local.DEFAULT_DIM in fp16 with their coordinates) turned back from Ray's
          columns (distributed.from_columns), into rows (commit.upserts) and committed per batch
          (Store.apply), as the Ray driver does; and Store.apply(upserts(...)) alone; best of two each,
          at --batch 16 and at 128 rows per transaction (--commit-batches; a GPU's batch is larger).
Prints img/s of local and ray (the whole update, Ray's start included; and from the commit of
the patch-PCA sample to the last, the second actor's start included), the best of --repeats runs
of each, alternating, and their ratios, the commit ceiling in rows/s and how many GPUs at the
model-only rates of docs/throughput.md one driver could feed. Without --folder it makes photo-like
JPEGs (scripts/bench_index.py's mix of 12 MP and 2 MP); without --weights a checkpoint of
--model with random weights (speed does not depend on the values). The load average is printed
before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_index import cpu_name, make_photos, random_checkpoint, run_json

GPU_MODEL_ONLY = {"ViT-S/14 at 224 (H200)": 5213, "ViT-B/14 at 518 (H200)": 1060}  # docs/throughput.md, (b)


def part_index(folder: Path, out: Path, *, model: str, weights: str | None, size: int, batch: int, ray: bool) -> dict:
    from retrieval import Index
    from retrieval.engine import Cluster
    from retrieval.engine.commit import LOCAL_PCA_FILES

    overrides = {"backbone": {"name": model, "weights": weights}, "image": {"size": size}, "batch": batch}
    stamps: list[tuple[float, int]] = []
    with Index.open_or_create(out, overrides) as idx:
        start = time.perf_counter()
        summary = idx.update([folder], cluster=Cluster("local") if ray else None,
                             on_progress=lambda done, total: stamps.append((time.perf_counter(), done)))
        seconds = time.perf_counter() - start
        n = idx.count()
    # after the sample: a new index first embeds LOCAL_PCA_FILES files for its patch PCA, in a run
    # of its own; the rest starts when the sample is committed (on Ray: a second dataset and actor
    # start, counted here) and ends with the last commit
    sample = [s for s in stamps if s[1] <= LOCAL_PCA_FILES] or stamps[:1]
    (t0, n0), (t1, n1) = sample[-1], stamps[-1]
    return {"images": n, "added": summary.added, "seconds": seconds, "img_s": n / seconds,
            "after_sample_img_s": (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan"),
            "first_commit_s": stamps[0][0] - start}


def part_commit(out: Path, *, rows: int, batches: list[int]) -> dict:
    from retrieval import local
    from retrieval.engine.commit import Counts, StoredEmbedding, upserts
    from retrieval.engine.distributed import from_columns, to_columns
    from retrieval.store import Store
    from retrieval.types import ImageRef

    rng = np.random.default_rng(0)
    dim, k, n = 768, local.DEFAULT_DIM, local.DEFAULT_PATCHES

    def result(i: int) -> StoredEmbedding:
        desc = rng.normal(size=dim).astype(np.float32)
        feats = rng.normal(size=(n, k)).astype(np.float16).tobytes()
        coords = rng.integers(0, 16, size=(n, 2)).astype(np.uint16).tobytes()
        return StoredEmbedding(f"/photos/{i:08d}.jpg", f"{i:064x}", 4000, 3000, desc / np.linalg.norm(desc), (16, 16),
                        feats, coords)

    made = [result(i) for i in range(rows)]
    refs = {e.path: ImageRef(e.path, 3_000_000, 1_700_000_000_000_000_000) for e in made}
    got: dict[str, float] = {}
    for batch in batches:
        got.update(_commits(out, made, refs, batch, upserts, Counts, Store, from_columns, to_columns))
    row_bytes = dim * 4 + n * k * 2 + n * 4
    return {"rows": rows, "row_bytes": row_bytes, "rows_s": got}


def _commits(out: Path, made: list, refs: dict, batch: int, upserts, Counts, Store, from_columns,  # noqa: ANN001
             to_columns) -> dict[str, float]:
    """rows/s of the two ways, best of two rounds each, interleaved; `batch` rows per transaction."""
    rows = len(made)
    blocks = [to_columns([(0, e) for e in made[i:i + batch]], call=str(i)) for i in range(0, rows, batch)]
    got: dict[str, float] = {}
    rounds = [(f"apply(upserts), {batch} per transaction", False),
              (f"from_columns+apply(upserts), {batch} per transaction", True)] * 2
    for r, (label, through_columns) in enumerate(rounds):
        store = Store(out / f"{batch}-{r}.sqlite", create=True)
        counts = Counts()
        start = time.perf_counter()
        if through_columns:
            for block in blocks:
                for group in from_columns(block):
                    store.apply(upserts(group, refs, set(), counts))
        else:
            for i in range(0, rows, batch):
                store.apply(upserts(made[i:i + batch], refs, set(), counts))
        seconds = time.perf_counter() - start
        assert counts.added == rows and store.count("ok") == rows
        store.close()
        got[label] = max(got.get(label, 0.0), rows / seconds)
    return got


def run_part(args: argparse.Namespace, part: str, folder: Path, weights: str | None, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--folder", str(folder), "--out", str(tmp / part),
           "--model", args.model, "--size", str(args.size), "--batch", str(args.batch), "--rows", str(args.rows),
           "--commit-batches", args.commit_batches]
    if weights:
        cmd += ["--weights", weights]
    return run_json(cmd, f"part {part}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--weights")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--commit-batches", default="16,128", help="rows per transaction in the commit part")
    ap.add_argument("--parts", default="local,ray,commit")
    ap.add_argument("--repeats", type=int, default=2, help="runs of local and ray, alternating; the best counts")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.part in ("local", "ray"):
        print(json.dumps(part_index(args.folder, args.out, model=args.model, weights=args.weights, size=args.size,
                                    batch=args.batch, ray=args.part == "ray")))
        return
    if args.part == "commit":
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(part_commit(args.out, rows=args.rows,
                                     batches=[int(b) for b in args.commit_batches.split(",")])))
        return

    parts = args.parts.split(",")
    order = [p for _ in range(args.repeats) for p in parts if p != "commit"] + [p for p in parts if p == "commit"]
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as t:
        tmp = Path(t)
        folder = args.folder
        if folder is None and ("local" in parts or "ray" in parts):
            folder = tmp / "photos"
            make_photos(folder, args.images, distinct=min(args.images, 20))
        weights = args.weights
        if weights is None and args.model != "test_tiny":
            weights = random_checkpoint(args.model, tmp)
        load_before = os.getloadavg()
        res: dict[str, dict] = {}
        for p in order:  # local and ray alternate, best of --repeats each: the machine may be shared
            got = run_part(args, p, folder or tmp, weights, tmp)
            shutil.rmtree(tmp / p, ignore_errors=True)
            if p not in res or got.get("img_s", 0) > res[p].get("img_s", 0):
                res[p] = got
        load_after = os.getloadavg()

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}")
    weights_note = "random weights" if args.weights is None else args.weights
    print(f"model: {args.model} ({weights_note}), size {args.size}, batch {args.batch}")
    for p in ("local", "ray"):
        if p in res:
            r = res[p]
            print(f"{p:6s} {r['images']} images in {r['seconds']:.1f} s: {r['img_s']:.1f} img/s overall, "
                  f"{r['after_sample_img_s']:.1f} img/s after the patch-PCA sample (first commit after "
                  f"{r['first_commit_s']:.1f} s)")
    if "local" in res and "ray" in res:
        print(f"ray / local: {res['ray']['img_s'] / res['local']['img_s']:.2f} overall, "
              f"{res['ray']['after_sample_img_s'] / res['local']['after_sample_img_s']:.2f} after the sample")
    if "commit" in res:
        c = res["commit"]
        print(f"commit ceiling ({c['rows']} rows of {c['row_bytes'] / 1024:.1f} KB):")
        for label, rate in c["rows_s"].items():
            print(f"  {label}: {rate:,.0f} rows/s")
        for label, ceiling in c["rows_s"].items():
            if label.startswith("from_columns"):
                for name, rate in GPU_MODEL_ONLY.items():
                    print(f"  {label.split(', ')[1]}: one driver feeds {ceiling / rate:.1f} GPUs running {name} at "
                          f"its model-only {rate:,} img/s")


if __name__ == "__main__":
    main()
