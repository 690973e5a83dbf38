"""Files -> decoded pixels (worker processes) -> batched forward passes -> tokens."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
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
    sha256: str | None = None
    nbytes: int = 0


@dataclass(frozen=True)
class Batch:
    """A forward pass over equal-shaped inputs: items[j] = (decoded, scale index) <-> tokens row j."""

    items: tuple[tuple[Decoded, int], ...]
    tokens: TokenBatch


def default_workers() -> int:
    """Decoder processes: leave a core for the model."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def decode_file(job: tuple[int, str], *, sizes: tuple[int, ...], patch_size: int, mean: tuple[float, ...],
                std: tuple[float, ...], max_pixels: int) -> Decoded | Skipped:
    """Read a file once (hash and decode the same bytes) and prepare it at each size."""
    index, path = job
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return Skipped(index, path, f"cannot read the file ({e.strerror or e})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        im, original = images.decode(path, data=data, max_pixels=max_pixels, min_side_hint=max(sizes))
        arrays = tuple(images.prepare(im, size=s, patch_size=patch_size, mean=mean, std=std) for s in sizes)
    except BadImageError as e:
        return Skipped(index, path, e.reason, digest, len(data))
    return Decoded(index, path, arrays, original, digest, len(data))


def _ignore_sigint() -> None:  # pragma: no cover - runs in worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, between batches


def decoded_stream(paths: Sequence[str], *, backbone: Backbone, image: ImageConfig, scales: Sequence[float] = (1.0,),
                   workers: int | None = None, window: int = 64) -> Iterator[Decoded | Skipped]:
    """Decode `paths` in input order, `workers` processes ahead of the caller (0: inline).

    At most `window` files are in flight, so memory stays flat however many paths there are.
    """
    sizes = tuple(images.scaled_size(image.size, s, backbone.patch_size) for s in scales)
    job = partial(decode_file, sizes=sizes, patch_size=backbone.patch_size, mean=tuple(backbone.mean),
                  std=tuple(backbone.std), max_pixels=image.max_pixels)
    n_workers = default_workers() if workers is None else workers
    if n_workers <= 0 or len(paths) <= 1:
        for i, p in enumerate(paths):
            yield job((i, p))
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_ignore_sigint)
    pending: deque[Future[Decoded | Skipped]] = deque()
    try:
        todo = iter(enumerate(paths))
        for item in todo:
            pending.append(pool.submit(job, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(job, nxt))
            yield result
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
    return Batch(tuple(items), backbone.encode(x))


