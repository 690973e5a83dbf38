#!/usr/bin/env python3
"""Write a small synthetic retrieval benchmark in the revisitop layout and in the plain JSON format.

    python scripts/make_synthetic_benchmark.py OUT [--name synthetic] [--landmarks 4] [--distractors 12]

OUT/<name>/jpg/*.jpg, OUT/<name>/gnd_<name>.pkl (protocol 2, plain data, like the official files)
and OUT/<name>.json (the same set in the plain JSON ground-truth format). Each "landmark" is a
seeded picture of shapes; its database images are crops, rescales, small rotations and colour
shifts of it (mild ones are `easy`, strong ones `hard`, heavily occluded ones `junk`); the query
is another view with a box around the landmark. The images mean nothing: the set exercises the
evaluation mechanics, not retrieval quality.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance


def landmark(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.clip(rng.normal(rng.integers(40, 215, 3), 18, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        [d.rectangle, d.ellipse, d.rectangle][int(rng.integers(0, 3))]((x0, y0, x1, y1), fill=fill)
    return im


def view(base: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    w, h = base.size
    keep = 1.0 - 0.45 * strength * rng.random()
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = base.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.normal(0, 8 * strength)), resample=Image.BICUBIC,
                                                       expand=False, fillcolor=(128, 128, 128))
    im = ImageEnhance.Brightness(im).enhance(1 + float(rng.normal(0, 0.25 * strength)))
    scale = float(rng.uniform(0.6, 1.2))
    return im.resize((max(32, int(im.width * scale)), max(32, int(im.height * scale))), Image.BICUBIC)


def occlude(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.rectangle((0, 0, int(w * 0.75), h), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return im


def make(out: Path, name: str, landmarks: int, distractors: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    jpg = out / name / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    imlist: list[str] = []
    qimlist: list[str] = []
    gnd: list[dict] = []
    json_queries = []
    for li in range(landmarks):
        base = landmark(1000 + li)
        groups: dict[str, list[int]] = {"easy": [], "hard": [], "junk": []}
        for kind, count, strength in (("easy", 3, 0.3), ("hard", 2, 1.0), ("junk", 1, 0.5)):
            for j in range(count):
                stem = f"lm{li}_{kind}{j}"
                im = view(base, rng, strength)
                if kind == "junk":
                    im = occlude(im, rng)
                im.save(jpg / f"{stem}.jpg", quality=90)
                groups[kind].append(len(imlist))
                imlist.append(stem)
        q = view(base, rng, 0.2)
        stem = f"lm{li}_query"
        q.save(jpg / f"{stem}.jpg", quality=90)
        bbx = [q.width * 0.1, q.height * 0.1, q.width * 0.9, q.height * 0.9]
        qimlist.append(stem)
        gnd.append({"bbx": [float(v) for v in bbx], **groups})
        json_queries.append({"image": f"{name}/jpg/{stem}.jpg", "bbox": bbx,
                             "positives": [f"{name}/jpg/{imlist[i]}.jpg" for i in groups["easy"] + groups["hard"]],
                             "junk": [f"{name}/jpg/{imlist[i]}.jpg" for i in groups["junk"]]})
    for k in range(distractors):
        stem = f"other_{k:03d}"
        view(landmark(5000 + k), rng, 0.3).save(jpg / f"{stem}.jpg", quality=90)
        imlist.append(stem)
    data = {"gnd": gnd, "imlist": imlist, "qimlist": qimlist}
    with open(out / name / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(data, f, protocol=2)
    (out / f"{name}.json").write_text(json.dumps(
        {"database": [f"{name}/jpg/{s}.jpg" for s in imlist], "queries": json_queries}, indent=1))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", default="synthetic")
    ap.add_argument("--landmarks", type=int, default=4)
    ap.add_argument("--distractors", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = make(args.out, args.name, args.landmarks, args.distractors, args.seed)
    print(f"wrote {args.out / args.name}: {len(data['imlist'])} database images, {len(data['qimlist'])} queries; "
          f"{args.out / (args.name + '.json')}")


if __name__ == "__main__":
    main()
