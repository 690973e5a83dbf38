"""What `Index.info()` returns: an index's state as frozen, typed values, and `to_dict()`, the JSON
that `retrieve info --json` prints and `GET /api/info` answers (docs/api.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import whitening as wh
from ..config import EngineConfig
from ..errors import ArtifactMismatchError
from ..store import Store
from . import derived
from .plan import Exclusions


@dataclass(frozen=True)
class SkippedFile:
    """A file the index refused, and why (the reason ends with its fix)."""

    path: str
    reason: str


@dataclass(frozen=True)
class WhiteningInfo:
    """The PCA-whitening in force: learned from `fitted_on` descriptors, `dim_in` -> `dim_out`."""

    fitted_on: int
    dim_in: int
    dim_out: int


@dataclass(frozen=True)
class VectorIndexInfo:
    """The saved FAISS index: `fresh` when it matches the store (then its kind, size and dimension are
    known); a stale one is rebuilt on next use."""

    fresh: bool
    kind: str | None = None
    vectors: int | None = None
    dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if not self.fresh:
            return {"fresh": False}
        return {"fresh": True, "kind": self.kind, "vectors": self.vectors, "dim": self.dim}


@dataclass(frozen=True)
class IndexInfo:
    """An index's state (`Index.info()`): where it is, how many images it holds, what it refused
    and left out, the settings its descriptors were made with, and its files on disk."""

    index: str  # the index folder, absolute
    images: int  # indexed images (refused files not counted)
    skipped: tuple[SkippedFile, ...]
    excluded: Exclusions  # what later updates leave out (Index.remove, exclude)
    config: EngineConfig
    weights_id: str | None  # "sha256:..." of the weights the descriptors came from (None until first embedding)
    fingerprint: str  # of what the stored descriptors depend on: model, weights, dtype, size, pooling
    schema_version: int
    generation: int  # the store's change counter
    whitening: WhiteningInfo | None  # None: descriptors are only L2-normalised
    vector_index: VectorIndexInfo
    bytes_on_disk: int
    files: dict[str, int]  # file name -> bytes, for each file in the index folder

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, in the layout `retrieve info --json` prints."""
        w = self.whitening
        return {
            "index": self.index,
            "images": self.images,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "excluded": self.excluded.to_meta(),
            "config": self.config.to_dict(),
            "weights_id": self.weights_id,
            "fingerprint": self.fingerprint,
            "schema_version": self.schema_version,
            "generation": self.generation,
            "whitening": None if w is None else {"fitted_on": w.fitted_on, "dim_in": w.dim_in, "dim_out": w.dim_out},
            "vector_index": self.vector_index.to_dict(),
            "bytes_on_disk": self.bytes_on_disk,
            "files": dict(self.files),
        }


def gather(path: Path, store: Store, config: EngineConfig, *, whitening: wh.Whitening | None,
           exclusions: Exclusions, fingerprint: str) -> IndexInfo:
    """The state of the index in `path` (reads the vector index's header only, never its vectors)."""
    files = {f.name: f.stat().st_size for f in path.iterdir() if f.is_file()}
    vec = VectorIndexInfo(fresh=False)
    try:
        head = derived.read_vectors(store, config, path, header_only=True)
        vec = VectorIndexInfo(fresh=True, kind=head["kind"], vectors=head["ntotal"], dim=head["dim"])
    except ArtifactMismatchError:
        pass
    return IndexInfo(
        index=str(path.resolve()),
        images=store.count("ok"),
        skipped=tuple(SkippedFile(p, r) for p, r in store.skipped()),
        excluded=exclusions,
        config=config,
        weights_id=store.get_meta("weights_id"),
        fingerprint=fingerprint,
        schema_version=store.schema_version,
        generation=store.generation,
        whitening=None if whitening is None else WhiteningInfo(whitening.fitted_on, whitening.dim_in,
                                                               whitening.dim_out),
        vector_index=vec,
        bytes_on_disk=sum(files.values()),
        files=files,
    )
