"""A VectorIndex as bytes and back (vectors.npz): the FAISS index with its kind, fingerprint and
data version; `header` reads only those, `from_file` refuses a stale or damaged one."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from ..errors import ArtifactMismatchError
from .building import pq_bytes
from .exact_file import attach_exact
from .vector_index import VectorIndex


def to_bytes(index: VectorIndex) -> bytes:
    """The FAISS index plus its kind, fingerprint and data version (key "generation"), as one blob
    (write it atomically)."""
    import faiss

    cpu = index.faiss_index
    meta = json.dumps({"kind": index.kind, "dim": index.dim, "fingerprint": index.fingerprint,
                       "generation": index.data_version, "ntotal": index.ntotal, "token": index.token})
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"faiss": faiss.serialize_index(cpu), "meta": np.array(meta)}
    if index.row_ids is not None:
        arrays["row_ids"] = index.row_ids
    if index.exact_crc is not None:
        arrays["exact_crc"] = index.exact_crc
    np.savez(buf, **arrays)
    return buf.getvalue()


def header(f: BinaryIO, *, fingerprint: str, data_version: int, source: str = "vector index") -> dict[str, Any]:
    """Kind, dim, size of a saved index, reading only its small header member (not the vectors);
    ArtifactMismatchError if unreadable, stale or from another configuration."""
    try:
        with np.load(f) as z:
            meta: dict[str, Any] = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    if meta["fingerprint"] != fingerprint:
        raise ArtifactMismatchError(f"{source} was built with another configuration")
    if meta["generation"] != data_version:
        raise ArtifactMismatchError(
            f"{source} reflects store data version {meta['generation']}, the store is at {data_version}"
        )
    return meta


def from_file(f: BinaryIO, *, fingerprint: str, data_version: int, source: str = "vector index",
              exact_path: str | Path | None = None, verify: bool | None = None) -> VectorIndex:
    """Inverse of to_bytes over a seekable file; the header is checked before the vectors are read.
    An ivfpq index also maps its exact vectors from `exact_path` (checked: see `attach_exact`,
    which takes `verify`)."""
    import faiss

    meta = header(f, fingerprint=fingerprint, data_version=data_version, source=source)
    if meta["kind"] == "ivfpq" and exact_path is None:
        raise ValueError("an ivfpq index needs exact_path, the file that holds its exact vectors")
    f.seek(0)
    row_ids = crc = None
    try:
        with np.load(f) as z:
            raw = z["faiss"]
            if meta["kind"] == "ivfpq":
                row_ids = np.ascontiguousarray(z["row_ids"], np.int64)
                crc = np.ascontiguousarray(z["exact_crc"], np.uint32) if "exact_crc" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactMismatchError(f"{source} is unreadable ({e})") from e
    try:
        index = faiss.deserialize_index(raw)
    except RuntimeError as e:  # bytes that pass the zip's CRC yet are no FAISS index
        raise ArtifactMismatchError(f"{source} is damaged ({str(e).splitlines()[0] if str(e) else e!r})") from e
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"] or (row_ids is not None and len(row_ids) != index.ntotal):
        raise ArtifactMismatchError(f"{source} is damaged (size does not match its header)")
    code = int(cast(Any, index).pq.M) if meta["kind"] == "ivfpq" else 0
    if code and code != pq_bytes(index.d):  # its shortlist length is chosen for today's codes
        raise ArtifactMismatchError(f"{source} holds {code}-byte codes, this version builds {pq_bytes(index.d)}")
    out = VectorIndex(index, meta["kind"], int(meta["dim"]), fingerprint, int(meta["generation"]),
                      row_ids=row_ids, token=str(meta.get("token", "")), exact_crc=crc)
    return out if row_ids is None else attach_exact(out, exact_path, verify=verify)  # type: ignore[arg-type]


def from_bytes(data: bytes, *, fingerprint: str, data_version: int, source: str = "vector index",
               exact_path: str | Path | None = None, verify: bool | None = None) -> VectorIndex:
    """Inverse of to_bytes; ArtifactMismatchError if unreadable, stale or from another configuration."""
    return from_file(io.BytesIO(data), fingerprint=fingerprint, data_version=data_version, source=source,
                     exact_path=exact_path, verify=verify)
