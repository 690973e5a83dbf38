"""Indexing on Ray (issue 13): the same update, its files embedded by a Ray cluster.

The driver (this process) discovers, plans and commits exactly as without Ray (update.update ->
plan_update -> update.embed_and_commit -> commit.upserts, the patch-PCA sample included). Ray
Data does the embedding in between:

    paths (a dataset) -> decode_batch: read, hash, decode, resize (CPU tasks, near the files)
                      -> Embedder: an actor pool, one model per actor (a GPU each where there are
                         GPUs), forward passes grouped as without Ray, pooling, local descriptors
                      -> plain columns (numpy, bytes: what the store keeps) streamed back
                      -> commit.StoredEmbedding records, committed per forward batch by the driver

Workers load the model themselves, from the same place this machine would: the index's weights
file path (`--weights`, else the path stored in the index), else the official checkpoint in the
node's weights cache; each actor checks that its weights hash to the index's weights id before
it embeds anything. Image paths and a weights file are read at the same path on every node (a
shared file system). docs/scale.md says how to run it; docs/decisions.md why it is built so.

ray is imported inside functions only: the bare install, `retrieve info` and the single-process
path never import it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import images
from ..backbone import patch_size
from ..config import EngineConfig
from ..errors import ArtifactMismatchError, BadImageError, RetrievalError, UsageError
from ..local import LocalPCA
from ..types import Skipped, shown
from . import ray_reaper
from .commit import Embed, StoredEmbedding

if TYPE_CHECKING:
    from .weights_identity import Weights

log = logging.getLogger(__name__)

INSTALL = 'pip install "retrieval[ray]"'
CALLS_PER_BATCH = 4  # files per worker call: this many forward batches, so equal shapes can meet (as locally)
_RAISED = re.compile(r"retrieval\.errors\.\w+: (.+)$", re.M)  # a worker's error, in the text of Ray's
_HOST_PORT = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):\d{1,5}$")


def check_address(address: str) -> str:
    """`address` if it is one `--ray` takes: local, auto, HOST:PORT or ray://HOST:PORT."""
    if address in ("local", "auto") or _HOST_PORT.match(address):
        return address
    raise UsageError(f"--ray {address!r} is not a Ray address; give local (start Ray on this machine), auto (the "
                     f"cluster this machine is part of), HOST:PORT or ray://HOST:PORT (a cluster's head)")


def require_ray() -> None:
    """RetrievalError naming the pip command when Ray is not installed."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise RetrievalError(f"--ray needs Ray, which is not installed; install it with: {INSTALL}") from None


def ray_cluster(address: str) -> Cluster:
    """The `--ray ADDRESS` option, checked before any work: a usable address, Ray installed."""
    address = check_address(address)
    require_ray()
    return Cluster(address)


@dataclass(frozen=True)
class Cluster:
    """Where an update embeds when given one (see the module docstring).

    address: local (a Ray runtime on this machine, for this run) or anything ray.init(address=)
    takes. A process that already holds a Ray runtime (ray.init called before: a notebook, the
    tests) uses that one and leaves it running. embedder: the actor class (tests put in one that
    dies). init: more ray.init keywords for a runtime started here (local)."""

    address: str
    embedder: type[Embedder] | None = None
    init: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def session(self, config: EngineConfig, weights: Weights, *, device: str | None = None) -> Iterator[Embed]:
        """Connected to Ray for one update: `embed(paths, pca)` gives the results grouped per
        forward batch, by workers that load the model of `config` from `weights` (checked by the
        driver against the index's: weights_identity.checked) on `device` (None: the index's)."""
        import ray

        spec = WorkerSpec(config=config, weights=weights.file, weights_id=weights.id, hashes=weights.hashes,
                          device=device)
        started = connect(self.address, **self.init)
        # a runtime started here ends with this process, even killed; its agents too (ray_reaper.py)
        watcher = ray_reaper.start(os.getpid()) if started and self.address == "local" else None
        try:
            seen: set[str] = set()
            yield lambda paths, pca: embed_on_ray(paths, pca, spec=spec, embedder=self.embedder or Embedder, seen=seen)
        finally:
            if started:
                ray.shutdown()
            ray_reaper.stop(watcher)


def connect(address: str, **init: Any) -> bool:
    """Join (or, for local, start) a Ray runtime; True when this call started it (then the caller
    shuts it down). A runtime this process already holds is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's own INFO lines (a runtime started, a dataset's plan) would tear the caller's progress bar
    init.setdefault("logging_level", logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    try:
        if address == "local":
            # A runtime started here keeps Ray's default token authentication; Ray warns on every
            # start that it chose it, a line that would only tear the progress bar (not RAY_AUTH_MODE
            # set here: Ray reads its configuration at import, so the runtime would start without a token)
            token_setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
            level = token_setup.level
            token_setup.setLevel(logging.ERROR)
            try:
                ray.init(address="local", include_dashboard=False, **init)
            finally:
                token_setup.setLevel(level)
        else:
            ray.init(address=address, **init)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RetrievalError(f"cannot reach a Ray cluster at {address} ({first}); start one with `ray start --head` "
                             f"or pass --ray local") from None
    return True


@dataclass(frozen=True)
class WorkerSpec:
    """What an Embedder needs to build the index's model: its configuration, where its weights
    are (a file path; None: the official checkpoint in the node's cache), the weights id they
    must hash to, hashes already known by (path, size, mtime), and this run's device choice."""

    config: EngineConfig
    weights: str | None
    weights_id: str
    hashes: dict[str, str]
    device: str | None = None


def embed_on_ray(paths: Sequence[str], pca: LocalPCA | None, *, spec: WorkerSpec, embedder: type[Embedder],
                 seen: set[str]) -> Iterator[list[StoredEmbedding | Skipped]]:
    """Results for `paths` grouped per forward batch, in the order Ray finishes them. A result for
    a path already given in this run (`seen`: a retried task whose first output also arrived) is
    dropped, so no row is written twice; a path that never comes back is an error once the stream
    ends (what came back is committed by then; the same command continues)."""
    import pyarrow as pa  # Ray Data's own dependency
    import ray

    files_per_call = CALLS_PER_BATCH * spec.config.batch  # paths go as bytes: names need not be UTF-8
    embed_args, decode_args, actors = pool(ray)
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the caller shows progress; datasets keep a copy of the context
    try:
        # blocks of exactly files_per_call files, one per worker call (Ray Data would merge smaller ones
        # into one call, whose results then reach the driver only when all of it is done)
        ds: Any = ray.data.from_arrow([pa.table({"index": pa.array(range(i, i + len(chunk)), pa.int64()),
                                                 "path": pa.array([os.fsencode(p) for p in chunk], pa.binary())})
                                       for i in range(0, len(paths), files_per_call)
                                       for chunk in [paths[i:i + files_per_call]]])
        ds = ds.map_batches(decode_batch, batch_size=files_per_call, batch_format="numpy",
                            fn_kwargs={"config": spec.config}, **decode_args)
        ds = ds.map_batches(embedder, batch_size=files_per_call, batch_format="numpy",
                            fn_constructor_kwargs={"spec": spec, "pca": pca},
                            compute=ray.data.ActorPoolStrategy(size=actors), **embed_args)
    finally:
        ctx.enable_progress_bars = bars
    left = set(paths)
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for group in from_columns(block):
                fresh = [r for r in group if r.path not in seen]
                if len(fresh) < len(group):
                    log.debug("dropped %d results a retried Ray task gave twice", len(group) - len(fresh))
                seen.update(r.path for r in fresh)
                left.difference_update(r.path for r in fresh)
                if fresh:
                    yield fresh
    except RetrievalError:
        raise
    except Exception as e:
        raise _as_retrieval_error(e) from e
    if left:
        raise RetrievalError(f"{len(left)} files did not come back from the Ray workers (e.g. {shown(min(left))}); "
                             f"what came back is saved: run the same command again to embed the rest")


def pool(ray: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(embedder's resources, decoder's resources, number of embedding actors) for the cluster.

    With GPUs: an actor per GPU (one GPU and one CPU each); decoding runs as separate one-CPU
    tasks on the other cores. Without: an actor per node of the smallest node's cores, its torch
    threads on all of them, and decoding fused into the actor (Ray Data fuses a task stage into
    the next when their resources are equal): on CPUs the cores are the model's, and a decoded
    picture then never crosses a process."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus > 0:
        return {"num_gpus": 1, "num_cpus": 1}, {"num_cpus": 1}, gpus
    cores = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    per = int(min(cores)) if cores else 1
    return {"num_cpus": per}, {"num_cpus": per}, max(1, int(res.get("CPU", 1)) // per)


def _as_retrieval_error(e: BaseException) -> RetrievalError:
    """The RetrievalError a worker raised (Ray wraps it: as the cause of a failed task, or as
    text when an actor died in its constructor), else one line naming Ray's error."""
    seen: set[int] = set()
    stack: list[Any] = [e]
    said: list[str] = []
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, RetrievalError):
            return x
        said += _RAISED.findall(str(x))
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])
    if said:
        return RetrievalError(said[-1].strip())
    text = str(e).strip().splitlines()
    return RetrievalError(f"the Ray run failed ({type(e).__name__}: {text[-1] if text else ''}); what came back is "
                          f"saved: run the same command again to continue")


# --- on the workers ---------------------------------------------------------------------------
def decode_batch(batch: dict[str, np.ndarray], *, config: EngineConfig) -> dict[str, np.ndarray]:
    """Ray Data stage: read, hash and decode a batch of files for the model (images.model_reader,
    as the single-process decoders do), by a thread per core this task holds, under one
    pixel_limit scope. Out: the files' uint8 pixels per scale as bytes with their shapes, or the
    reason a file was refused."""
    read = images.model_reader(config.image, scales=config.pooling.scales, patch_size=patch_size(config.backbone.name))
    paths = [os.fsdecode(p) for p in batch["path"]]

    def one(path: str) -> images.PreparedFile | BadImageError:
        try:
            got = read(path)
        except BadImageError as e:
            return e
        assert isinstance(got, images.PreparedFile)
        return got

    with images.pixel_limit(config.image.max_pixels), ThreadPoolExecutor(_cores()) as threads:
        got = list(threads.map(one, paths))
    bad = [g if isinstance(g, BadImageError) else None for g in got]
    good = [g if isinstance(g, images.PreparedFile) else None for g in got]
    out: dict[str, Any] = {"index": batch["index"], "path": batch["path"],
                           "reason": np.array([os.fsencode(b.reason) if b else b"" for b in bad], dtype=object),
                           "fix": np.array([b.fix if b else "" for b in bad], dtype=object)}
    out["sha256"] = np.array([g.sha256 if g else "" for g in good], dtype=object)
    out["nbytes"] = np.array([g.nbytes if g else 0 for g in good], np.int64)
    out["width"] = np.array([g.original_wh[0] if g else 0 for g in good], np.int64)
    out["height"] = np.array([g.original_wh[1] if g else 0 for g in good], np.int64)
    for s in range(len(config.pooling.scales)):
        out[f"px{s}"] = np.array([g.pixels[s].tobytes() if g else b"" for g in good], dtype=object)
        out[f"h{s}"] = np.array([g.pixels[s].shape[0] if g else 0 for g in good], np.int64)
        out[f"w{s}"] = np.array([g.pixels[s].shape[1] if g else 0 for g in good], np.int64)
    return out


def _cores() -> int:
    """CPUs Ray gave this task or actor (at least 1)."""
    import ray

    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))


class Embedder:
    """Ray Data actor: the index's model, loaded once; each call embeds a batch of decoded files
    exactly as the single-process path does (embedding.embed_stream: forward passes over equal
    shapes, pooling, local descriptors with `pca`, else the patch tokens of the PCA sample) and
    returns the light records (commit.stored) as columns."""

    def __init__(self, *, spec: WorkerSpec, pca: LocalPCA | None) -> None:
        import torch

        from ..backbone import load_backbone

        cfg = spec.config.backbone
        backbone = load_backbone(cfg.name, weights=spec.weights, device=spec.device or cfg.device, dtype=cfg.dtype,
                                 hash_cache=dict(spec.hashes))
        if backbone.weights_id != spec.weights_id:
            raise ArtifactMismatchError(
                f"weights {spec.weights or 'official ' + cfg.name} on Ray node {socket.gethostname()} "
                f"({backbone.weights_id[:20]}...) differ from the index's ({spec.weights_id[:20]}...); put the "
                f"index's weights file at the same path on every node (docs/scale.md)")
        if backbone.device.type == "cpu":
            torch.set_num_threads(_cores())
        self.backbone, self.config, self.pca = backbone, spec.config, pca

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .commit import stored
        from .embedding import embed_stream

        rows: list[tuple[int, StoredEmbedding | Skipped]] = []
        for g, group in enumerate(embed_stream(iter(_decoded(batch, len(self.config.pooling.scales))),
                                               backbone=self.backbone, config=self.config, pca=self.pca)):
            rows.extend((g, stored(e)) for e in group)
        return to_columns(rows, call=uuid.uuid4().hex)


def _decoded(batch: dict[str, np.ndarray], scales: int) -> Iterator[Any]:
    """decode_batch's columns back into the Decoded files (and Skipped ones) embed_stream takes."""
    from .forward import from_prepared

    for j, name in enumerate(batch["path"]):
        i, path, reason = int(batch["index"][j]), os.fsdecode(name), os.fsdecode(batch["reason"][j])
        if reason:
            yield Skipped(i, path, reason, str(batch["fix"][j]) or None)
            continue
        pixels = tuple(np.frombuffer(batch[f"px{s}"][j], np.uint8).reshape(int(batch[f"h{s}"][j]),
                                                                           int(batch[f"w{s}"][j]), 3).copy()
                       for s in range(scales))
        pf = images.PreparedFile(pixels, (int(batch["width"][j]), int(batch["height"][j])), str(batch["sha256"][j]),
                                 int(batch["nbytes"][j]))
        yield from_prepared(i, path, pf)


# --- results as columns -----------------------------------------------------------------------
def to_columns(rows: Sequence[tuple[int, StoredEmbedding | Skipped]], *, call: str) -> dict[str, np.ndarray]:
    """(forward-batch number, result) rows of one worker call as plain columns: strings, integers
    and bytes (paths and reasons as the file system's bytes, since Arrow strings must be UTF-8;
    descriptor float32, local descriptors as stored, patch tokens float32 or empty)."""
    def col(values: list[Any], dtype: Any = object) -> np.ndarray:
        return np.array(values, dtype=dtype)

    ok = list(rows)
    return {
        "group": col([f"{call}:{g}" for g, _ in ok]),
        "path": col([os.fsencode(r.path) for _, r in ok]),
        "reason": col([os.fsencode(r.reason) if isinstance(r, Skipped) else b"" for _, r in ok]),
        "fix": col([r.fix or "" if isinstance(r, Skipped) else "" for _, r in ok]),
        "sha256": col(["" if isinstance(r, Skipped) else r.sha256 for _, r in ok]),
        "width": col([0 if isinstance(r, Skipped) else r.width for _, r in ok], np.int64),
        "height": col([0 if isinstance(r, Skipped) else r.height for _, r in ok], np.int64),
        "grid_h": col([0 if isinstance(r, Skipped) else r.grid[0] for _, r in ok], np.int64),
        "grid_w": col([0 if isinstance(r, Skipped) else r.grid[1] for _, r in ok], np.int64),
        "descriptor": col([b"" if isinstance(r, Skipped) else np.asarray(r.descriptor, np.float32).tobytes()
                           for _, r in ok]),
        "has_local": col([not isinstance(r, Skipped) and r.local_feats is not None for _, r in ok], bool),
        "local_feats": col([b"" if isinstance(r, Skipped) or r.local_feats is None else r.local_feats for _, r in ok]),
        "local_coords": col([b"" if isinstance(r, Skipped) or r.local_coords is None else r.local_coords
                             for _, r in ok]),
        "patches": col([b"" if isinstance(r, Skipped) or r.patches is None
                        else np.asarray(r.patches, np.float32).tobytes() for _, r in ok]),
    }


def from_columns(block: dict[str, np.ndarray]) -> list[list[StoredEmbedding | Skipped]]:
    """Inverse of to_columns: the results of a block, grouped per forward batch (first-seen order)."""
    groups: dict[str, list[StoredEmbedding | Skipped]] = {}
    for j, name in enumerate(block["path"]):
        path, reason = os.fsdecode(bytes(name)), os.fsdecode(bytes(block["reason"][j]))
        item: StoredEmbedding | Skipped
        if reason:
            item = Skipped(-1, path, reason, str(block["fix"][j]) or None)
        else:
            grid = (int(block["grid_h"][j]), int(block["grid_w"][j]))
            patches = bytes(block["patches"][j])
            item = StoredEmbedding(path, str(block["sha256"][j]), int(block["width"][j]), int(block["height"][j]),
                            np.frombuffer(bytes(block["descriptor"][j]), np.float32).copy(), grid,
                            bytes(block["local_feats"][j]) if block["has_local"][j] else None,
                            bytes(block["local_coords"][j]) if block["has_local"][j] else None,
                            np.frombuffer(patches, np.float32).reshape(grid[0] * grid[1], -1).copy() if patches
                            else None)
        groups.setdefault(str(block["group"][j]), []).append(item)
    return list(groups.values())


__all__ = ["INSTALL", "Cluster", "Embedder", "WorkerSpec", "check_address", "connect", "decode_batch",
           "embed_on_ray", "from_columns", "pool", "ray_cluster", "require_ray", "to_columns"]
