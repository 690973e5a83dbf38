"""Copies of the same photo inside an index (`retrieve dedupe`), never an N x N matrix.

    exact    same bytes: the stored sha256, one SQL query
    near     a verified copy: a candidate pair from a k-nearest-neighbour graph of the indexed
             vectors (`batch` images at a time: memory batch x k, whatever the index size; from
             vectors.GRAPH_MIN images on searched in a temporary IVF of constant-size lists, so
             time grows about linearly with n) whose stored patch descriptors agree under one
             similarity transform (the verification `--rerank` uses, also tried mirrored) over at
             least `coverage` of the smaller image's patches: a re-encoded, resized, cropped or
             flipped copy keeps most of them where they were, another shot of the same scene
             moves them (parallax)
    similar  verified, but over less than `coverage`: another shot of the same scene, or a heavy
             edit; only reported when asked, apart from the copies

Groups are the connected components of the exact and near links (similar: of every verified
link); the member to keep comes first (largest pixel count, then oldest, then path). Read-only:
nothing here deletes or moves a file. docs/dedupe.md justifies the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from .. import rerank as rr
from .. import whitening as wh
from ..config import DedupeOptions
from ..errors import RetrievalError
from ..local import LocalFeatures, LocalPCA
from ..store import ImageFacts, Store
from ..types import Skipped
from .index import Index
from .reranking import stored_local
from ..vectors import GRAPH_MIN, GraphIndex, VectorIndex, graph_index

KINDS = ("exact", "near", "similar")
LocalOf = Callable[[Sequence[int], LocalPCA], dict[int, LocalFeatures]]


@dataclass(frozen=True)
class Link:
    """Two indexed images and why they are linked: kind (KINDS), global cosine (None for exact
    copies, which are never searched), verified inliers, their share of the smaller image's
    patches, and whether the second is a mirror image of the first."""

    a: int
    b: int
    kind: str
    score: float | None = None
    inliers: int = 0
    coverage: float = 0.0
    mirrored: bool = False


@dataclass(frozen=True)
class Group:
    """Copies of one photo: members ordered by `keep_order` (the suggested keeper first) and the
    links that join them; kind "exact" when every link is."""

    kind: str
    members: tuple[ImageFacts, ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown group kind {self.kind!r}; valid: {', '.join(KINDS)}")
        ids = [m.id for m in self.members]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError("a group holds two or more distinct images")
        if any(x.a not in ids or x.b not in ids for x in self.links):
            raise ValueError("a group's links join its own members")
        if list(self.members) != sorted(self.members, key=keep_order):
            raise ValueError("members are not in keep order")

    @property
    def keep(self) -> ImageFacts:
        return self.members[0]


@dataclass(frozen=True)
class DedupeReport:
    """groups: exact and near first (largest first), then similar ones when asked. images: how many
    were looked at; candidates: kNN pairs at or above the threshold that were verified;
    unverifiable: candidates without stored patch descriptors (their index has no patch PCA yet);
    batches: rows of each kNN search, in order (the memory bound, checked by tests)."""

    groups: tuple[Group, ...]
    images: int
    candidates: int = 0
    unverifiable: int = 0
    batches: tuple[int, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        """What `retrieve dedupe --json` prints and GET /api/duplicates answers: the counts, and
        each group's kind, keeper and members (id, path, pixels, mtime, hash) and links by path."""
        groups = []
        for g in self.groups:
            where = {m.id: m.path for m in g.members}
            groups.append({"kind": g.kind, "keep": g.keep.path, "members": [
                {"id": m.id, "path": m.path, "width": m.width, "height": m.height, "mtime_ns": m.mtime_ns,
                 "sha256": m.sha256} for m in g.members], "links": [
                {"a": where[x.a], "b": where[x.b], "kind": x.kind, "score": x.score, "inliers": x.inliers,
                 "coverage": round(x.coverage, 4), "mirrored": x.mirrored} for x in g.links]})
        return {"images": self.images, "candidates": self.candidates, "unverifiable": self.unverifiable,
                "groups": groups}


def keep_order(m: ImageFacts) -> tuple[int, int, str]:
    """Which copy to keep first: the largest pixel count, then the oldest file, then the path."""
    return -((m.width or 0) * (m.height or 0)), m.mtime_ns, m.path


class KnnBatch(NamedTuple):
    """One kNN search's candidate pairs: rows searched, then (a ids, b ids, cosines), a < b."""

    rows: int
    a: np.ndarray
    b: np.ndarray
    scores: np.ndarray


def knn_pairs(vec: VectorIndex, *, k: int, threshold: float, batch: int,
              graph_min: int = GRAPH_MIN) -> Iterator[KnnBatch]:
    """The kNN graph in batches: for each `batch` indexed vectors, their k nearest others with
    cosine >= threshold (a pair comes once per side that finds it; `duplicates` keeps one).
    Holds batch x (k + 1) results at a time, never n x n. From `graph_min` vectors on, the
    neighbours come from a temporary IVF over a copy of the vectors (vectors.graph_index: a
    constant number of them scanned per image, whatever n is), dropped when the graph is done;
    below, from the index's own search."""
    ids = vec.ids()
    want = min(k + 1, vec.ntotal)  # the image itself comes back too
    graph: VectorIndex | GraphIndex = vec if len(ids) < graph_min else graph_index(vec)
    for start in range(0, len(ids), batch):
        xq_ids = ids[start: start + batch]
        scores, found = graph.search(vec.vectors_of(xq_ids), want)
        a = np.repeat(xq_ids, found.shape[1])
        b, s = found.reshape(-1), scores.reshape(-1)
        keep = (b >= 0) & (a != b) & (s >= threshold)
        yield KnnBatch(len(xq_ids), np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep]), s[keep])


def check_pair(fa: LocalFeatures, fb: LocalFeatures) -> tuple[int, float, bool]:
    """(inliers, their share of the smaller patch set, mirrored) of the better of the two
    verifications, b as it is and b mirrored left to right (the same patch matches)."""
    a, b = fa.feats.astype(np.float32), fb.feats.astype(np.float32)
    m = rr.mutual_nn(a, b)
    src, dst = np.asarray(fa.xy)[m.ia], np.asarray(fb.xy)[m.ib]
    flipped = np.stack([fb.grid[1] - dst[:, 0], dst[:, 1]], axis=1) if len(dst) else dst
    best = max((int(rr.ransac(src, d)[1].sum()), mirrored) for mirrored, d in ((False, dst), (True, flipped)))
    smaller = max(1, min(len(a), len(b)))
    return best[0], best[0] / smaller, best[1]


def classify(inliers: int, coverage: float, options: DedupeOptions) -> str | None:
    """near, similar or None (not verified) for a checked pair."""
    if inliers < rr.MIN_INLIERS:
        return None
    return "near" if coverage >= options.coverage else "similar"


def duplicates(store: Store, vec: VectorIndex | None, pca: LocalPCA | None, local_of: LocalOf,
               options: DedupeOptions = DedupeOptions()) -> DedupeReport:
    """Exact, near (and with options.similar, similar) groups of the indexed images. `local_of`
    gives stored patch descriptors of ids (engine/search.py's candidates); with no patch PCA yet
    (`pca` None) only exact copies are found, and `vec` is only read without options.exact_only."""
    links = [Link(ids[0], other, "exact") for ids in store.ids_by_hash().values() for other in ids[1:]]
    same = _UnionFind()
    for x in links:
        same.join(x.a, x.b)
    seen: set[tuple[int, int]] = set()
    candidates = unverifiable = 0
    batches = []
    pairs = () if vec is None or options.exact_only else knn_pairs(vec, k=options.k, threshold=options.threshold,
                                                                    batch=options.batch)
    for kb in pairs:
        batches.append(kb.rows)
        todo = []
        for i, j, c in zip(kb.a.tolist(), kb.b.tolist(), kb.scores.tolist()):
            if (i, j) not in seen and same.find(i) != same.find(j):  # same bytes: exact already
                seen.add((i, j))
                todo.append((i, j, c))
        candidates += len(todo)
        feats = local_of(sorted({x for i, j, _ in todo for x in (i, j)}), pca) if todo and pca is not None else {}
        for i, j, c in todo:
            if i not in feats or j not in feats:
                unverifiable += 1
                continue
            n, cov, mirrored = check_pair(feats[i], feats[j])
            kind = classify(n, cov, options)
            if kind is not None:
                links.append(Link(i, j, kind, c, n, cov, mirrored))
    groups = _groups(store, [x for x in links if x.kind != "similar"], "near")
    if options.similar:
        near_sets = {frozenset(m.id for m in g.members) for g in groups}
        loose = [g for g in _groups(store, links, "similar") if frozenset(m.id for m in g.members) not in near_sets]
        groups += loose
    return DedupeReport(tuple(groups), store.count("ok"), candidates, unverifiable, tuple(batches))


def _groups(store: Store, links: list[Link], kind: str) -> list[Group]:
    """Connected components of `links`, as groups (largest first, then by the keeper's path)."""
    uf = _UnionFind()
    for x in links:
        uf.join(x.a, x.b)
    parts: dict[int, list[Link]] = {}
    for x in links:
        parts.setdefault(uf.find(x.a), []).append(x)
    facts = store.facts({i for x in links for i in (x.a, x.b)})
    out = []
    for part in parts.values():
        ids = {i for x in part for i in (x.a, x.b)}
        members = tuple(sorted((facts[i] for i in ids if i in facts), key=keep_order))
        if len(members) < 2:  # a row deleted meanwhile
            continue
        group_kind = "exact" if all(x.kind == "exact" for x in part) else kind
        out.append(Group(group_kind, members, tuple(x for x in part if x.a in facts and x.b in facts)))
    return sorted(out, key=lambda g: (-len(g.members), g.keep.path))


class _UnionFind:
    """Disjoint sets over the ids that appear in links (a dict: memory grows with the links, not n)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class Arrival:
    """One file of a folder checked against the index: kind exact, near, similar, new, unchecked
    (exact_only: no identical bytes indexed, nothing more was asked) or refused (`reason` says
    why); `match` the indexed copy (the keeper among several)."""

    path: str
    kind: str
    match: ImageFacts | None = None
    score: float | None = None
    inliers: int = 0
    coverage: float = 0.0
    reason: str | None = None


Embed = Callable[[Sequence[str], LocalPCA | None], Iterable[list[Any]]]  # embedding.embed_files' groups


def against_index(paths: Sequence[str], *, store: Store, vec: VectorIndex | None, whitening: wh.Whitening | None,
                  pca: LocalPCA | None, local_of: LocalOf, embed: Embed,
                  options: DedupeOptions = DedupeOptions()) -> list[Arrival]:
    """Which of `paths` (files not necessarily indexed) the index already holds: every file is
    hashed (same bytes: exact, no model work); the others are embedded like the database and
    their `options.k` nearest indexed images verified as `duplicates` does. In the order given.
    `vec` may be None with options.exact_only (nothing is searched)."""
    from ..backbone.weights import file_sha256

    out: dict[str, Arrival] = {}
    hashes: dict[str, str] = {}
    for p in paths:
        try:
            hashes[p] = file_sha256(p)
        except OSError as e:
            out[p] = Arrival(p, "refused", reason=f"unreadable ({e.strerror or e})")
    held = store.ids_by_hash(hashes.values())
    facts = store.facts({i for ids in held.values() for i in ids})
    for p, sha in hashes.items():
        if held.get(sha):
            out[p] = Arrival(p, "exact", min((facts[i] for i in held[sha] if i in facts), key=keep_order))
    rest = [p for p in hashes if p not in out]
    if options.exact_only:
        out.update((p, Arrival(p, "unchecked")) for p in rest)
        rest = []
    if rest and pca is None:
        raise RetrievalError(f"the index at {store.path.parent} has no patch descriptors yet (too few images), so "
                             f"only exact copies can be told; fix: index more images, or read the exact results "
                             f"with --exact-only")
    assert vec is not None or not rest, "only exact_only goes without the vectors"
    for group in embed(rest, pca) if rest else ():
        for item in group:
            if isinstance(item, Skipped):
                out[item.path] = Arrival(item.path, "refused", reason=item.reason)
            elif vec is not None:
                out[item.decoded.path] = _nearest(item, store=store, vec=vec, whitening=whitening, pca=pca,
                                                  local_of=local_of, options=options)
    return [out[p] for p in paths if p in out]


def _nearest(e: Any, *, store: Store, vec: VectorIndex, whitening: wh.Whitening | None, pca: Any,
             local_of: LocalOf, options: DedupeOptions) -> Arrival:
    """The best verified indexed copy of one embedded file (engine.embedding.Embedding), else new."""
    xq = e.descriptor[None] if whitening is None else whitening.apply(e.descriptor[None])
    scores, ids = vec.search(xq, options.k)
    cands = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and s >= options.threshold]
    feats = local_of([i for i, _ in cands], pca) if cands and e.features is not None else {}
    best: tuple[int, int, int, float, float] | None = None  # (level, inliers, id, score, coverage)
    for i, s in cands:
        if i in feats:
            n, cov, _ = check_pair(e.features, feats[i])
            kind = classify(n, cov, options)
            if kind == "similar" and not options.similar:  # the looser level only when asked, as in `duplicates`
                kind = None
            if kind is not None and (best is None or (KINDS.index(kind), -n) < (best[0], -best[1])):
                best = (KINDS.index(kind), n, i, s, cov)
    if best is None:
        return Arrival(e.decoded.path, "new")
    match = store.facts([best[2]]).get(best[2])
    return Arrival(e.decoded.path, KINDS[best[0]], match, best[3], best[1], best[4])


def index_duplicates(idx: Index, options: DedupeOptions = DedupeOptions()) -> DedupeReport:
    """`duplicates` of an open index (its vectors rebuilt first if stale). Pairs whose rows hold
    no stored patch descriptors are counted as unverifiable, not embedded again."""
    idx.require_images()
    vec = None if options.exact_only else idx.ensure_vectors()
    return duplicates(idx.store, vec, idx.local_pca(), partial(stored_features, idx.store), options)


def folder_against_index(idx: Index, paths: Sequence[str], options: DedupeOptions = DedupeOptions()) -> list[Arrival]:
    """`against_index` with an open index's vectors, whitening and model (loaded only when a file
    is not an exact copy)."""
    from .embedding import embed_files

    idx.require_images()
    vec = None if options.exact_only else idx.ensure_vectors()

    def embed(todo: Sequence[str], pca: LocalPCA | None) -> Iterable[list[Any]]:
        return embed_files(todo, backbone=idx.backbone(), config=idx.config, workers=0, pca=pca)

    return against_index(paths, store=idx.store, vec=vec, whitening=idx.whitening(), pca=idx.local_pca(),
                         local_of=partial(stored_features, idx.store), embed=embed, options=options)


def stored_features(store: Store, ids: Sequence[int], pca: LocalPCA) -> dict[int, LocalFeatures]:
    """The stored patch descriptors of those `ids` that have them (`LocalOf`): the re-ranking
    stage's, without making the missing ones from the files."""
    return stored_local(store, ids, pca)[0]


__all__ = ["Arrival", "DedupeReport", "Group", "Link", "against_index", "check_pair", "duplicates",
           "folder_against_index", "index_duplicates", "keep_order", "knn_pairs"]
