#!/usr/bin/env python3
"""How one SQLite store behaves as it grows: bytes per image, write rate, the full read that
rebuilding the derived vectors does, and the random reads that re-ranking does.

    python scripts/bench_store.py [--rows 10000,100000] [--dim 768] [--local 224] [--batch 64]

Rows are synthetic but sized as the defaults store them: a `dim`-d float32 global descriptor,
`local` local descriptors of 64 fp16 values each plus their uint16 coordinates, a path and the
file's metadata. For each size, in a fresh store: rows/s committed in batches of `--batch` (one
transaction each, as `retrieve index` commits a forward batch), bytes on disk per row, rows/s of
`Store.descriptors()` (the scan that whitening and the vector index are rebuilt from), and the
median time of `Store.local()` for 100 random ids (what re-ranking 100 candidates reads). The
scan runs once warm (file in the page cache) and, where this process may drop the page cache
(root on Linux), once cold. docs/scale.md uses these numbers.
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

from retrieval.store import Store, Upsert  # noqa: E402

LOCAL_DIM = 64


def rows(start: int, n: int, dim: int, local: int, rng: np.random.Generator) -> list[Upsert]:
    out = []
    for i in range(start, start + n):
        d = rng.standard_normal(dim).astype(np.float32)
        feats = rng.standard_normal((local, LOCAL_DIM)).astype(np.float16).tobytes()
        coords = rng.integers(0, 64, (local, 2)).astype(np.uint16).tobytes()
        out.append(Upsert(f"/archive/{i // 1000:05d}/IMG_{i:08d}.jpg", 2_500_000 + i, 1_700_000_000_000_000_000 + i,
                          f"{i:064x}", "ok", width=4000, height=3000, descriptor=d, local_feats=feats,
                          local_coords=coords, grid=(32, 24)))
    return out


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def measure(folder: Path, n: int, dim: int, local: int, batch: int, cold: bool) -> dict[str, float | None]:
    rng = np.random.default_rng(0)
    path = folder / f"store-{n}.db"
    write = 0.0
    with Store(path, create=True) as store:
        for start in range(0, n, batch):
            chunk = rows(start, min(batch, n - start), dim, local, rng)  # made outside the timing
            t0 = time.perf_counter()
            store.apply(chunk)
            write += time.perf_counter() - t0
    size = path.stat().st_size + sum(p.stat().st_size for p in folder.glob(f"store-{n}.db-*"))
    out: dict[str, float | None] = {"rows": n, "write_rows_s": n / write, "bytes_per_row": size / n}
    for label in ("warm", "cold"):
        if label == "cold" and not (cold and drop_page_cache()):
            out["scan_cold_rows_s"] = None
            continue
        with Store(path) as store:
            t0 = time.perf_counter()
            ids, x = store.descriptors()
            out[f"scan_{label}_rows_s"] = len(ids) / (time.perf_counter() - t0)
            assert x.shape == (n, dim)
    with Store(path) as store:
        times = []
        for _ in range(30):
            pick = rng.choice(n, 100, replace=False) + 1
            t0 = time.perf_counter()
            got = store.local(pick)
            times.append(time.perf_counter() - t0)
            assert len(got) == 100
        out["local_100_ms"] = 1000 * statistics.median(times)
    path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000,100000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--local", type=int, default=224, help="local descriptors per image")
    ap.add_argument("--batch", type=int, default=64, help="rows per committed transaction")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold scan (it empties the whole machine's page cache)")
    ap.add_argument("--dir", type=Path, help="where the stores are written (default: a temporary folder)")
    args = ap.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; {args.dim}-d descriptors, "
          f"{args.local} x {LOCAL_DIM} local descriptors per row, batches of {args.batch}")
    print("| rows | bytes per row | write (rows/s) | descriptor scan, warm (rows/s) | scan, cold (rows/s) "
          "| 100 random local reads (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in (int(s) for s in args.rows.split(",")):
            r = measure(Path(tmp), n, args.dim, args.local, args.batch, not args.no_cold)
            cold = "n/a" if r["scan_cold_rows_s"] is None else f"{r['scan_cold_rows_s']:,.0f}"
            print(f"| {n:,} | {r['bytes_per_row']:,.0f} | {r['write_rows_s']:,.0f} | {r['scan_warm_rows_s']:,.0f} "
                  f"| {cold} | {r['local_100_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
