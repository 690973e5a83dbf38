"""An open index's derived artefacts held in memory: the whitening and the FAISS vectors
(engine/derived.py makes them), each checked again only when the store has changed, and the
vectors' copy on the GPU where searches run there.

Every search asks for both: a ViT-B whitening is megabytes of JSON in the store's meta table,
and a vector file is read and checked against the store's fingerprint, so neither is done per
query. The configuration is passed in on each call (evaluation changes an open index's DBA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import vectors as vecs
from .. import whitening as wh
from ..config import EngineConfig
from ..store import Store
from . import derived


class DerivedCache:
    """The derived artefacts of the index in `folder` over `store`. device: this run's choice of
    device (None: the index's setting), where an exact index is searched when it is CUDA."""

    def __init__(self, store: Store, folder: Path, *, device: str | None = None) -> None:
        self.store, self.folder, self.device = store, folder, device
        self._whitening: tuple[int, wh.Whitening | None] | None = None  # (store generation, whitening)
        self._vectors: vecs.VectorIndex | None = None
        self._vectors_for: tuple[int, EngineConfig] | None = None  # (store generation, config) it was checked at
        self._searcher: vecs.VectorIndex | None = None
        self._faiss_gpu: tuple[int, str] | None = None

    def whitening(self) -> wh.Whitening | None:
        """The whitening in force, decoded once per store generation."""
        gen = self.store.generation
        if self._whitening is None or self._whitening[0] != gen:
            self._whitening = (gen, derived.whitening(self.store))
        return self._whitening[1]

    def refresh(self, config: EngineConfig, *, refit: bool = False) -> tuple[bool, wh.Whitening | None]:
        """Refit the whitening if the data changed since it was fitted (or when asked), then make
        sure the FAISS index matches the store's data version: (whether it refitted, the whitening
        in force)."""
        done = derived.refit(self.store, config, force=refit)
        self.ensure_vectors(config, data=done.data)
        return done.fitted, self.whitening()

    def ensure_vectors(self, config: EngineConfig, *, data: tuple[np.ndarray, np.ndarray] | None = None) -> vecs.VectorIndex:
        """The FAISS index for the store's current data version (host memory): loaded, or rebuilt
        and saved. data: the store's (ids, raw descriptors) when the caller has just read them."""
        key = (self.store.generation, config)
        if data is None and self._vectors is not None and self._vectors_for == key:
            return self._vectors  # nothing was committed or set since it was checked
        self._vectors = derived.ensure_vectors(self.store, config, self.folder, cached=self._vectors, data=data)
        self._vectors_for = key
        return self._vectors

    def searcher(self, config: EngineConfig, *, placed: bool = True) -> vecs.VectorIndex:
        """`vectors`, searched on the GPU when there is one (exact indexes; IndexConfig.gpu).
        placed=False: the host's vectors unless they were placed already or the config asks for a
        GPU (one query from a process without a model: placing imports torch and copies them)."""
        vec = self.ensure_vectors(config)
        if not placed and self._searcher is None and not config.index.gpu:
            return vec
        if self._searcher is None or self._searcher.faiss_index is not vec.faiss_index:
            device = self.device or config.backbone.device
            where = device if device is not None and device.startswith("cuda") else "cuda"
            self._searcher = vecs.place(vec, use_gpu=config.index.gpu, device=where, faiss_gpus=self._faiss_gpus)
        return self._searcher

    def _faiss_gpus(self) -> tuple[int, str]:
        """How many GPUs FAISS's GPU code may use here, and why none: asked once per open index, in
        a child process (retrieval/faiss_gpu.py), and only when an IVF index meets a CUDA device."""
        if self._faiss_gpu is None:
            from .. import faiss_gpu

            p = faiss_gpu.probe()
            self._faiss_gpu = (p.gpus, p.reason)
        return self._faiss_gpu


__all__ = ["DerivedCache"]
