"""Files -> decoded pixels (worker processes) -> batched forward passes -> tokens."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .. import images
from ..backbone import Backbone
from ..config import ImageConfig
from ..errors import BadImageError
from ..types import TokenBatch


@dataclass(frozen=True)
class Decoded:
    """One file, decoded and prepared at every scale. arrays[i]: (3, H, W) float32."""

    index: int
    path: str
    arrays: tuple[np.ndarray, ...]
    size: tuple[int, int]  # original upright (width, height)
    sha256: str
    nbytes: int


@dataclass(frozen=True)
class Skipped:
    index: int
    path: str
    reason: str


@dataclass(frozen=True)
class Batch:
    """A forward pass over equal-shaped inputs: items[j] = (decoded, scale index) <-> tokens row j."""

    items: tuple[tuple[Decoded, int], ...]
    tokens: TokenBatch


def default_workers() -> int:
    """Decoder processes. On 2 cores or fewer, decoding inline (0) measured faster than a worker
    process competing with the model's threads (scripts/bench_index.py, docs/throughput.md);
    with more cores, leave one for the model."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def _result(index: int, path: str, get: Callable[[], images.PreparedFile]) -> Decoded | Skipped:
    """Run `get` (a decode, or a worker's future) and wrap its outcome."""
    try:
        pf = get()
    except BadImageError as e:
        return Skipped(index, path, e.reason)
    return Decoded(index, path, pf.arrays, pf.size, pf.sha256, pf.nbytes)


def _ignore_sigint() -> None:  # pragma: no cover - runs in worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, between batches


def decoded_stream(paths: Sequence[str], *, backbone: Backbone, image: ImageConfig, scales: Sequence[float] = (1.0,),
                   workers: int | None = None, window: int = 64) -> Iterator[Decoded | Skipped]:
    """Decode `paths` in input order, `workers` processes ahead of the caller (0: inline).

    At most `window` files are in flight, so memory stays flat however many paths there are.
    """
    sizes = tuple(images.scaled_size(image.size, s, backbone.patch_size) for s in scales)
    # a module-level function of a module without torch, so worker processes start light
    job = partial(images.prepare_file, sizes=sizes, patch_size=backbone.patch_size, mean=tuple(backbone.mean),
                  std=tuple(backbone.std), max_pixels=image.max_pixels)
    n_workers = default_workers() if workers is None else workers
    if n_workers <= 0 or len(paths) <= 1:
        for i, p in enumerate(paths):
            yield _result(i, p, partial(job, p))
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_ignore_sigint)
    pending: deque[tuple[int, str, Future[images.PreparedFile]]] = deque()
    try:
        todo = iter(enumerate(paths))
        for i, p in todo:
            pending.append((i, p, pool.submit(job, p)))
            if len(pending) >= window:
                break
        while pending:
            i, p, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(job, nxt[1])))
            yield _result(i, p, future.result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def forward_batches(stream: Iterator[Decoded | Skipped], *, backbone: Backbone, batch_size: int,
                    max_buffered: int | None = None) -> Iterator[Batch | Skipped]:
    """Group equal shapes into batches and run the model; skipped files pass straight through.

    A bucket runs when it holds `batch_size` inputs; when all buckets together hold
    `max_buffered` (default 4 x batch_size) the fullest one runs early, so rare shapes
    never pile up in memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = max_buffered or 4 * batch_size
    buckets: dict[tuple[int, ...], list[tuple[Decoded, int]]] = {}
    buffered = 0
    for item in stream:
        if isinstance(item, Skipped):
            yield item
            continue
        for s, x in enumerate(item.arrays):
            key = tuple(x.shape)
            buckets.setdefault(key, []).append((item, s))
            buffered += 1
            if len(buckets[key]) >= batch_size:
                buffered -= len(buckets[key])
                yield _run(backbone, buckets.pop(key))
            elif buffered >= limit:
                fullest = max(buckets, key=lambda k: len(buckets[k]))
                buffered -= len(buckets[fullest])
                yield _run(backbone, buckets.pop(fullest))
    for key in list(buckets):
        yield _run(backbone, buckets.pop(key))


def _run(backbone: Backbone, items: list[tuple[Decoded, int]]) -> Batch:
    x = torch.from_numpy(np.stack([d.arrays[s] for d, s in items]))
    if backbone.device.type == "cuda":  # page-locked, so the copy in encode() runs asynchronously
        x = x.pin_memory()
    return Batch(tuple(items), backbone.encode(x))


