"""How far the fast JPEG draft decode (DCT-scaled, what `retrieve index` uses) is from a full decode.

For each JPEG: decode it in full and as a draft whose longer side stays >= --size, resize both to the
model input exactly as the engine does, and print the pixel differences (0-255) and the relative
difference of the tokens (max |draft - full| / max |full|) through --model. The default model is the
random-weight `test_tiny`: its token differences show that the input moved, not what a trained model
does with it. With no files given, a textured synthetic 4000x3000 JPEG is made and measured too.

    python scripts/measure_draft_decode.py                       # examples/photos/*.jpg + synthetic
    python scripts/measure_draft_decode.py my.jpg --size 518 --model dinov2_vits14 --weights w.pth
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval import load_backbone  # noqa: E402
from retrieval.images import decode, model_pixels, normalize  # noqa: E402


def synthetic(path: Path, size: tuple[int, int] = (4000, 3000), seed: int = 0) -> Path:
    """A photo-like JPEG with texture at several scales (fine noise, gradients, shapes, thin lines)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(xx / 97 + c) * np.cos(yy / 131 - c) for c in range(3)], axis=-1)
    coarse = np.kron(rng.normal(0, 25, (h // 50 + 1, w // 50 + 1, 3)), np.ones((50, 50, 1)))[:h, :w]
    a = np.clip(base + coarse + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, w - 400)), int(rng.integers(0, h - 400))
        x1, y1 = x0 + int(rng.integers(20, 400)), y0 + int(rng.integers(20, 400))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    for _ in range(200):
        pts = [tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 255, 3)), width=int(rng.integers(1, 4)))
    im.save(path, quality=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--model", default="test_tiny")
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = list(args.files)
    tmp = tempfile.TemporaryDirectory()
    if not files:
        files = sorted((ROOT / "examples" / "photos").glob("*.jpg")) + [synthetic(Path(tmp.name) / "synthetic.jpg")]
    bb = load_backbone(args.model, weights=args.weights, device="cpu", dtype="fp32")
    print(f"{platform.machine()} {platform.processor() or ''} | Python {platform.python_version()} | "
          f"Pillow {Image.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')}) | torch {torch.__version__}")
    print(f"--size {args.size}, model {args.model}{' (random weights)' if bb.weights_id.startswith('random') else ''}")
    print(f"{'file':32s} {'original':>11s} {'draft':>11s} {'input':>9s} {'px max':>6s} {'px mean':>7s} "
          f"{'cls rel':>8s} {'patch rel':>9s}")
    for f in files:
        full, original = decode(f)
        draft, _ = decode(f, min_side_hint=args.size)
        a = model_pixels(full, size=args.size, patch_size=bb.patch_size, like=original)
        b = model_pixels(draft, size=args.size, patch_size=bb.patch_size, like=original)
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        x = torch.from_numpy(np.stack([normalize(Image.fromarray(p), mean=bb.mean, std=bb.std) for p in (a, b)]))
        with torch.inference_mode():
            t = bb.encode(x)
        cls_rel = ((t.cls[1] - t.cls[0]).abs().max() / t.cls[0].abs().max()).item()
        patch_rel = ((t.patches[1] - t.patches[0]).abs().max() / t.patches[0].abs().max()).item()
        print(f"{f.name[:32]:32s} {'%dx%d' % original:>11s} {'%dx%d' % draft.size:>11s} "
              f"{'%dx%d' % (a.shape[1], a.shape[0]):>9s} {d.max():6d} {d.mean():7.2f} {cls_rel:8.2g} {patch_rel:9.2g}")


if __name__ == "__main__":
    main()
