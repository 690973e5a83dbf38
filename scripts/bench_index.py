#!/usr/bin/env python3
"""Indexing throughput: `retrieve index` end to end against the naive loop and the model alone.

    python scripts/bench_index.py [--images 40] [--size 224] [--dtype fp32|bf16] [--batch 16]
                                  [--workers N] [--folder DIR] [--model dinov2_vits14 --weights FILE]
                                  [--device cuda --decode auto|cpu|gpu --parts model,index --stages]

Measured in one run, each part in its own process (so each peak RSS is its own):
  (a) naive: per image, PIL full decode, resize 256 + centre crop 224, ViT forward one image at a
      time in fp32 with PyTorch's default kernels (what the dinov2-retrieval script does);
  (b) model only: pre-decoded tensors of exactly the shapes (c) feeds the model, batched, same
      model, dtype and size: the ceiling for (c);
  (c) `Index.update` on a fresh index folder with the same settings.
Prints img/s of each, c/b and c/a, peak RSS and stored bytes per image. Without --folder it makes
a mix of 12 MP and 2 MP photo-like JPEGs; without --weights it writes a checkpoint of --model with
random weights in the official layout (speed does not depend on the values). --stages adds where
the main thread's time goes in (c); --device cuda measures (b) and (c) on a GPU.

    python scripts/bench_index.py --memory 500,5000     # peak RSS of (c) for each collection size
    python scripts/bench_index.py --compare-dtypes      # bf16 / fp16 autocast tokens against fp32
    python scripts/bench_index.py --compare-models dinov2_vits14,dinov3_vits16 [--images 64] [--repeats 2]
        # model-only img/s of each, fp32 and bf16, at 224 px and at equal patch counts (a 16 x 16
        # grid: 224 px at patch 14, 256 px at patch 16), with the ratio to the first model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_photo(i: int, folder: Path) -> Path:
    """Photo i of the mix: even ones 12 MP, odd ones 2 MP, every fifth one portrait."""
    rng = np.random.default_rng(i)
    w, h = (4000, 3000) if i % 2 == 0 else (1600, 1200)
    if i % 5 == 4:
        w, h = h, w
    small = Image.fromarray(rng.integers(0, 255, (h // 50, w // 50, 3), dtype=np.uint8), "RGB")
    im = small.resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    d = ImageDraw.Draw(im)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
        d.rectangle((x0, y0, x0 + int(rng.integers(50, w // 3)), y0 + int(rng.integers(50, h // 3))),
                    fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    noise = rng.normal(0, 6, (h, w, 3))
    im = Image.fromarray(np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
    p = folder / f"photo_{i:05d}.jpg"
    im.save(p, quality=90)
    return p


def make_photos(folder: Path, n: int, distinct: int | None = None) -> list[Path]:
    """n photo-like JPEGs. With `distinct` < n, that many are drawn (in parallel) and the rest are
    byte-level variants of them (a comment segment after the start marker): same decode work,
    distinct files and hashes, minutes less to make on a large run."""
    folder.mkdir(parents=True, exist_ok=True)
    k = min(n, distinct or n)
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        base = list(pool.map(partial(make_photo, folder=folder), range(k)))
    out = list(base)
    for i in range(k, n):
        data = base[i % k].read_bytes()
        note = f"copy {i}".encode()
        p = folder / f"photo_{i:05d}.jpg"
        p.write_bytes(data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + data[2:])
        out.append(p)
    return out


def _trained_like(name: str, v, torch):  # noqa: ANN001, ANN202 - script helper
    """Random values with the spread of trained weights (a ViT's init leaves layer scales at 1e-5,
    which makes every block a no-op and any precision comparison meaningless)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("gamma"):
        return torch.rand(v.shape, generator=g) * 0.9 + 0.1
    if name in ("pos_embed", "cls_token"):
        return torch.randn(v.shape, generator=g) * 0.5
    if "norm" in name and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(v.shape, generator=g)
    if name.endswith("bias"):
        return 0.02 * torch.randn(v.shape, generator=g)
    return torch.randn(v.shape, generator=g) / max(1.0, v[0].numel()) ** 0.5


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024


def part_naive(files: list[Path], weights: str, model: str) -> dict:
    import torch

    from retrieval import load_backbone

    # PyTorch's default kernels, as the script's torch hub model has them (no oneDNN linear layers)
    bb = load_backbone(model, weights=weights, device="cpu", dtype="fp32", onednn=False)
    mean = torch.tensor(bb.mean).view(3, 1, 1)
    std = torch.tensor(bb.std).view(3, 1, 1)
    t0 = time.perf_counter()
    for f in files:
        im = Image.open(f).convert("RGB")
        s = 256 / min(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        x = (torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1) - mean) / std
        bb.encode(x[None])
    return {"seconds": time.perf_counter() - t0}


def part_model(files: list[Path], weights: str, model: str, size: int, dtype: str, batch: int,
               device: str = "cpu") -> dict:
    import torch

    from retrieval import load_backbone
    from retrieval.images import target_size

    bb = load_backbone(model, weights=weights, device=device, dtype=dtype)
    shapes: dict[tuple[int, int], int] = {}
    for f in files:
        with Image.open(f) as im:
            w, h = target_size(im.width, im.height, size=size, patch_size=bb.patch_size)
        shapes[(h, w)] = shapes.get((h, w), 0) + 1
    batches = []
    for (h, w), count in shapes.items():
        for start in range(0, count, batch):
            batches.append(torch.randn(min(batch, count - start), 3, h, w, device=bb.device))
    for x in batches[:3]:  # warm-up (on CUDA: kernel selection for each shape)
        bb.encode(x)
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for x in batches:
        bb.encode(x)
    sync()
    return {"seconds": time.perf_counter() - t0}


def timed_stages(device: str) -> dict[str, float]:
    """Wrap the main thread's stages of Index.update with wall-clock timers (synchronising CUDA
    around GPU work, so its time lands in its own stage); returns the dict they add up in."""
    import torch

    from retrieval import jpeg_gpu
    from retrieval.engine import embedding, forward
    from retrieval.store import Store

    spent: dict[str, float] = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def wrap(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*a: object, **k: object) -> object:
            sync()
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                sync()
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    wrap(forward, "wait", "waiting for decoder threads")
    wrap(jpeg_gpu, "decode", "nvJPEG decode")
    wrap(jpeg_gpu, "resize", "GPU orient + resize")
    wrap(forward, "_run", "stack + copy + forward pass")
    wrap(embedding, "complete", "pooling + local descriptors")
    wrap(Store, "apply", "SQLite commits")
    return spent


def part_index(files: list[Path], weights: str, model: str, size: int, dtype: str, batch: int,
               workers: int | None, out: Path, device: str = "cpu", decode: str = "auto",
               readers: str | None = None, stages: bool = False) -> dict:
    from retrieval import Index

    if readers:  # A/B of the decoder pool kind (the engine picks it from the decode mode)
        from functools import partial

        from retrieval.engine import embedding

        embedding.decoded_stream = partial(embedding.decoded_stream,  # type: ignore[assignment]
                                           threads=readers == "threads")

    cfg = {"backbone": {"name": model, "weights": weights, "dtype": dtype, "device": device},
           "image": {"size": size}, "batch": batch, "workers": workers, "decode": decode,
           "whitening": {"enabled": False}}
    with Index.open_or_create(out, cfg) as idx:
        idx.backbone()  # load outside the timed region, as (a) and (b) do
        spent = timed_stages(device) if stages else {}
        t0 = time.perf_counter()
        summary = idx.update(sorted({str(f.parent) for f in files}))
        seconds = time.perf_counter() - t0
        n = idx.store.count("ok")
    db_bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"seconds": seconds, "indexed": n, "skipped": len(summary.skipped), "bytes_per_image": db_bytes / max(n, 1),
            "stages": spent}


def memory_check(args: argparse.Namespace, sizes: list[int], weights: str, tmp: Path) -> None:
    """Peak RSS of `retrieve index` for collections of different sizes (small 640x480 JPEGs)."""
    rng = np.random.default_rng(1)
    base = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB").resize((640, 480))
            for _ in range(16)]
    rss = {}
    for n in sizes:
        folder = tmp / f"mem{n}"
        folder.mkdir()
        for i in range(n):
            im = base[i % 16].rotate(i % 360)
            im.save(folder / f"m{i:05d}.jpg", quality=85)
        t0 = time.perf_counter()
        r = run_part(args, "index", folder, weights, tmp / f"out{n}")
        rss[n] = r["peak_rss_mb"]
        print(f"{n:6d} images: peak RSS {rss[n]:.0f} MB, {n / (time.perf_counter() - t0):.1f} img/s overall", flush=True)
    first = sizes[0]
    for n in sizes[1:]:
        print(f"peak RSS {n} / {first} images = {rss[n] / rss[first]:.2f}")


def compare_dtypes(weights: str, model: str, size: int, folder: Path) -> None:
    """How far autocast tokens are from fp32 ones, on the same inputs."""
    import torch

    from retrieval import load_backbone
    from retrieval.images import preprocess

    files = sorted(folder.glob("*.jpg"))[:8]
    ref = load_backbone(model, weights=weights, device="cpu", dtype="fp32")
    xs = [torch.from_numpy(preprocess(f, size=size, patch_size=14, mean=ref.mean, std=ref.std)[0])[None]
          for f in files]
    for dtype in ("bf16", "fp16"):
        other = load_backbone(model, weights=weights, device="cpu", dtype=dtype)
        cls_cos, patch_cos, rel = [], [], []
        for x in xs:
            a, b = ref.encode(x), other.encode(x)
            cls_cos.append(torch.nn.functional.cosine_similarity(a.cls, b.cls).item())
            patch_cos.append(torch.nn.functional.cosine_similarity(a.patches[0], b.patches[0]).min().item())
            rel.append(((a.patches - b.patches).abs().max() / a.patches.abs().max()).item())
        print(f"{dtype}: CLS cosine min {min(cls_cos):.5f}, patch cosine min {min(patch_cos):.5f}, "
              f"max |diff| / max |fp32| {max(rel):.4f} ({len(xs)} images, size {size})")


def part_speed(models: list[str], weights: list[str], sizes: list[int], dtype: str, batch: int, images: int) -> dict:
    """Each model alone on random square inputs of its size, forward passes only, in one process:
    the models take turns batch by batch, so a load that comes and goes slows each alike; the rate
    of each is its median batch's. Out: {"rates": img/s per model, "grids": patches a side}."""
    import torch

    from retrieval import load_backbone

    bbs = [load_backbone(m, weights=w or None, device="cpu", dtype=dtype) for m, w in zip(models, weights)]
    xs = [torch.randn(batch, 3, s, s) for s in sizes]
    for bb, x in zip(bbs, xs):
        bb.encode(x)  # warm-up
    times: list[list[float]] = [[] for _ in bbs]
    for _ in range(max(1, images // batch)):
        for k, (bb, x) in enumerate(zip(bbs, xs)):
            t0 = time.perf_counter()
            bb.encode(x)
            times[k].append(time.perf_counter() - t0)
    return {"rates": [batch / float(np.median(t)) for t in times],
            "grids": [s // bb.patch_size for s, bb in zip(sizes, bbs)]}


def compare_models(args: argparse.Namespace, tmp: Path) -> None:
    """--compare-models A,B: model-only img/s of each, fp32 and bf16, at 224 px and at a 16 x 16
    patch grid; one process per setting and dtype, in which the models take turns batch by batch
    (part_speed), `--repeats` rounds; the ratio is to the first model's rate in the same process."""
    from retrieval.backbone import patch_size, registry

    models = args.compare_models.split(",")
    weights = ["" if registry()[m].random_only else random_checkpoint(m, tmp) for m in models]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; batch {args.batch}, {args.images} images a model "
          f"and measurement, median batch")
    print(f"{'model':16s} {'setting':26s} {'dtype':5s} {'grid':>7s} {'img/s':>8s} {'/ first':>8s}")
    for rnd in range(args.repeats):
        for setting in ("224 px", "equal patch count"):
            for dtype in ("fp32", "bf16"):
                sizes = [224 if setting == "224 px" else 16 * patch_size(m) for m in models]
                cmd = [sys.executable, __file__, "--part", "speed", "--model", ",".join(models),
                       "--weights", ",".join(weights), "--sizes", ",".join(map(str, sizes)), "--dtype", dtype,
                       "--batch", str(args.batch), "--images", str(args.images)]
                r = run_json(cmd, f"{dtype} {setting}")
                for m, size, rate, grid in zip(models, sizes, r["rates"], r["grids"]):
                    label = f"{setting} ({size})"
                    print(f"{m:16s} {label:26s} {dtype:5s} {grid:>3d}x{grid:<3d} {rate:8.2f} "
                          f"{rate / r['rates'][0]:8.2f}   (round {rnd + 1})", flush=True)
    print(f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def run_part(args: argparse.Namespace, part: str, folder: Path, weights: str, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--folder", str(folder), "--weights", weights,
           "--model", args.model, "--size", str(args.size), "--dtype", args.dtype, "--batch", str(args.batch),
           "--out", str(tmp / f"index-{part}"), "--device", args.device, "--decode", args.decode]
    if args.readers:
        cmd += ["--readers", args.readers]
    if args.stages and part == "index":
        cmd += ["--stages"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    return run_json(cmd, f"part {part}")


def run_json(cmd: list[str], what: str) -> dict:
    """Run a benchmark part in a fresh process; its last line of output is its result as JSON."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{what} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--sizes", help="--part speed: pixels, one per model, comma-separated")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--weights")
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--part", choices=["naive", "model", "index", "speed"])
    ap.add_argument("--compare-models", help="comma-separated models: model-only img/s of each (see above)")
    ap.add_argument("--repeats", type=int, default=2, help="--compare-models: rounds")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--memory", help="comma-separated collection sizes for the peak-RSS check")
    ap.add_argument("--compare-dtypes", action="store_true")
    ap.add_argument("--device", default="cpu", help="where (b) and (c) run; (a) stays on the CPU")
    ap.add_argument("--decode", default="auto", help="(c): where JPEGs are decoded (auto, cpu, gpu)")
    ap.add_argument("--parts", default="naive,model,index", help="which of naive, model, index to run")
    ap.add_argument("--readers", choices=["threads", "processes"], help="(c): force the decoder pool kind")
    ap.add_argument("--stages", action="store_true", help="(c): where the main thread's time goes, by stage")
    ap.add_argument("--distinct", type=int, help="draw only this many photos, the rest byte-level variants")
    args = ap.parse_args()
    if args.part == "speed":
        sizes = [int(v) for v in args.sizes.split(",")]
        print(json.dumps(part_speed(args.model.split(","), args.weights.split(","), sizes, args.dtype, args.batch,
                                    args.images)))
        return
    if args.compare_models:
        with tempfile.TemporaryDirectory() as tmp_s:
            compare_models(args, Path(tmp_s))
        return
    if args.part:  # one measurement, in this process
        files = sorted(p for p in args.folder.iterdir() if p.suffix == ".jpg")
        if args.part == "naive":
            r = part_naive(files, args.weights, args.model)
        elif args.part == "model":
            r = part_model(files, args.weights, args.model, args.size, args.dtype, args.batch, args.device)
        else:
            r = part_index(files, args.weights, args.model, args.size, args.dtype, args.batch, args.workers, args.out,
                           args.device, args.decode, args.readers, args.stages)
        print(json.dumps({**r, "images": len(files), "peak_rss_mb": peak_rss_mb()}))
        return
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folder = args.folder or tmp / "photos"
        if args.folder is None and not args.memory:
            make_photos(folder, args.images, args.distinct)
        weights = args.weights
        if weights is None:
            weights = random_checkpoint(args.model, tmp)
        if args.memory:
            memory_check(args, [int(v) for v in args.memory.split(",")], weights, tmp)
            return
        if args.compare_dtypes:
            compare_dtypes(weights, args.model, args.size, folder)
            return
        parts = [p for p in ("naive", "model", "index") if p in args.parts.split(",")]
        results = {part: run_part(args, part, folder, weights, tmp) for part in parts}
    rate = {k: v["images"] / v["seconds"] for k, v in results.items()}
    n = next(iter(results.values()))["images"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {device_name(args.device)}; {args.model}, size "
          f"{args.size}, {args.dtype}, batch {args.batch}, decode {args.decode}, {n} JPEGs (12 MP / 2 MP mix)")
    for k, label in (("naive", "(a) naive loop"), ("model", "(b) model only"), ("index", "(c) retrieve index")):
        if k in results:
            print(f"{label:22s} {rate[k]:7.2f} img/s   peak RSS {results[k]['peak_rss_mb']:7.0f} MB")
    ratios = [f"c/{k[0]} = {rate['index'] / rate[k]:.2f}" for k in ("model", "naive") if k in rate and "index" in rate]
    if "index" in results:
        ratios.append(f"stored {results['index']['bytes_per_image'] / 1024:.1f} KB per image")
    print("   ".join(ratios).replace("c/m", "c/b").replace("c/n", "c/a"))
    spent = results.get("index", {}).get("stages") or {}
    if spent:
        total = results["index"]["seconds"]
        print(f"(c) main thread, {total:.2f} s in all:")
        for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"    {label:30s} {s:7.2f} s  {100 * s / total:5.1f} %")
        rest = total - sum(spent.values())
        print(f"    {'everything else':30s} {rest:7.2f} s  {100 * rest / total:5.1f} %")


def photos(folder: Path, n: int, *, seed: int = 0) -> list[Path]:
    """n synthetic 640x480 / 480x640 JPEGs (noise plus coloured rectangles) for the benchmarks
    that need an indexed folder; deterministic for a seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (640, 480) if i % 3 else (480, 640)
        im = Image.fromarray(np.clip(rng.normal(rng.integers(40, 215, 3), 20, (h, w, 3)), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            d.rectangle((x0, y0, x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(20, 300))),
                        fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        p = folder / f"p{i:04d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def random_checkpoint(model: str, folder: Path) -> str:
    """A checkpoint of `model` in the official layout with trained-like random values."""
    import torch

    from retrieval.backbone.registry import registry
    from retrieval.backbone.vit import build_vit
    from retrieval.backbone.vit3 import build_vit3

    arch = registry()[model]
    if arch.family == "dinov3":  # our module's keys are Meta's; RoPE periods kept as built
        sd = {k: v if "periods" in k else _trained_like(k, v, torch)
              for k, v in build_vit3(arch, init=True).state_dict().items()}
    else:
        m = build_vit(arch, init=False)  # names and shapes only ("meta" device)
        sd = {k: _trained_like(k, v, torch) for k, v in m.state_dict().items()}
        sd["mask_token"] = torch.zeros(1, arch.dim)
    path = folder / f"{model}_random.pth"
    torch.save(sd, path)
    return str(path)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the machine line every benchmark prints."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "CPU"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


if __name__ == "__main__":
    main()
