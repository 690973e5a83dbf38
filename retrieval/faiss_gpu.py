"""Whether FAISS can search on this machine's GPUs, asked once in a child process.

FAISS built for other GPUs does not raise an error when it meets a GPU it has no kernels for: it
prints "no kernel image is available" and aborts the whole process (seen with faiss-gpu-cu12
1.14.1 on an H200; docs/throughput.md). An abort cannot be caught, so before the engine hands an
index to FAISS's GPU code it runs the same kind of work (an IVF-PQ index trained, moved to GPU 0
and searched) in a child process, compares the results with the CPU's, and uses the GPU only if
the child exits cleanly with equal results. `retrieval[gpu]` installs a FAISS with kernels for
current GPUs (docs/index.md, "On a GPU").
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass

PROBE = r"""
import json, sys
import numpy as np
import faiss
out = {"build": "gpu" if hasattr(faiss, "StandardGpuResources") else "cpu", "gpus": 0}
if out["build"] == "gpu":
    out["gpus"] = faiss.get_num_gpus()
if out["gpus"] > 0:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 64)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cpu = faiss.IndexIVFPQ(faiss.IndexFlatIP(64), 64, 16, 16, 8, faiss.METRIC_INNER_PRODUCT)
    cpu.train(x)
    cpu.add(x)
    cpu.nprobe = 16
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    _, want = cpu.search(x[:64], 10)
    _, got = gpu.search(x[:64], 10)
    out["agree"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)]))
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Probe:
    """gpus: how many GPUs FAISS may use here (0: none); reason: why none, in one line."""

    gpus: int
    reason: str = ""


def probe(*, timeout: float = 300.0, code: str = PROBE) -> Probe:
    """Ask a child process whether FAISS's GPU code works here (see the module's docstring).
    `code` is the child's program (tests replace it)."""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return Probe(0, f"FAISS's GPU check did not finish in {timeout:.0f} s; searching on the CPU")
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        last = (r.stderr.strip().splitlines() or [""])[-1][:200]
        return Probe(0, f"FAISS's GPU code killed a test process ({name}{': ' + last if last else ''}); "
                        f"it has no kernels for this GPU: pip install 'retrieval[gpu]' for a current build")
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return Probe(0, f"FAISS's GPU check failed ({last}); searching on the CPU")
    if out.get("build") != "gpu":
        return Probe(0, "this FAISS is the CPU build; pip install 'retrieval[gpu]' to search on the GPU")
    if int(out.get("gpus", 0)) < 1:
        return Probe(0, "FAISS sees no GPU")
    if float(out.get("agree", 0.0)) < 0.9:
        return Probe(0, f"FAISS's GPU search disagreed with its CPU search (overlap {out.get('agree')}); "
                        f"searching on the CPU")
    return Probe(int(out["gpus"]))
