#!/usr/bin/env python3
"""Regenerate the correspondence pictures in docs/img from files in this repository.

    python scripts/make_doc_images.py [--out docs/img]

Runs the same command a user would, with the random-weight `test_tiny` backbone (no real DINOv2
weights exist on the development machines, so the pictures show the drawing, not retrieval
quality):

    retrieve match examples/photos/waterfall.jpg examples/match/waterfall_shifted.jpg \\
        --model test_tiny -o match_example.png            # a good match: a photo and a crop of it
    retrieve match examples/photos/waterfall.jpg examples/photos/flower.webp \\
        --model test_tiny -o match_poor_example.png       # a poor one: two unrelated photos

and keeps match_example.png, match_example_heatmap.png and match_poor_example.png (the PCA
pictures and the poor pair's heat map are not shown in the docs, so they are deleted). Look at
the results before committing them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "match_example": ("examples/photos/waterfall.jpg", "examples/match/waterfall_shifted.jpg"),
    "match_poor_example": ("examples/photos/waterfall.jpg", "examples/photos/flower.webp"),
}
KEEP = {"match_example.png", "match_example_heatmap.png", "match_poor_example.png"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="Folder for the PNGs.")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (a, b) in PAIRS.items():
        out = args.out / f"{name}.png"
        cmd = [sys.executable, "-m", "retrieval", "match", str(ROOT / a), str(ROOT / b), "--model", "test_tiny",
               "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
        print(f"{name}: {r.stdout.strip()}")
        for extra in (f"{name}_heatmap.png", f"{name}_pca.png"):
            if extra not in KEEP:
                (args.out / extra).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
