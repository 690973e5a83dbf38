#!/usr/bin/env python3
"""Checks that need a CUDA machine: what the GPU paths change, and faiss search on the GPU.

    python scripts/bench_gpu.py [--vectors 10000,100000,1000000] [--awkward DIR] [--device cuda]

1. nvJPEG decode + GPU resize against the Pillow path on photo-like JPEGs (12 MP and 2 MP,
   progressive, grey, EXIF-rotated) and, with --awkward, the awkward-image set: which files the
   GPU decoder refuses (they fall back to Pillow), pixel difference, descriptor cosine (ViT-S/14
   with trained-like random weights, 224 px).
2. CUDA autocast bf16 / fp16 tokens against fp32 (ViT-B/14, 518 px).
3. Exact search on the GPU (PyTorch, retrieval.vectors.TorchExact) against FAISS's exact search on
   the CPU: results, upload and search time at each size, and the save / load round trip.
Throughput is measured by scripts/bench_index.py --device cuda (docs/throughput.md).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_photo, random_checkpoint  # noqa: E402
from bench_query import vectors  # noqa: E402

from retrieval import vectors as vindex  # noqa: E402
from retrieval import load_backbone, pooling  # noqa: E402
from retrieval.config import ImageConfig  # noqa: E402
from retrieval.engine.forward import ForwardBatch, Decoded, decoded_stream, forward_batches, normalize  # noqa: E402

def test_photos(folder: Path) -> list[Path]:
    out = [make_photo(i, folder) for i in range(4)]  # 12 MP, 2 MP, 12 MP, 2 MP
    im = Image.open(out[1])
    variants = {"progressive.jpg": dict(progressive=True), "grey.jpg": dict(), "rot6.jpg": dict(), "rot8.jpg": dict()}
    for name, extra in variants.items():
        pic = im.convert("L") if name == "grey.jpg" else im
        exif = Image.Exif()
        if name.startswith("rot"):
            exif[0x0112] = int(name[3])
        buf = io.BytesIO()
        pic.save(buf, format="JPEG", quality=90, exif=exif, **extra)
        (folder / name).write_bytes(buf.getvalue())
        out.append(folder / name)
    return out


def check_decode(paths: list[str], weights: str, dev: torch.device) -> None:
    bb = load_backbone("dinov2_vits14", weights=weights, device=str(dev), dtype="fp32")
    image = ImageConfig(size=224)

    def run(on: torch.device | None) -> dict:
        return {r.path: r for r in decoded_stream(paths, backbone=bb, image=image, workers=4, jpegs_on=on, jpegs_per_decode=8)}

    t0 = time.perf_counter()
    pil = run(None)
    t1 = time.perf_counter()
    gpu = run(dev)
    t2 = time.perf_counter()
    print(f"decode {len(paths)} files: Pillow path {t1 - t0:.2f} s, GPU path {t2 - t1:.2f} s (first call, untuned)")
    worst_mad, worst_cos, on_gpu = 0.0, 1.0, 0
    for p in paths:
        a, b = pil[p], gpu[p]
        if type(a) is not type(b):
            print(f"  MISMATCH {Path(p).name}: Pillow {type(a).__name__}, GPU {type(b).__name__}")
            continue
        if not isinstance(a, Decoded):
            if a.reason != b.reason:  # type: ignore[attr-defined]
                print(f"  REASON differs {Path(p).name}: {a.reason!r} vs {b.reason!r}")  # type: ignore[attr-defined]
            continue
        on_gpu += b.pixels[0].device.type == dev.type
        x, y = a.pixels[0].to(dev), b.pixels[0].to(dev)
        mad = (x.float() - y.float()).abs().mean().item()
        ta, tb = (bb.encode(normalize(t[None], mean=bb.mean, std=bb.std)) for t in (x, y))
        da, db = (pooling.global_descriptor(t.cls, t.patches, pooling="cls+gem", p=3.0) for t in (ta, tb))
        cos = torch.nn.functional.cosine_similarity(da, db).item()
        note = "" if b.pixels[0].device.type == dev.type else " (decoded by Pillow: GPU refused)"
        print(f"  {Path(p).name:40s} {a.original_wh[0]:5d}x{a.original_wh[1]:<5d} pixel MAD {mad:5.2f}  descriptor cos {cos:.5f}{note}")
        if "corrupt" not in p:
            worst_mad, worst_cos = max(worst_mad, mad), min(worst_cos, cos)
    ran = sum(len(b.items) for b in forward_batches(iter(gpu.values()), backbone=bb, batch=16)
              if isinstance(b, ForwardBatch))
    print(f"forward passes over GPU- and Pillow-decoded files together: {ran} inputs")
    print(f"decoded on the GPU: {on_gpu} of {sum(isinstance(r, Decoded) for r in gpu.values())}; "
          f"worst pixel MAD {worst_mad:.2f}, worst descriptor cosine {worst_cos:.5f} (corrupt files aside)")


def check_autocast(weights: str, dev: torch.device) -> None:
    ref = load_backbone("dinov2_vitb14", weights=weights, device=str(dev), dtype="fp32")
    x = torch.randn(4, 3, 518, 392, device=dev)
    a = ref.encode(x)
    for dtype in ("bf16", "fp16"):
        other = load_backbone("dinov2_vitb14", weights=weights, device=str(dev), dtype=dtype)
        b = other.encode(x)
        cls = torch.nn.functional.cosine_similarity(a.cls, b.cls).min().item()
        patch = torch.nn.functional.cosine_similarity(a.patches, b.patches, dim=-1).min().item()
        print(f"{dev.type} autocast {dtype} vs fp32, ViT-B/14 518x392: CLS cosine min {cls:.5f}, patch cosine min {patch:.5f}")


def check_search(sizes: list[int], dim: int = 768) -> None:
    import faiss

    print(f"faiss {faiss.__version__} (CPU search as the reference)")
    xq = vectors(1000, dim, 1)
    for n in sizes:
        xb = vectors(n, dim, 0)
        t0 = time.perf_counter()
        gpu = vindex.place(vindex.build(xb, np.arange(n), kind="flat", fingerprint="b", data_version=0), use_gpu=True)
        build = time.perf_counter() - t0
        cpu = vindex.build(xb, np.arange(n), kind="flat", fingerprint="b", data_version=0)
        placed = f"torch on {gpu.exact_on.vectors.device}" if gpu.exact_on else "faiss CPU"
        gs, gi = gpu.search(xq, 10)
        t0 = time.perf_counter()
        cs, ci = cpu.search(xq, 10)
        cpu_batch = (time.perf_counter() - t0) / len(xq)
        same = float(np.mean(gi == ci))
        score_err = float(np.abs(gs - cs).max())
        single = []
        for q in xq[:100]:
            t0 = time.perf_counter()
            gpu.search(q[None], 10)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gpu.search(xq, 10)
        batch = (time.perf_counter() - t0) / len(xq)
        print(f"  n={n:8d} {placed}: build+upload {build:.2f} s; ids equal to CPU exact {same:.4f}, "
              f"max score diff {score_err:.1e}; 1 query {1000 * statistics.median(single):.2f} ms, batched "
              f"{1000 * batch:.3f} ms/query (CPU exact batched {1000 * cpu_batch:.3f} ms/query)")
    blob = vindex.to_bytes(gpu)
    back = vindex.place(vindex.from_bytes(blob, fingerprint="b", data_version=0), use_gpu=True)
    print(f"  round trip: saved {len(blob) / 1e6:.0f} MB from the GPU index, reloaded on the GPU {back.exact_on is not None}, "
          f"ids equal {np.array_equal(back.search(xq, 10)[1], gi)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", default="10000,100000,1000000")
    ap.add_argument("--awkward", type=Path)
    ap.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    ap.add_argument("--skip", default="", help="comma-separated checks to leave out: decode, autocast, search")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        photos = tmp / "photos"
        photos.mkdir()
        paths = [str(p) for p in test_photos(photos)]
        if args.awkward:
            paths += sorted(str(p) for p in args.awkward.iterdir() if p.name != "MANIFEST.tsv")
        for name, fn in (("decode", lambda: check_decode(paths, random_checkpoint("dinov2_vits14", tmp), dev)),
                         ("autocast", lambda: check_autocast(random_checkpoint("dinov2_vitb14", tmp), dev)),
                         ("search", lambda: check_search([int(s) for s in args.vectors.split(",")]))):
            if name in args.skip.split(","):
                continue
            print(f"== {name}", flush=True)
            try:
                fn()
            except Exception as e:  # report and go on: one failed check must not hide the others
                print(f"  FAILED: {type(e).__name__}: {e}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
