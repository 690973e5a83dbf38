"""The child-process check that guards FAISS's GPU code (retrieval/faiss_gpu.py). This machine
has FAISS's CPU build and no GPU; the abort and disagreement paths run stand-in child programs."""

from __future__ import annotations

import pytest

from retrieval import faiss_gpu


@pytest.mark.subprocess
def test_the_cpu_build_is_reported_with_the_install_fix():
    p = faiss_gpu.probe()
    assert p.gpus == 0
    assert "CPU build" in p.reason and "pip install 'retrieval[gpu]'" in p.reason


@pytest.mark.subprocess
def test_a_child_killed_by_faiss_is_a_clear_no_not_a_crash():
    code = "import os, sys; sys.stderr.write('CUDA error 209: no kernel image is available\\n'); os.abort()"
    p = faiss_gpu.probe(code=code)
    assert p.gpus == 0 and "SIGABRT" in p.reason and "no kernel image" in p.reason and "\n" not in p.reason


@pytest.mark.subprocess
def test_disagreeing_results_or_garbage_or_a_hang_mean_no_gpu():
    agree = 'import json; print(json.dumps({"build": "gpu", "gpus": 1, "agree": 0.2}))'
    assert "disagreed" in faiss_gpu.probe(code=agree).reason
    assert "failed (boom)" in faiss_gpu.probe(code="import sys; sys.exit('boom')").reason
    assert "did not finish" in faiss_gpu.probe(code="import time; time.sleep(30)", timeout=1).reason


@pytest.mark.subprocess
def test_a_working_gpu_build_is_used():
    ok = 'import json; print(json.dumps({"build": "gpu", "gpus": 2, "agree": 1.0}))'
    assert faiss_gpu.probe(code=ok) == faiss_gpu.Probe(2)


# --- routing: which searches go to FAISS's GPU copy (the copy itself needs a GPU: a stand-in
# that answers from the host index and records what it was asked stands for it here) ---------

import dataclasses  # noqa: E402
import logging  # noqa: E402

import numpy as np  # noqa: E402

from retrieval import vectors as vindex  # noqa: E402


class _StandIn:
    def __init__(self, host):
        self.host, self.asked = host, []

    def search(self, xq, k):
        self.asked.append(k)
        return self.host.search(xq, k)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ivfpq(tmp_path_factory):
    xb = _unit(12000, 32, 0)
    return vindex.build(xb, np.arange(12000) + 7, kind="ivfpq", fingerprint="f", data_version=0,
                        exact_path=tmp_path_factory.mktemp("gpu") / "vectors.f32")


def test_gpu_copy_answers_what_faiss_gpu_can_select_and_the_host_the_rest(ivfpq):
    q = _unit(3, 32, 1)
    gpu = _StandIn(ivfpq.faiss_index)
    placed = dataclasses.replace(ivfpq, on_gpu=gpu, rescore_min=400)
    ivfpq = dataclasses.replace(ivfpq, rescore_min=400)
    assert all(np.array_equal(a, b) for a, b in zip(placed.search(q, 10), ivfpq.search(q, 10)))
    small = max(vindex.RESCORE_FACTOR * 10, ivfpq.rescore_min)
    assert gpu.asked == [small] and small <= vindex.GPU_MAX_K
    big_k = vindex.GPU_MAX_K // vindex.RESCORE_FACTOR + 1  # its shortlist is over FAISS's GPU limit
    placed.search(q, big_k)
    assert gpu.asked == [small]  # the host index took it


def test_place_uses_faiss_gpu_only_when_the_check_says_it_works(ivfpq, monkeypatch, caplog):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    copied = []
    monkeypatch.setattr(vindex.VectorIndex, "on_faiss_gpu",
                        lambda self, gpu: copied.append(gpu) or dataclasses.replace(self, on_gpu=_StandIn(self.faiss_index)))
    short = dataclasses.replace(ivfpq, rescore_min=vindex.GPU_MAX_K)  # a shortlist FAISS's GPU can return
    with caplog.at_level(logging.INFO, logger="retrieval.vectors"):
        same = vindex.place(short, use_gpu=None, faiss_gpus=lambda: (0, "this FAISS is the CPU build"))
    assert same is short and not copied and "CPU build" in caplog.text
    assert vindex.place(short, use_gpu=False, faiss_gpus=lambda: (1, "")) is short and not copied
    # a shortlist floor longer than FAISS's GPU k-selection returns: the CPU keeps the index
    long = dataclasses.replace(ivfpq, rescore_min=vindex.GPU_MAX_K + 1)
    assert vindex.place(long, use_gpu=None, faiss_gpus=lambda: (1, "")) is long and not copied
    assert ivfpq.rescore_min <= vindex.GPU_MAX_K  # the default one fits (4-dim codes: a short list suffices)
    placed = vindex.place(short, use_gpu=None, device="cuda:1", faiss_gpus=lambda: (2, ""))
    assert copied == [1] and isinstance(placed.on_gpu, _StandIn)
    assert vindex.place(short, use_gpu=True, device="cuda:2", faiss_gpus=lambda: (2, "")) is short  # no GPU 2
