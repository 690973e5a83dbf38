"""The child-process check that guards FAISS's GPU code (retrieval/faiss_gpu.py). This machine
has FAISS's CPU build and no GPU; the abort and disagreement paths run stand-in child programs."""

from __future__ import annotations

from retrieval import faiss_gpu


def test_the_cpu_build_is_reported_with_the_install_fix():
    p = faiss_gpu.probe()
    assert p.gpus == 0
    assert "CPU build" in p.reason and "pip install 'retrieval[gpu]'" in p.reason


def test_a_child_killed_by_faiss_is_a_clear_no_not_a_crash():
    code = "import os, sys; sys.stderr.write('CUDA error 209: no kernel image is available\\n'); os.abort()"
    p = faiss_gpu.probe(code=code)
    assert p.gpus == 0 and "SIGABRT" in p.reason and "no kernel image" in p.reason and "\n" not in p.reason


def test_disagreeing_results_or_garbage_or_a_hang_mean_no_gpu():
    agree = 'import json; print(json.dumps({"build": "gpu", "gpus": 1, "agree": 0.2}))'
    assert "disagreed" in faiss_gpu.probe(code=agree).reason
    assert "failed (boom)" in faiss_gpu.probe(code="import sys; sys.exit('boom')").reason
    assert "did not finish" in faiss_gpu.probe(code="import time; time.sleep(30)", timeout=1).reason


def test_a_working_gpu_build_is_used():
    ok = 'import json; print(json.dumps({"build": "gpu", "gpus": 2, "agree": 1.0}))'
    assert faiss_gpu.probe(code=ok) == faiss_gpu.Probe(2)
