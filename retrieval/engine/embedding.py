"""The one way a file becomes descriptors: decode -> batched forward passes -> pooling.

Index updates, queries (several at once, or one cropped to a box), evaluation and the
correspondence pictures all come through `embed_files`, so a query is embedded exactly as it
would be indexed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .. import images, local, pooling
from ..arrays import l2n
from ..backbone import Backbone
from ..config import EngineConfig
from ..errors import BadImageError
from ..local import LocalPCA
from .forward import ForwardBatch, Decoded, Skipped, decoded_stream, forward_batches, jpeg_device


@dataclass(frozen=True)
class Embedding:
    """One file's result: raw global descriptor (D,) (averaged over scales, L2-normalised), the
    grid (h, w) of its first scale, and, from that scale, its local descriptors when the stream
    was given a patch PCA, else its patch tokens (h*w, d) (queries, pictures, and the sample a new
    index learns its patch PCA from)."""

    decoded: Decoded
    descriptor: np.ndarray
    patches: np.ndarray | None
    grid: tuple[int, int]
    features: local.LocalFeatures | None = None

    def tokens(self) -> np.ndarray:
        """The first scale's patch tokens (h*w, d): there when the stream was given no patch PCA."""
        assert self.patches is not None, "embedded with a patch PCA: only local descriptors were kept"
        return self.patches

    def picture(self) -> Image.Image:
        """The first scale's model input as an RGB picture (what the patch grid covers)."""
        return Image.fromarray(self.decoded.pixels[0].permute(1, 2, 0).cpu().numpy(), "RGB")


def complete(batch: ForwardBatch, partial: dict[int, dict[str, Any]], config: EngineConfig,
             pca: LocalPCA | None) -> list[Embedding]:
    """Pool one forward pass; return the files whose every scale is now done (see Embedding).
    `partial` holds the scales of files seen so far. Local descriptors are selected where the model
    ran: on a GPU in one batch, so only the kept features reach the host; on a CPU per image
    (numpy, faster there: cache-sized temporaries, docs/throughput.md)."""
    pcfg = config.pooling
    desc = pooling.global_descriptor(batch.tokens.cls, batch.tokens.patches, pooling=pcfg.pooling, p=pcfg.gem_p)
    desc_np = desc.cpu().numpy()
    first = [j for j, (_, s) in enumerate(batch.items) if s == 0]
    feats: dict[int, local.LocalFeatures] = {}
    if pca is not None and first and batch.tokens.patches.device.type != "cpu":
        feats = dict(zip(first, local.select_many(batch.tokens.patches[first], batch.tokens.grid, pca)))
    done = []
    for j, (d, s) in enumerate(batch.items):
        got = partial.setdefault(d.index, {"descs": [], "patches": None, "features": None})
        got["descs"].append(desc_np[j])
        if s == 0:
            if j in feats:
                got["features"] = feats[j]
            elif pca is not None:
                got["features"] = local.select(batch.tokens.patches[j].cpu().numpy(), batch.tokens.grid, pca)
            else:
                got["patches"] = batch.tokens.patches[j].cpu().numpy()
            got["grid"] = batch.tokens.grid
        if len(got["descs"]) == len(pcfg.scales):
            del partial[d.index]
            raw = l2n(np.mean(got["descs"], axis=0, keepdims=True))[0]
            done.append(Embedding(d, raw, got["patches"], got["grid"], got["features"]))
    return done


def embed_files(paths: Sequence[str], *, backbone: Backbone, config: EngineConfig, workers: int | None = None,
                pca: LocalPCA | None = None, box: images.Box | None = None) -> Iterator[list[Embedding | Skipped]]:
    """Descriptor results, grouped per forward pass (the unit committed to the store): with `pca`,
    each with its local descriptors, else with its patch tokens; `box` crops every file first (a
    query's box)."""
    stream = decoded_stream(paths, backbone=backbone, image=config.image, scales=config.pooling.scales,
                            workers=config.workers if workers is None else workers,
                            jpegs_on=jpeg_device(config.decode, backbone.device), jpegs_per_decode=config.batch,
                            box=box)
    yield from embed_stream(stream, backbone=backbone, config=config, pca=pca)


def embed_stream(stream: Iterator[Decoded | Skipped], *, backbone: Backbone, config: EngineConfig,
                 pca: LocalPCA | None = None) -> Iterator[list[Embedding | Skipped]]:
    """`embed_files` for files already decoded (this process's decoders, or a Ray decode task's):
    batched forward passes, pooled, grouped per forward pass."""
    partial: dict[int, dict[str, Any]] = {}
    group: list[Embedding | Skipped] = []
    for out in forward_batches(stream, backbone=backbone, batch=config.batch):
        if isinstance(out, Skipped):
            group.append(out)
            if len(group) < config.batch:
                continue
        else:
            group.extend(complete(out, partial, config, pca))
        if group:
            yield group
            group = []
    if group:
        yield group


def embed_queries(paths: Sequence[str], *, backbone: Backbone, config: EngineConfig,
                  box: images.Box | None = None) -> list[Embedding]:
    """Query files embedded together, in input order, with their patch tokens; BadImageError for
    the first that cannot be used. Decoded in this process's threads (no worker processes to
    start for a handful of files)."""
    done: dict[int, Embedding] = {}
    for group in embed_files(paths, backbone=backbone, config=config, workers=0, box=box):
        for item in group:
            if isinstance(item, Skipped):
                raise BadImageError(item.path, item.reason, fix=item.fix)
            done[item.decoded.index] = item
    return [done[i] for i in range(len(paths))]


__all__ = ["Embedding", "complete", "embed_files", "embed_queries", "embed_stream"]
