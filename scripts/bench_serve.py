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

The clients are coroutines on one thread of this process, each with a keep-alive connection that
writes requests prepared once (the multipart body of each query file) and reads answers by their
Content-Length: 0.1-0.2 ms of CPU a request at 16 clients. httpx clients in 16 threads cost 6.7 ms of
CPU a request, a quarter of what a request costs the whole 2-core machine, taken from the server's
cores; real clients are on other machines. Each level also reports the CPU time a request cost,
read from /proc: the server's index thread, its native threads (PyTorch's OpenMP workers), its
other threads (the event loop: HTTP, the form, decoding, JSON; the census and picture threads) and
the clients.

The in-process loop and the levels take turns (`--rounds`), so that a machine whose speed drifts
(a shared or virtual one) slows both sides of each ratio alike; the ratios are printed over all
rounds and as each round's spread. Each round also times the index thread's own work in this
process with no server (embed a pass of uploads already read, then search each), one query alone
and at the batch size the top level made: the top level's throughput cannot pass what that work
allows, so the printed bound says whether a throughput goal is within reach on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import cpu_name, photos, random_checkpoint  # noqa: E402

from retrieval import Index, SearchOptions  # noqa: E402

SERVER = """
import sys, threading, uvicorn
from retrieval.serve import bind, create_app, server_config
embedded = [0, 0, 0]  # embedding calls, queries in them, the index thread's id (create_app's on_embed, on that thread)
def count(n):
    embedded[0] += 1
    embedded[1] += n
    embedded[2] = threading.get_native_id()
app = create_app(sys.argv[1], weights=sys.argv[2] or None, window=float(sys.argv[4]), on_embed=count)
def census():  # a line in: the counters, the index thread's id and the ids of Python's threads out
    for _ in sys.stdin:
        print(*embedded, ",".join(str(t.native_id) for t in threading.enumerate()), flush=True)
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


class Connection:
    """One client's keep-alive HTTP/1.1 connection: writes a whole prepared request, reads the
    answer by its Content-Length (every answer of this server's that the benchmark asks for has
    one) and fails on any status but 200."""

    def __init__(self, url: str) -> None:
        self.url = urlsplit(url)

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.url.hostname, self.url.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def ask(self, request: bytes) -> bytes:
        self.writer.write(request)
        status = await self.reader.readline()
        length = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {status!r}")
        body = await self.reader.readexactly(length)
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{status.decode().strip()}: {body[:200]!r}")
        return body


def get_request(host: str, target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def search_request(host: str, image: bytes, fields: dict[str, str]) -> bytes:
    """POST /api/search with `image` and `fields` as a multipart form, made once and sent many times."""
    sep = "bench-serve-7b1f0c"
    parts = [f'--{sep}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{sep}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{sep}--\r\n".encode()
    return (f"POST /api/search HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={sep}\r\n\r\n").encode() + body


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
    return asyncio.run(_mixed(url, queries, clients, total, drawers=drawers, probe=probe))


async def _mixed(url: str, queries: list[bytes], clients: int, total: int, *, drawers: int,
                 probe: bool) -> tuple[dict[str, list[float]], float]:
    lat: dict[str, list[float]] = {"search": [], "png": [], "health": []}
    counter = iter(range(total))
    done = asyncio.Event()
    host = urlsplit(url).netloc
    posts = [search_request(host, q, {"k": "10"}) for q in queries]

    async def timed(kind: str, c: Connection, request: bytes) -> bytes:
        t0 = time.perf_counter()
        body = await c.ask(request)
        lat[kind].append(time.perf_counter() - t0)
        return body

    async def client(draws: bool) -> None:
        async with Connection(url) as c:
            for i in counter:
                body = json.loads(await timed("search", c, posts[i % len(posts)]))
                if draws:
                    await timed("png", c, get_request(host, f"/api/queries/{body['query']}/matches/"
                                                             f"{body['hits'][0]['id']}?format=png&kind=heatmap"))

    async def prober() -> None:
        async with Connection(url) as c:
            while not done.is_set():
                await asyncio.sleep(0.02)
                await timed("health", c, get_request(host, "/api/health"))

    poller = asyncio.create_task(prober()) if probe else None
    t0 = time.perf_counter()
    await asyncio.gather(*(client(n < drawers) for n in range(clients)))
    wall = time.perf_counter() - t0
    done.set()
    if poller is not None:
        await poller
    return lat, wall


@dataclass(frozen=True)
class Census:
    """What the server says of itself (its SERVER script) and CPU seconds read from /proc: its
    embedding calls and the queries in them so far; CPU seconds of its index thread, its native
    threads (not Python's: PyTorch's OpenMP workers), its other Python threads; this process's."""

    calls: int = 0
    queries: int = 0
    index_s: float = 0.0
    native_s: float = 0.0
    python_s: float = 0.0
    clients_s: float = 0.0

    def __sub__(self, other: Census) -> Census:
        return Census(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def __add__(self, other: Census) -> Census:
        return Census(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def census(server: subprocess.Popen[str]) -> Census:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("\n")
    server.stdin.flush()
    calls, queries, index_tid, python_tids = server.stdout.readline().split()
    python = {int(t) for t in python_tids.split(",")}
    cpu = {"index": 0.0, "native": 0.0, "python": 0.0}
    for tid in os.listdir(f"/proc/{server.pid}/task"):
        try:  # the first field: nanoseconds on a CPU (the kernel's own count; /stat's are 10 ms ticks)
            ns = int(Path(f"/proc/{server.pid}/task/{tid}/schedstat").read_text().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
        kind = "index" if tid == index_tid else "python" if int(tid) in python else "native"
        cpu[kind] += ns / 1e9
    return Census(int(calls), int(queries), cpu["index"], cpu["native"], cpu["python"], time.process_time())


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
    """One concurrency level's requests over all rounds: latencies, wall time, what the server
    counted and the CPU seconds spent (Census, the differences summed), and each round's
    (latencies, wall time)."""

    clients: int
    lat: list[float]
    wall: float
    spent: Census
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
        done: dict[int, list[tuple[list[float], float, Census]]] = {c: [] for c in levels}
        work: list[tuple[int, float, float]] = []  # batch size, index thread's seconds a query alone, in that batch
        for r in range(args.rounds):
            rounds.append(in_process(idx, queries, max(8, args.requests // args.rounds), start=r))
            local += rounds[-1]
            for c in levels:
                before = census(server)
                lat, wall = load(url, data, c, max(args.requests // args.rounds, 2 * c))
                done[c].append((lat, wall, census(server) - before))
            spent = done[levels[-1]][-1][2]
            batch = max(1, round(spent.queries / max(spent.calls, 1)))
            work.append((batch, thread_work(idx, data, 1), thread_work(idx, data, batch)))
        rows = [Level(c, [x for lat, *_ in d for x in lat], sum(w for _, w, _ in d),
                      sum((k for *_, k in d), Census()), [(lat, w) for lat, w, _ in d])
                for c, d in done.items()]
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
        k = row.spent
        print(f"| {row.clients} | {pct(row.lat, 50) * 1000:.1f} | {pct(row.lat, 95) * 1000:.1f} | {row.qps:.2f} | "
              f"{k.queries / max(k.calls, 1):.1f} ({k.queries} in {k.calls}) |")
    print()
    print("CPU time a request cost, ms (from /proc; the machine has "
          f"{os.cpu_count()} cores, so all of it can reach {os.cpu_count()} x the wall time a request):")
    print()
    print("| clients | server: index thread | server: native threads (OpenMP) | server: other threads "
          "(event loop: HTTP, form, decoding, JSON) | clients (this process) | all | wall time a request |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        k, n = row.spent, len(row.lat) / 1000
        every = k.index_s + k.native_s + k.python_s + k.clients_s
        print(f"| {row.clients} | {k.index_s / n:.1f} | {k.native_s / n:.1f} | {k.python_s / n:.1f} | "
              f"{k.clients_s / n:.1f} | {every / n:.1f} | {row.wall / n:.1f} |")
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
        k, cores = top.spent, os.cpu_count() or 1
        other = (k.python_s + k.clients_s) / len(top.lat)
        shared = 1 / (batched + other / cores)
        print(f"with the rest of a request's work at {top.clients} clients ({other * 1000:.1f} ms of CPU: HTTP, form, "
              f"decoding, JSON, the clients) sharing the {cores} cores with it: {shared:.1f} queries/s, "
              f"{shared / one.qps:.2f}x")


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
