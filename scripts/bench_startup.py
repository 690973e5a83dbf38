#!/usr/bin/env python3
"""Cold start: the wall time of each `retrieve` command in a fresh process, against importing torch.

    python scripts/bench_startup.py [--repeats 3] [--model dinov2_vits14] [--images 6]

In one run, each measured `--repeats` times in fresh subprocesses, round-robin (so a busy
machine slows every row alike), median reported:
  baselines   python -c "import torch"
              python -c "import torch; torch.load(CKPT)"      (CKPT: the model's weights file)
  commands    retrieve --help, retrieve models, retrieve info (a tiny index),
              retrieve query (one image against that index), retrieve index (one image, new index)
The tiny index holds --images synthetic 640x480 JPEGs embedded with a checkpoint of --model with
random weights in the official layout (scripts/bench_index.py; speed does not depend on the
values), at the index defaults. Commands without a model are compared with torch's import, the
model commands with torch's import plus reading the weights. Goals (issue 11): info <= 0.3x,
query <= 1.5x. Prints the table (markdown) and whether each goal is met.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_index import cpu_name, photos, random_checkpoint

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"retrieve info": 0.3, "retrieve query": 1.5}



def run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-2000:]}")
    return seconds



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--images", type=int, default=6)
    args = ap.parse_args()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    py = sys.executable
    retrieve = [py, "-m", "retrieval"]
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        root = Path(tmp)
        ckpt = random_checkpoint(args.model, root)
        photos(root / "photos", args.images)
        query_image = photos(root / "query", 1, seed=99)[0]
        one = photos(root / "one", 1, seed=7)[0].parent
        ix = root / "index"
        model = ["--model", args.model, "--weights", ckpt]
        run([*retrieve, "index", str(root / "photos"), "--index", str(ix), *model], env)  # not timed

        def index_one(r: int) -> list[str]:
            return [*retrieve, "index", str(one), "--index", str(root / f"new-{r}"), *model]

        torch_import = 'python -c "import torch"'
        torch_load = 'python -c "import torch; torch.load(CKPT)"'
        rows: list[tuple[str, object, str | None]] = [  # label, argv or argv(repeat), baseline
            (torch_import, [py, "-c", "import torch"], None),
            (torch_load, [py, "-c", f"import torch; torch.load({ckpt!r}, map_location='cpu', weights_only=True)"],
             None),
            ("retrieve --help", [*retrieve, "--help"], torch_import),
            ("retrieve models", [*retrieve, "models"], torch_import),
            ("retrieve info", [*retrieve, "info", "--index", str(ix)], torch_import),
            ("retrieve query", [*retrieve, "query", str(query_image), "--index", str(ix)], torch_load),
            ("retrieve index (1 image, new index)", index_one, torch_load),
        ]
        times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        for r in range(args.repeats):
            for label, argv, _ in rows:
                times[label].append(run(argv(r) if callable(argv) else argv, env))  # type: ignore[operator]

    import torch

    median = {label: statistics.median(t) for label, t in times.items()}
    print(f"{cpu_name()}, {os.cpu_count()} cores, {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
          f"Python {platform.python_version()}, PyTorch {torch.__version__}; {args.model} random weights "
          f"({Path(ckpt).name}), index of {args.images} images at the index defaults; "
          f"median of {args.repeats} fresh processes")
    print()
    print("| command | seconds | against | ratio | goal |")
    print("| --- | --- | --- | --- | --- |")
    unmet = []
    for label, _, base in rows:
        if base is None:
            print(f"| `{label}` | {median[label]:.2f} | | | |")
            continue
        ratio = median[label] / median[base]
        goal = GOALS.get(label)
        verdict = ""
        if goal is not None:
            verdict = f"<= {goal}x: {'met' if ratio <= goal else 'NOT met'}"
            if ratio > goal:
                unmet.append(label)
        print(f"| `{label}` | {median[label]:.2f} | `{base}` | {ratio:.2f}x | {verdict} |")
    print()
    print("goals met" if not unmet else f"goals NOT met: {', '.join(unmet)}")


if __name__ == "__main__":
    main()
