#!/usr/bin/env python3
"""`retrieve serve` under load: 1, 4 and 16 concurrent clients against a real server on loopback,
next to `Index.search` called in a loop in-process, on the same index in the same run; then the
health probe's latency while 16 clients search (a 17th client polls /api/health), with and
without some of them fetching heat-map pictures of their top hit after each search.

    python scripts/bench_serve.py [--images 200] [--size 224] [--model dinov2_vits14] [--weights FILE]
                                  [--clients 1,4,16] [--requests 48] [--rounds 3] [--window 0]
                                  [--mixed 16] [--drawers 4]

The index holds synthetic JPEGs embedded with a random checkpoint in the official layout
(bench_index.random_checkpoint; speed does not depend on the values). Each client posts query
files (not indexed, 640x480 JPEGs) one after another; latency is per request as the client sees
it (upload, embed, search, JSON), throughput is requests over wall time, and the queries per
forward pass are the server's own count (create_app's on_embed, read before and after each level). The server runs in its
own process (uvicorn), as `retrieve serve` would, and nothing else runs meanwhile.

The in-process loop and the levels take turns (`--rounds`), so that a machine whose speed drifts
(a shared or virtual one) slows both sides of each ratio alike; the ratios are printed over all
rounds and as each round's spread. Each round also times the index thread's own work in this
process with no server (embed a pass of uploads already read, then search each), one query alone
and at the batch size the top level made: the top level's throughput cannot pass what that work
allows, so the printed bound says whether a throughput goal is within reach on this machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import cpu_name, photos, random_checkpoint  # noqa: E402

from retrieval import Index, SearchOptions  # noqa: E402

SERVER = """
import sys, threading, uvicorn
from retrieval.serve import bind, create_app, server_config
embedded = [0, 0]  # embedding calls, queries in them (create_app's on_embed, on the index thread)
def count(n):
    embedded[0] += 1
    embedded[1] += n
app = create_app(sys.argv[1], weights=sys.argv[2] or None, window=float(sys.argv[4]), on_embed=count)
def census():  # a line in: the two counters out
    for _ in sys.stdin:
        print(*embedded, flush=True)
threading.Thread(target=census, daemon=True).start()
uvicorn.Server(server_config(app)).run(sockets=bind("127.0.0.1", int(sys.argv[3])))  # as `retrieve serve` runs it
"""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_process(idx: Index, queries: list[Path], n: int, start: int = 0) -> list[float]:
    """`Index.search` of n query files in turn on an open index: latencies."""
    times = []
    for i in range(start, start + n):
        t0 = time.perf_counter()
        idx.search(queries[i % len(queries)], SearchOptions(k=10))
        times.append(time.perf_counter() - t0)
    return times


def thread_work(idx: Index, data: list[bytes], batch: int, repeat: int = 2) -> float:
    """Seconds per query of what the server's index thread does for a pass of `batch` uploads
    (embed them together, then search each), uploads already read, on this process's open index;
    the median of `repeat` passes. The server's throughput cannot pass batch / (this x batch)."""
    from retrieval.engine.serving import UploadReader, embed_explained

    reader = UploadReader.of(idx)
    uploads = [reader.read(data[i % len(data)]) for i in range(batch)]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for q in embed_explained(idx, uploads):
            idx.search_embedded(q.query, SearchOptions(k=10))
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def load(url: str, queries: list[bytes], clients: int, total: int) -> tuple[list[float], float]:
    """`clients` clients post `total` searches between them: latencies and wall time."""
    lat, wall = mixed(url, queries, clients, total, drawers=0, probe=False)
    return lat["search"], wall


def mixed(url: str, queries: list[bytes], clients: int, total: int, *, drawers: int,
          probe: bool = True) -> tuple[dict[str, list[float]], float]:
    """`clients` clients post `total` searches between them, the first `drawers` of them fetching
    the heat-map PNG of their top hit after each search, while (probe) one more client polls
    /api/health every 20 ms, as a load balancer's probe would, only faster; latencies by kind of
    request, and the searches' wall time."""
    lat: dict[str, list[float]] = {"search": [], "png": [], "health": []}
    lock = threading.Lock()
    counter = iter(range(total))
    done = threading.Event()

    def timed(kind: str, request: Callable[[], httpx.Response]) -> httpx.Response:
        t0 = time.perf_counter()
        r = request()
        dt = time.perf_counter() - t0
        r.raise_for_status()
        with lock:
            lat[kind].append(dt)
        return r

    def client(draws: bool) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                query = queries[i % len(queries)]
                body = timed("search", partial(c.post, "/api/search", data={"k": "10"},
                                               files={"image": ("q.jpg", query)})).json()
                if draws:
                    timed("png", partial(c.get, f"/api/queries/{body['query']}/matches/{body['hits'][0]['id']}",
                                         params={"format": "png", "kind": "heatmap"}))

    def prober() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while not done.wait(0.02):
                timed("health", partial(c.get, "/api/health"))

    threads = [threading.Thread(target=client, args=(n < drawers,)) for n in range(clients)]
    poller = threading.Thread(target=prober)
    if probe:
        poller.start()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    if probe:
        poller.join()
    return lat, wall


def embedded(server: subprocess.Popen[str]) -> tuple[int, int]:
    """The server's embedding calls and the queries they held so far (create_app's on_embed)."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("\n")
    server.stdin.flush()
    calls, queries = server.stdout.readline().split()
    return int(calls), int(queries)


def ms(xs: list[float], q: float) -> str:
    return f"{pct(xs, q) * 1000:.1f}" if xs else "-"


def print_mixed(runs: list[tuple[str, dict[str, list[float]]]], clients: int) -> None:
    print()
    print(f"| {clients} searching clients, a 17th polling /api/health | search p50 (ms) | search p95 (ms) | "
          f"health p50 (ms) | health p95 (ms) | health max (ms) | PNG p50 (ms) | PNG p95 (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, lat in runs:
        s, h, p = lat["search"], lat["health"], lat["png"]
        print(f"| {name} | {ms(s, 50)} | {ms(s, 95)} | {ms(h, 50)} | {ms(h, 95)} | "
              f"{max(h) * 1000 if h else 0:.1f} | {ms(p, 50)} | {ms(p, 95)} |")
    print()
    worst = max(pct(lat["health"], 95) for _, lat in runs if lat["health"])
    print(f"health p95 under {clients} searching clients: {worst * 1000:.1f} ms (goal <= 50 ms)")
    if len(runs) == 2:
        print(f"search p50 with pictures / without: "
              f"{statistics.median(runs[1][1]['search']) / statistics.median(runs[0][1]['search']):.2f}x")


class Level(NamedTuple):
    """One concurrency level's requests over all rounds: latencies, wall time, the server's
    embedding calls and the queries in them, and each round's (latencies, wall time)."""

    clients: int
    lat: list[float]
    wall: float
    calls: int
    queries: int
    rounds: list[tuple[list[float], float]]

    @property
    def qps(self) -> float:
        return len(self.lat) / self.wall


def start_server(ix: Path, weights: str, window: float) -> tuple[subprocess.Popen[str], str]:
    """The server in its own process, as `retrieve serve` runs it, once it answers /api/health."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ix), weights, str(port), str(window)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def measure(idx: Index, ix: Path, weights: str, queries: list[Path], levels: list[int], args: argparse.Namespace):
    """The in-process loop, each level, and the index thread's own work per query alone and at the
    top level's batch size, in turn, `args.rounds` times; then the mixed runs."""
    server, url = start_server(ix, weights, args.window)
    try:
        data = [q.read_bytes() for q in queries]
        load(url, data, 1, 4)  # warm-up
        local: list[float] = []
        rounds: list[list[float]] = []
        done: dict[int, list[tuple[list[float], float, int, int]]] = {c: [] for c in levels}
        work: list[tuple[int, float, float]] = []  # batch size, index thread's seconds a query alone, in that batch
        for r in range(args.rounds):
            rounds.append(in_process(idx, queries, max(8, args.requests // args.rounds), start=r))
            local += rounds[-1]
            for c in levels:
                before = embedded(server)
                lat, wall = load(url, data, c, max(args.requests // args.rounds, 2 * c))
                after = embedded(server)
                done[c].append((lat, wall, after[0] - before[0], after[1] - before[1]))
            *_, calls, held = done[levels[-1]][-1]
            batch = max(1, round(held / max(calls, 1)))
            work.append((batch, thread_work(idx, data, 1), thread_work(idx, data, batch)))
        rows = [Level(c, [x for lat, *_ in d for x in lat], sum(w for _, w, *_ in d), sum(k for *_, k, _ in d),
                      sum(q for *_, q in d), [(lat, w) for lat, w, *_ in d]) for c, d in done.items()]
        runs = []
        if args.mixed:
            n = max(args.requests, 2 * args.mixed)
            runs.append(("searches only", mixed(url, data, args.mixed, n, drawers=0)[0]))
            if args.drawers:
                runs.append((f"{args.drawers} of them also fetch a heat-map PNG",
                             mixed(url, data, args.mixed, n, drawers=args.drawers)[0]))
    finally:
        server.terminate()
        server.wait(timeout=60)
    ceiling = (max(b for b, _, _ in work), statistics.median(a for _, a, _ in work),
               statistics.median(t for _, _, t in work))
    return local, rows, rounds, runs, ceiling


def print_levels(local: list[float], rows: list[Level]) -> None:
    base = statistics.median(local)
    print()
    print("| clients | p50 latency (ms) | p95 latency (ms) | queries/s | queries per forward pass |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| in-process `Index.search` loop | {base * 1000:.1f} | {pct(local, 95) * 1000:.1f} | {1 / base:.2f} | 1 |")
    for row in rows:
        print(f"| {row.clients} | {pct(row.lat, 50) * 1000:.1f} | {pct(row.lat, 95) * 1000:.1f} | {row.qps:.2f} | "
              f"{row.queries / max(row.calls, 1):.1f} ({row.queries} in {row.calls}) |")
    print()


def spread(xs: list[float]) -> str:
    return f"rounds {min(xs):.2f}-{max(xs):.2f}x"


def print_ratios(rows: list[Level], rounds: list[list[float]], ceiling: tuple[int, float, float]) -> None:
    """The goals' two ratios over all rounds, with each round's spread, and the throughput the
    index thread's own work allows."""
    one = next((row for row in rows if row.clients == 1), None)
    base = statistics.median([x for r in rounds for x in r])
    if one is not None:
        each = [statistics.median(lat) / statistics.median(r) for (lat, _), r in zip(one.rounds, rounds)]
        print(f"single-client p50 / in-process search: {statistics.median(one.lat) / base:.2f}x "
              f"({spread(each)}; goal <= 1.15x)")
    top = rows[-1]
    if one is not None and top is not one:
        each = [len(t) / tw / (len(o) / ow) for (t, tw), (o, ow) in zip(top.rounds, one.rounds)]
        print(f"{top.clients}-client throughput / single-client: {top.qps / one.qps:.2f}x ({spread(each)}; goal >= 1.5x)")
        batch, alone, batched = ceiling
        print(f"the index thread's own work (embed, then search), in this process with no server: "
              f"{alone * 1000:.1f} ms a query one at a time, {batched * 1000:.1f} ms a query {batch} at a time; "
              f"so {top.clients} clients cannot pass {1 / batched:.1f} queries/s, "
              f"{1 / batched / one.qps:.2f}x the single client's throughput")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--window", type=float, default=0.0, help="server's batching window in seconds")
    ap.add_argument("--mixed", type=int, default=16, help="searching clients while /api/health is polled (0: skip)")
    ap.add_argument("--drawers", type=int, default=4, help="of those, clients that also fetch a heat-map PNG")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the in-process loop and the levels take turns this many times (a drifting machine "
                         "speed then slows them alike); each round's ratios are printed too")
    args = ap.parse_args()
    load_before = f"{os.getloadavg()[0]:.2f}"
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

        with Index.open(ix, weights=weights or None) as idx:
            idx.search(queries[0], SearchOptions(k=10))  # warm: model loaded, vectors read
            local, rows, rounds, runs, ceiling = measure(idx, ix, weights, queries, levels, args)

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; load average {load_before} before, "
          f"{os.getloadavg()[0]:.2f} after; {args.model} {args.size} px ({dtype}), {args.images} images "
          f"indexed in {index_s:.1f} s; server window {args.window * 1000:.0f} ms; {args.rounds} rounds")
    print_levels(local, rows)
    print_ratios(rows, rounds, ceiling)
    if runs:
        print_mixed(runs, args.mixed)


if __name__ == "__main__":
    main()
