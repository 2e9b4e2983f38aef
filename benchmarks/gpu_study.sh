#!/usr/bin/env bash
# The GPU study (docs/results.md): CUDA tests, the GPU overhead rows, then ToST Table 2 shrunk to fit,
# all within BUDGET seconds (default 570: about 10 minutes on one H100 / H200). One command, no
# registry needed: torch, torchvision (and for (a) pytest) preinstalled, the project from this tree.
# The CIFAR-10 JPEG archive is read from .data/cifar10-jpeg.tar.gz (git-ignored: copy it there and
# carry it) or ../shared/data/. Results land in $OUT (default gpu-study-out/).
#
#   bash benchmarks/gpu_study.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python benchmarks/gpu_study.py --out "${OUT:-gpu-study-out}" --budget "${BUDGET:-570}" "$@"
