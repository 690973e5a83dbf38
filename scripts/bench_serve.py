#!/usr/bin/env python3
"""`retrieve serve` under load: 1, 4 and 16 concurrent clients against a real server on loopback,
next to `Index.search` called in a loop in-process, on the same index in the same run.

    python scripts/bench_serve.py [--images 200] [--size 224] [--model dinov2_vits14] [--weights FILE]
                                  [--clients 1,4,16] [--requests 48] [--window 0]

The index holds synthetic JPEGs embedded with a random checkpoint in the official layout
(bench_index.random_checkpoint; speed does not depend on the values). Each client posts query
files (not indexed, 640x480 JPEGs) one after another; latency is per request as the client sees
it (upload, embed, search, JSON), throughput is requests over wall time. The server runs in its
own process (uvicorn), as `retrieve serve` would, and nothing else runs meanwhile.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import photos, random_checkpoint  # noqa: E402

from retrieval import Index  # noqa: E402

SERVER = """
import sys, uvicorn
from retrieval.serve import bind, create_app, server_config
app = create_app(sys.argv[1], weights=sys.argv[2] or None, window=float(sys.argv[4]))
uvicorn.Server(server_config(app)).run(sockets=bind("127.0.0.1", int(sys.argv[3])))  # as `retrieve serve` runs it
"""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_process(ix: Path, weights: str, queries: list[Path], n: int) -> list[float]:
    times = []
    with Index.open(ix, weights=weights or None) as idx:
        idx.search(queries[0], k=10)  # warm: model loaded, vectors read
        for i in range(n):
            t0 = time.perf_counter()
            idx.search(queries[i % len(queries)], k=10)
            times.append(time.perf_counter() - t0)
    return times


def load(url: str, queries: list[bytes], clients: int, total: int) -> tuple[list[float], float]:
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post("/api/search", files={"image": ("q.jpg", queries[i % len(queries)])}, data={"k": "10"})
                dt = time.perf_counter() - t0
                r.raise_for_status()
                with lock:
                    lat.append(dt)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--window", type=float, default=0.0, help="server's batching window in seconds")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        (root / "queries").mkdir()
        photos(root / "photos", args.images)
        queries = photos(root / "queries", 8, seed=12345)
        if args.weights:
            weights = str(args.weights)
        else:  # test_tiny (for the script's own test) has random weights built in
            weights = "" if args.model == "test_tiny" else random_checkpoint(args.model, root)
        ix = root / "ix"
        t0 = time.perf_counter()
        with Index.open_or_create(ix, {"backbone": {"name": args.model, "weights": weights or None},
                                       "image": {"size": args.size}}) as idx:
            idx.update([root / "photos"])
            dtype = idx.config.backbone.dtype
        index_s = time.perf_counter() - t0

        local = in_process(ix, weights, queries, max(20, args.requests // 2))
        base = statistics.median(local)

        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(ix), weights, str(port), str(args.window)])
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            data = [q.read_bytes() for q in queries]
            load(url, data, 1, 4)  # warm-up
            rows = []
            for c in levels:
                lat, wall = load(url, data, c, max(args.requests, 2 * c))
                rows.append((c, lat, wall))
        finally:
            server.terminate()
            server.wait(timeout=60)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.model} {args.size} px ({dtype}), {args.images} images indexed in {index_s:.1f} s; "
          f"server window {args.window * 1000:.0f} ms")
    print()
    print("| clients | p50 latency (ms) | p95 latency (ms) | queries/s |")
    print("| --- | --- | --- | --- |")
    print(f"| in-process `Index.search` loop | {base * 1000:.1f} | {pct(local, 95) * 1000:.1f} | {1 / base:.2f} |")
    single = None
    for c, lat, wall in rows:
        qps = len(lat) / wall
        single = single or qps
        print(f"| {c} | {pct(lat, 50) * 1000:.1f} | {pct(lat, 95) * 1000:.1f} | {qps:.2f} |")
    print()
    one = next((statistics.median(lat) for c, lat, _ in rows if c == 1), None)
    if one is not None:
        print(f"single-client p50 / in-process search: {one / base:.2f}x (goal <= 1.15x)")
    top = rows[-1]
    if single and len(rows) > 1:
        print(f"{top[0]}-client throughput / single-client: {len(top[1]) / top[2] / single:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
