"""Files -> decoded pixels (worker processes, or the GPU for plain JPEGs) -> batched forward passes -> tokens:
Decoded (one file's pixels at each scale), ForwardBatch (one forward pass over equal shapes)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from .. import images, jpeg_gpu
from ..backbone import Backbone
from ..config import DECODERS, DEFAULT_MAX_PIXELS, ImageConfig
from ..errors import BadImageError, UsageError
from ..types import Skipped, TokenBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One file, decoded and resized for every scale. pixels[i]: uint8 (3, H, W), on the CPU or,
    when decoded there, on the model's device."""

    index: int
    path: str
    pixels: tuple[torch.Tensor, ...]
    original_wh: tuple[int, int]  # the full picture's upright (width, height)
    sha256: str
    nbytes: int


@dataclass(frozen=True)
class ForwardBatch:
    """A forward pass over equal-shaped inputs: items[j] = (decoded, scale index) <-> tokens row j."""

    items: tuple[tuple[Decoded, int], ...]
    tokens: TokenBatch




def default_workers() -> int:
    """Decoder processes. On 2 cores or fewer none (0): decoding in this process's threads between
    forward passes measured faster than a worker process competing with the model's threads
    (scripts/bench_index.py, docs/throughput.md); with more cores, leave one for the model."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def jpeg_device(decode: str, device: torch.device) -> torch.device | None:
    """Where plain JPEGs are decoded: the model's CUDA device ("gpu", or "auto" when nvJPEG is
    there), or None for Pillow in the decoder processes ("cpu", or "auto" on a CPU)."""
    if decode not in DECODERS:
        raise UsageError(f"unknown decoder {decode!r}; valid: {', '.join(DECODERS)}")
    if decode == "cpu" or not jpeg_gpu.available(device):
        if decode == "gpu":
            log.warning("JPEG decoding on the GPU needs a CUDA device and torchvision's nvJPEG; decoding on the CPU")
        return None
    return device


def from_prepared(index: int, path: str, pf: images.PreparedFile) -> Decoded:
    """A file decoded by Pillow: its uint8 (H, W, 3) arrays as (3, H, W) tensor views."""
    return Decoded(index, path, tuple(torch.from_numpy(a).permute(2, 0, 1) for a in pf.pixels), pf.original_wh, pf.sha256,
                   pf.nbytes)


Read = Callable[[], "images.PreparedFile | images.EncodedJpeg"]


def _reads(paths: Sequence[str], read: Callable[[str], images.PreparedFile | images.EncodedJpeg], *, processes: int,
           threads: int, window: int, scope: Callable[[], AbstractContextManager[None]], ahead: bool = False,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> Generator[tuple[int, str, Read], None, None]:
    """(index, path, a call giving the file read and prepared), in input order: by `processes`
    spawned processes, or by `threads` reading `ahead` of the caller, each with at most `window`
    files in flight (memory stays flat); or by `threads` in bursts while the caller waits (see
    _bursts); or inline when both are 0.

    Every read runs under `scope` (images.pixel_limit): Pillow's settings are process-wide, so
    this function, not the decoding code, holds it: once around the reader threads, around each
    burst, or around each inline read; decoder processes set it for their lifetime
    (images.worker_init with `max_pixels`)."""
    if len(paths) <= 1 or (processes <= 0 and threads <= 0):
        for i, p in enumerate(paths):
            yield i, p, partial(_within, scope, read, p)
        return
    if threads > 0 and not ahead:
        yield from _bursts(paths, read, threads, scope)
        return
    pool: ThreadPoolExecutor | ProcessPoolExecutor
    if threads > 0:  # one pixel_limit scope for the whole stream
        pool, held = ThreadPoolExecutor(threads, images.DECODER_THREADS), scope()
    else:  # spawn: never fork a process holding torch threads
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=images.worker_init, initargs=(max_pixels,))
        held = nullcontext()
    pending: deque[tuple[int, str, Future[images.PreparedFile | images.EncodedJpeg]]] = deque()
    with held:  # left only once the readers have stopped
        try:
            todo = iter(enumerate(paths))
            for i, p in todo:
                pending.append((i, p, pool.submit(read, p)))
                if len(pending) >= window:
                    break
            while pending:
                i, p, future = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], nxt[1], pool.submit(read, nxt[1])))
                yield i, p, future.result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _within(scope: Callable[[], AbstractContextManager[None]],
            read: Callable[[str], images.PreparedFile | images.EncodedJpeg], path: str
            ) -> images.PreparedFile | images.EncodedJpeg:
    with scope():
        return read(path)


def _bursts(paths: Sequence[str], read: Callable[[str], images.PreparedFile | images.EncodedJpeg], threads: int,
            scope: Callable[[], AbstractContextManager[None]]) -> Iterator[tuple[int, str, Read]]:
    """`threads` threads read 4 x `threads` files at a time while the caller waits, then the
    caller takes them. Decoding thus uses every core but never competes with the model for them
    (measured faster than inline decoding on 2 cores, docs/throughput.md), and one
    pixel_limit scope covers each burst: Pillow's limit and the warnings hook are process-wide,
    so threads must not each enter and leave their own."""
    burst = 4 * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=images.DECODER_THREADS) as pool:
        for start in range(0, len(paths), burst):
            chunk = paths[start:start + burst]
            with scope():
                futures = [pool.submit(read, p) for p in chunk]
                wait(futures)
            for j, (p, future) in enumerate(zip(chunk, futures)):
                yield start + j, p, future.result


def decoded_stream(paths: Sequence[str], *, backbone: Backbone, image: ImageConfig, scales: Sequence[float] = (1.0,),
                   workers: int | None = None, window: int = 64, jpegs_on: torch.device | None = None,
                   jpegs_per_decode: int = 32, threads: bool | None = None, draft: bool = True,
                   box: images.Box | None = None) -> Iterator[Decoded | Skipped]:
    """Read and decode `paths`: by `workers` processes ahead of the caller, or (workers 0) by a
    thread per core in bursts between forward passes.

    When the model or the JPEG decoder is not on the CPU, reader threads work ahead of the
    caller instead of in bursts: the cores are free while the GPU works. One pixel_limit scope
    then spans the stream.

    With `jpegs_on`, plain JPEGs are decoded there in batches of `jpegs_per_decode` (see jpeg_device);
    everything else, and any file that device refuses, is decoded by Pillow. Results come in
    input order except that such JPEGs come when their batch is decoded. The readers are then
    threads (`workers` of them, or a thread per core): they mostly read and hash, which release
    the GIL, and a process would have to send each file's bytes back through a pipe. `threads`
    overrides the choice of threads or processes (benchmarks; False with workers 0: inline).
    `draft`: Pillow decodes JPEGs at a reduced DCT scale (fast, close); False: in full, exactly as
    the official transform (images.prepare_bytes). The GPU decoder always decodes in full.
    `box`: every file is cropped to it before resizing (a query's box; decoded by Pillow, in full).
    """
    jpegs_on = None if box is not None else jpegs_on
    sizes = tuple(images.scaled_size(image.size, s, backbone.patch_size) for s in scales)
    read = images.model_reader(image, scales=scales, patch_size=backbone.patch_size, keep_jpeg=jpegs_on is not None,
                               draft=draft, box=box)
    n = default_workers() if workers is None else workers
    in_threads = (jpegs_on is not None or n <= 0) if threads is None else threads
    pool_size = n if n > 0 else (os.cpu_count() or 1)
    ahead = jpegs_on is not None or backbone.device.type != "cpu"
    reads = _reads(paths, read, processes=0 if in_threads else n, threads=pool_size if in_threads else 0,
                   window=max(window, 4 * pool_size), scope=partial(images.pixel_limit, image.max_pixels),
                   ahead=ahead, max_pixels=image.max_pixels)
    flush = partial(_decode_jpegs, device=jpegs_on or backbone.device, sizes=sizes, patch_size=backbone.patch_size,
                    max_pixels=image.max_pixels, draft=draft)
    held: list[tuple[int, str, images.EncodedJpeg]] = []
    with closing(reads):  # an exception here (Ctrl-C) shuts the decoders down now, not at garbage collection
        for i, p, get in reads:
            try:
                got = get()
            except BadImageError as e:
                yield Skipped(i, p, e.reason, e.fix)
                continue
            if isinstance(got, images.PreparedFile):
                yield from_prepared(i, p, got)
                continue
            held.append((i, p, got))
            if len(held) >= jpegs_per_decode:
                yield from flush(held)
                held = []
    yield from flush(held)


def _decode_jpegs(held: list[tuple[int, str, images.EncodedJpeg]], *, device: torch.device, sizes: tuple[int, ...],
                  patch_size: int, max_pixels: int, draft: bool = True) -> Iterator[Decoded | Skipped]:
    """Decode `held` on `device` and resize there; files it refuses (or runs out of memory on)
    are decoded by Pillow. All are done before the first is yielded, so the full-size pictures
    are freed before the model runs again."""
    if not held:
        return
    pictures = jpeg_gpu.decode([e.data for _, _, e in held], device)
    out: list[Decoded | Skipped] = []
    for j, (i, p, e) in enumerate(held):
        x, pictures[j] = pictures[j], None
        resized: tuple[torch.Tensor, ...] | None = None
        if x is not None:
            x = jpeg_gpu.upright(x, e.orientation)
            if (x.shape[-1], x.shape[-2]) == e.original_wh:
                try:
                    resized = tuple(jpeg_gpu.resize(x, t) for t in e.targets)
                except torch.cuda.OutOfMemoryError:  # a 100 MP picture in float: Pillow has the memory
                    resized = None
            del x
        if resized is not None:
            out.append(Decoded(i, p, resized, e.original_wh, e.sha256, e.nbytes))
            continue
        log.debug("%s: decoded by Pillow (the decoder on %s refused it)", p, device)
        try:
            with images.pixel_limit(max_pixels):
                pf = images.prepare_bytes(p, e.data, sizes=sizes, patch_size=patch_size, max_pixels=max_pixels,
                                          digest=e.sha256, draft=draft)
        except BadImageError as err:
            out.append(Skipped(i, p, err.reason, err.fix))
            continue
        out.append(from_prepared(i, p, pf))
    yield from out


def forward_batches(stream: Iterator[Decoded | Skipped], *, backbone: Backbone, batch: int,
                    max_buffered: int | None = None) -> Iterator[ForwardBatch | Skipped]:
    """Group equal shapes into batches and run the model; skipped files pass straight through.

    A bucket runs when it holds `batch` inputs; when all buckets together hold
    `max_buffered` (default 4 x batch) the fullest one runs early, so rare shapes
    never pile up in memory.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    limit = max_buffered or 4 * batch
    buckets: dict[tuple[int, ...], list[tuple[Decoded, int]]] = {}
    buffered = 0
    try:
        for item in stream:
            if isinstance(item, Skipped):
                yield item
                continue
            for s, x in enumerate(item.pixels):
                key = tuple(x.shape)
                buckets.setdefault(key, []).append((item, s))
                buffered += 1
                if len(buckets[key]) >= batch:
                    buffered -= len(buckets[key])
                    yield _run(backbone, buckets.pop(key))
                elif buffered >= limit:
                    fullest = max(buckets, key=lambda k: len(buckets[k]))
                    buffered -= len(buckets[fullest])
                    yield _run(backbone, buckets.pop(fullest))
    finally:  # an exception in a forward pass (Ctrl-C) shuts the decoders down now (see decoded_stream)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    for key in list(buckets):
        yield _run(backbone, buckets.pop(key))


def normalize(x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float32, the same arithmetic as images.normalize (bit for bit on a CPU)."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def _run(backbone: Backbone, items: list[tuple[Decoded, int]]) -> ForwardBatch:
    xs = [d.pixels[s] for d, s in items]
    if all(t.device.type == "cpu" for t in xs):
        x = torch.stack(xs)
        if backbone.device.type == "cuda":  # page-locked: the copy runs asynchronously
            x = x.pin_memory()
        x = x.to(backbone.device, non_blocking=True)
    else:  # some were decoded on the GPU, others (PNGs, files it refused) by Pillow
        x = torch.stack([t.to(backbone.device) for t in xs])
    return ForwardBatch(tuple(items), backbone.encode(normalize(x, mean=backbone.mean, std=backbone.std)))
