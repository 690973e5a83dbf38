#!/usr/bin/env python3
"""A query when most indexed files are gone (a drive not mounted), against the same query with every
file present, in one run.

    python scripts/bench_gone.py [--rows 20000] [--dim 384] [-k 10] [--repeats 3]

A store of `rows` synthetic rows (random `dim`-d descriptors) whose paths are empty files in a
temporary folder, and its exact vector index; no model. A random query is searched with every
file present (the baseline), then with the folder moved away and only the file that ranks last
put back: every result above it is gone, so the search has to look through the whole collection
to fill its list. Prints the median time of each, their ratio, how many searches and file looks
the gone case made, and the machine. Run it against an older checkout (PYTHONPATH) for the time
the search took before; docs/throughput.md has the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import cpu_name  # noqa: E402

from retrieval import SearchOptions  # noqa: E402
from retrieval import vectors as vindex  # noqa: E402
from retrieval.arrays import l2n  # noqa: E402
from retrieval.engine.search import Query, search  # noqa: E402
from retrieval.store import Store, Upsert  # noqa: E402


class Counted:
    """The vector index, counting the searches made through it."""

    def __init__(self, vec: vindex.VectorIndex) -> None:
        self.vec, self.ntotal, self.calls = vec, vec.ntotal, 0

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.vec.search(xq, k)


def make_store(folder: Path, rows: int, dim: int) -> tuple[Store, vindex.VectorIndex]:
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    store = Store(folder / "store.sqlite", create=True)
    for start in range(0, rows, 5000):
        batch = []
        for i in range(start, min(rows, start + 5000)):
            path = photos / f"IMG_{i:08d}.jpg"
            path.touch()
            batch.append(Upsert(str(path), 0, 0, f"{i:064x}", "ok", width=4000, height=3000,
                                descriptor=rng.standard_normal(dim).astype(np.float32)))
        store.apply(batch)
    ids, x = store.descriptors()
    return store, vindex.build(l2n(x), ids, kind="flat", fingerprint="bench", data_version=0)


def timed(q: Query, store: Store, vec: Counted, k: int, repeats: int) -> tuple[float, int, int]:
    """Median seconds of a search, and the searches and file looks the last one made."""
    looks = [0]
    real = os.path.isfile, os.path.exists

    def counted(p: str) -> bool:
        looks[0] += 1
        return real[0](p)

    os.path.isfile = os.path.exists = counted  # type: ignore[assignment]  # older code looks with exists
    try:
        times = []
        for _ in range(repeats):
            vec.calls, looks[0] = 0, 0
            t0 = time.perf_counter()
            search(q, store=store, vec=vec, whitening=None, options=SearchOptions(k=k))  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
    finally:
        os.path.isfile, os.path.exists = real
    return statistics.median(times), vec.calls, looks[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store, built = make_store(folder, args.rows, args.dim)
        vec = Counted(built)
        xq = l2n(np.random.default_rng(1).standard_normal((1, args.dim)).astype(np.float32))
        q = Query(raw=xq, patches=np.zeros((1, args.dim), np.float32), grid=(1, 1))
        present = timed(q, store, vec, args.k, args.repeats)
        last = int(built.search(xq, args.rows)[1][0][-1])
        keep = store.paths([last])[last]
        (folder / "photos").rename(folder / "away")
        (folder / "photos").mkdir()
        Path(keep).touch()
        gone = timed(q, store, vec, args.k, args.repeats)
        store.close()
    print(f"{args.rows} rows, {args.dim}-d, k {args.k}; {cpu_name()}, {os.cpu_count()} cores")
    print(f"all present        {present[0] * 1e3:10.1f} ms  ({present[1]} searches, {present[2]} file looks)")
    print(f"all but one gone   {gone[0] * 1e3:10.1f} ms  ({gone[1]} searches, {gone[2]} file looks)")
    print(f"gone / present = {gone[0] / present[0]:.1f}")


if __name__ == "__main__":
    main()
