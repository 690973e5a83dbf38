#!/usr/bin/env bash
# The GPU measurements in docs/throughput.md, as run on a lent H100 box that has PyTorch, timm and
# CUDA 13 but no internet. .gpu/ (git-ignored, carried to the machine) holds what it lacks:
#   site.tar.xz         faiss, sqlite-utils (+ deps), pillow-heif, unpacked (pip download --no-deps for
#                       cp312 manylinux, then unzip). The recorded run used faiss-gpu-cu12 1.14.1 with
#                       libcudart.so.12 and faiss/_preload_library.json emptied (it looks for pip's CUDA
#                       12 packages); since GPU search is torch (docs/index.md), faiss-cpu is enough.
#   libcublas*.so.12    only with faiss-gpu-cu12: built from scripts/gpu/cublas12_shim.c (faiss's CUDA 12
#                       cuBLAS calls -> the machine's CUDA 13 cuBLAS)
# Each stage runs even if an earlier one failed; logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
tar -C /tmp/site -xJf .gpu/site.tar.xz
cublas=$(find /opt /usr/local /usr/lib -name 'libcublas.so.13*' 2>/dev/null | head -1)
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=$PWD/.gpu:/tmp/site:$(dirname "${cublas:-/x/y}"):${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi -L; nproc; echo "cublas 13: $cublas"
python3 -c "import torch, torchvision, timm, faiss; print(torch.__version__, torchvision.__version__, timm.__version__, faiss.__version__, 'faiss GPUs', faiss.get_num_gpus())"
python3 scripts/bench_gpu.py --awkward tests/data/awkward-images --skip "${SKIP:-}" 2>&1 | grep -v "WEBP\|Corrupt JPEG" | tee "$OUT/checks.log"
python3 -c "import sys; sys.path.insert(0, 'scripts'); from bench_index import make_photos; from pathlib import Path; make_photos(Path('/tmp/photos'), ${PHOTOS:-2000}, 64)"
du -sh /tmp/photos
B="python3 scripts/bench_index.py --device cuda --dtype bf16 --folder /tmp/photos --workers 15 --stages"
{
  $B --model dinov2_vits14 --size 224 --batch 128 --parts model,index --decode gpu
  $B --model dinov2_vits14 --size 224 --batch 128 --parts index --decode gpu --readers processes
  $B --model dinov2_vits14 --size 224 --batch 128 --parts index --decode cpu
  $B --model dinov2_vitb14 --size 518 --batch 64 --parts model,index --decode gpu
  $B --model dinov2_vitb14 --size 518 --batch 64 --parts index --decode cpu
} 2>&1 | tee "$OUT/throughput.log"
timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/tests.log"
