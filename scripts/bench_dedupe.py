#!/usr/bin/env python3
"""`retrieve dedupe` on a planted set, beside imagededup; and its kNN stage alone as n grows.

    python scripts/bench_dedupe.py planted [--scenes 30] [--model test_tiny] [--size 224] [--coverage 0.35]
    python scripts/bench_dedupe.py knn [--sizes 100000,1000000] [--kind flat] [--dim 768] [--batch 256] [--graph-min N]

planted: each synthetic scene is shot once (the original), copied under every transform below, and
shot again from a step to the side (parallax, fresh sensor noise: a *different shot of the same
scene*, the hard negative that must not be called a copy). Everything goes into one folder, which
is indexed (our method) and handed to imagededup's PHash and CNN. Per transform: recall (the copy
ends in its original's group) and precision (of the pairs a method groups with images of that
transform, the share that are copies of one photo); the hard negatives' row is the share of
scenes whose other shot was grouped with the original (lower is better). Each method runs in a
child process: seconds and peak RSS are its own.

knn: the kNN graph stage alone (`engine.dedupe.knn_pairs`) over n synthetic unit vectors with
planted near copies, in a child process per n: seconds to build the query index (`--kind`),
seconds of the graph (its temporary IVF built and searched from --graph-min vectors on, the
query index's own search below), peak RSS, and how many planted pairs it found; time and memory
per n are printed as ratios against the smallest n, beside n's own ratio, with the load average
before and after.

imagededup is not a dependency of retrieval: `pip install imagededup` (or `pip install
"retrieval[bench]"`). Its CNN method downloads MobileNetV3 weights through torchvision on first
use; offline (as on the machine of docs/dedupe.md) it cannot run and the table says so.
Our numbers use the random weights of the chosen model unless --weights gives real ones: they
show the mechanics (grouping, the verification level, time, memory), not retrieval quality.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from retrieval.vectors import GRAPH_MIN

TRANSFORMS = ("exact", "reencode", "resize", "recompress", "crop", "rotate", "flip", "edit")
HARD = "other_shot"


# --- the planted set ------------------------------------------------------------------------

def shot(scene: int, step: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """One picture of a synthetic scene: a far textured backdrop and near objects; `step` moves
    the camera sideways (the backdrop shifts a third as far as the objects: parallax), and the
    sensor noise is new for every step."""
    rng = np.random.default_rng(scene)
    w, h = size
    back = rng.integers(0, 255, (h // 24 + 2, w // 24 + 4, 3)).astype(np.uint8)
    backdrop = Image.fromarray(back).resize(((w // 24 + 4) * 24, (h // 24 + 2) * 24), Image.Resampling.BICUBIC)
    im = backdrop.crop((24 + step // 3, 12, 24 + step // 3 + w, 12 + h))
    draw = ImageDraw.Draw(im)
    for _ in range(7):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        x1, y1 = x0 + int(rng.integers(30, w // 3)), y0 + int(rng.integers(30, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0 + step, y0, x1 + step, y1), fill=colour)
    noise = np.random.default_rng(10_000 * scene + step).normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, np.float64) + noise, 0, 255).astype(np.uint8))


def planted_set(folder: Path, scenes: int) -> dict[str, tuple[int, str]]:
    """Write the set; file name -> (scene, transform | "original" | HARD)."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for s in range(scenes):
        o = shot(s, 0)
        o.save(folder / f"s{s:03d}_original.jpg", quality=92)
        src = Image.open(folder / f"s{s:03d}_original.jpg")
        shutil.copy(folder / f"s{s:03d}_original.jpg", folder / f"s{s:03d}_exact.jpg")
        src.save(folder / f"s{s:03d}_reencode.jpg", quality=40)
        src.resize((src.width // 2, src.height // 2), Image.Resampling.LANCZOS).save(folder / f"s{s:03d}_resize.png")
        src.save(folder / f"s{s:03d}_recompress.webp", quality=60)
        w, h = src.size
        src.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(folder / f"s{s:03d}_crop.jpg", quality=90)
        src.rotate(90, expand=True).save(folder / f"s{s:03d}_rotate.jpg", quality=90)
        ImageOps.mirror(src).save(folder / f"s{s:03d}_flip.jpg", quality=90)
        edit = ImageEnhance.Contrast(ImageEnhance.Brightness(src).enhance(1.15)).enhance(1.1)
        ImageDraw.Draw(edit).text((10, h - 24), "(c) 2026 planted", fill=(255, 255, 255))
        edit.save(folder / f"s{s:03d}_edit.jpg", quality=90)
        shot(s, 120).save(folder / f"s{s:03d}_{HARD}.jpg", quality=92)
        for kind in ("original", *TRANSFORMS, HARD):
            ext = {"resize": "png", "recompress": "webp"}.get(kind, "jpg")
            truth[f"s{s:03d}_{kind}.{ext}"] = (s, kind)
    return truth


def components(pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """File name -> component number, over the given links."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    roots = {x: find(x) for x in parent}
    numbers = {r: i for i, r in enumerate(sorted(set(roots.values())))}
    return {x: numbers[r] for x, r in roots.items()}


def scores(truth: dict[str, tuple[int, str]], comp: dict[str, int]) -> dict[str, tuple[float, float | None]]:
    """kind -> (recall, precision) as the module docstring defines them; HARD -> (grouped share, None)."""
    same_photo = {name: (s, kind != HARD) for name, (s, kind) in truth.items()}
    out: dict[str, tuple[float, float | None]] = {}
    scenes = sorted({s for s, _ in truth.values()})
    for kind in (*TRANSFORMS, HARD):
        names = {s: n for n, (s, k) in truth.items() if k == kind}
        originals = {s: n for n, (s, k) in truth.items() if k == "original"}
        found = sum(1 for s in scenes if names[s] in comp and comp.get(originals[s]) == comp[names[s]])
        right = wrong = 0
        for n in names.values():
            if n not in comp:
                continue
            for m in comp:
                if m != n and comp[m] == comp[n]:
                    ok = same_photo[m][0] == same_photo[n][0] and same_photo[m][1] and same_photo[n][1]
                    right, wrong = right + ok, wrong + (not ok)
        out[kind] = (found / len(scenes), None if kind == HARD or right + wrong == 0 else right / (right + wrong))
    return out


# --- the methods, each in a child process ---------------------------------------------------------

def run_ours(folder: Path, args: argparse.Namespace) -> dict:
    from retrieval import engine
    from retrieval.config import DedupeOptions

    t0 = time.perf_counter()
    ix = folder.parent / "index"
    overrides = {"backbone": {"name": args.model, "weights": args.weights}, "image": {"size": args.size},
                 "workers": 0}
    with engine.Index.open_or_create(ix, overrides) as idx:
        idx.update([folder])
        t1 = time.perf_counter()
        report = engine.index_duplicates(idx, DedupeOptions(coverage=args.coverage, threshold=args.threshold))
        weights = idx.store.get_meta("weights_id") or ""
    t2 = time.perf_counter()
    pairs = [(Path(g.members[0].path).name, Path(m.path).name) for g in report.groups for m in g.members[1:]]
    return {"pairs": pairs, "seconds": t2 - t0, "index_seconds": t1 - t0, "dedupe_seconds": t2 - t1,
            "random_weights": weights.startswith("random:")}


def run_imagededup(folder: Path, method: str) -> dict:
    from imagededup import methods

    t0 = time.perf_counter()
    try:
        hasher = getattr(methods, method)()
        found = hasher.find_duplicates(image_dir=str(folder))
    except Exception as e:  # noqa: BLE001 (the CNN's weights download fails offline: reported, not fatal)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
    pairs = [(a, b) for a, bs in found.items() for b in bs]
    return {"pairs": pairs, "seconds": time.perf_counter() - t0}


def run_knn(n: int, args: argparse.Namespace) -> dict:
    from retrieval import vectors
    from retrieval.engine.dedupe import knn_pairs

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, args.dim), dtype=np.float32)
    planted = min(1000, n // 2)
    xb[1:2 * planted:2] = xb[0:2 * planted:2] + 0.05 * rng.standard_normal((planted, args.dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    t0 = time.perf_counter()
    vec = vectors.build(xb, np.arange(n, dtype=np.int64), kind=args.kind, fingerprint="bench", data_version=1)
    del xb
    t1 = time.perf_counter()
    got: set[int] = set()  # a planted pair is found from both sides: counted once
    for kb in knn_pairs(vec, k=8, threshold=0.9, batch=args.batch, graph_min=args.graph_min):
        got.update(kb.a[(kb.b - kb.a == 1) & (kb.a % 2 == 0) & (kb.a < 2 * planted)].tolist())
    return {"n": n, "build_seconds": t1 - t0, "graph_seconds": time.perf_counter() - t1,
            "found": len(got), "planted": planted}


def child(argv: list[str]) -> dict:
    """Run one method in a fresh process; its result with its own peak RSS (MB)."""
    out = subprocess.run([sys.executable, __file__, "_child", *argv], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- reports -----------------------------------------------------------------------------------

def planted_report(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "set"
        truth = planted_set(folder, args.scenes)
        extra = ["--model", args.model, "--size", str(args.size), "--coverage", str(args.coverage),
                 "--threshold", str(args.threshold)] + (["--weights", args.weights] if args.weights else [])
        results = {"ours": child(["ours", str(folder), *extra]),
                   "imagededup PHash": child(["PHash", str(folder)]), "imagededup CNN": child(["CNN", str(folder)])}
    print(f"planted set: {args.scenes} scenes x (original + {len(TRANSFORMS)} copies + another shot) = {len(truth)} "
          f"images; model {args.model} at {args.size} px"
          + (" with RANDOM weights: the mechanics, not retrieval quality" if results["ours"].get("random_weights")
             else ""))
    for name, r in results.items():
        if "error" in r:
            print(f"\n{name}: not run: {r['error']}")
            continue
        table = scores(truth, components(map(tuple, r["pairs"])))
        timing = f"{r['seconds']:.1f} s" + (f" (index {r['index_seconds']:.1f} s + dedupe {r['dedupe_seconds']:.1f} s)"
                                            if "index_seconds" in r else "")
        print(f"\n{name}: {timing}, peak RSS {r['rss_mb']:.0f} MB")
        print(f"  {'transform':12s} {'recall':>7s} {'precision':>9s}")
        for kind, (rec, prec) in table.items():
            shown = "-" if prec is None else f"{prec:.2f}"
            label = f"{kind} (grouped with the original: lower is better)" if kind == HARD else kind
            print(f"  {kind:12s} {rec:7.2f} {shown:>9s}" + ("   <- " + label if kind == HARD else ""))


def knn_report(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"kNN graph stage alone: {args.kind} query index, {args.dim}-d synthetic unit vectors, k 8, batch "
          f"{args.batch}, graph index from {args.graph_min} vectors; load average before: {_load()}")
    print(f"  {'n':>9s} {'build s':>8s} {'graph s':>8s} {'peak MB':>8s} {'planted found':>14s} "
          f"{'n ratio':>8s} {'time ratio':>10s} {'RSS ratio':>9s}")
    first = None
    for n in sizes:
        r = child(["knn", str(n), "--dim", str(args.dim), "--kind", args.kind, "--batch", str(args.batch),
                   "--graph-min", str(args.graph_min)])
        if "error" in r:
            print(f"  {n:9d} failed: {r['error']}")
            continue
        first = first or r
        print(f"  {n:9d} {r['build_seconds']:8.1f} {r['graph_seconds']:8.1f} {r['rss_mb']:8.0f} "
              f"{r['found']:>6d} / {r['planted']:<6d} {n / first['n']:8.1f} "
              f"{r['graph_seconds'] / first['graph_seconds']:10.1f} {r['rss_mb'] / first['rss_mb']:9.1f}")
    print(f"load average after: {_load()}")


def _load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: times depend on them)."""
    import os

    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        what, rest = sys.argv[2], sys.argv[3:]
        ap = argparse.ArgumentParser()
        ap.add_argument("target")
        for flag, kind, default in (("--model", str, "test_tiny"), ("--size", int, 224), ("--weights", str, None),
                                    ("--coverage", float, 0.35), ("--threshold", float, 0.5),
                                    ("--dim", int, 768), ("--kind", str, "flat"), ("--batch", int, 256),
                                    ("--graph-min", int, GRAPH_MIN)):
            ap.add_argument(flag, type=kind, default=default)
        a = ap.parse_args(rest)
        if what == "ours":
            r = run_ours(Path(a.target), a)
        elif what == "knn":
            r = run_knn(int(a.target), a)
        else:
            r = run_imagededup(Path(a.target), what)
        r["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", choices=("planted", "knn", "all"), default="all")
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--model", default="test_tiny")
    ap.add_argument("--weights")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--coverage", type=float, default=0.35)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--kind", default="flat", choices=("flat", "ivf", "hnsw"))
    ap.add_argument("--graph-min", type=int, default=GRAPH_MIN,
                    help="vectors from which the graph gets its own IVF (larger than every n: the query index's search)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    if args.part in ("planted", "all"):
        planted_report(args)
    if args.part in ("knn", "all"):
        knn_report(args)


if __name__ == "__main__":
    main()
