#!/usr/bin/env bash
# The GPU checks, as one short script for a session that has an NVIDIA device (see the device tool):
# the CUDA paths of the tests (1-GPU mixed precision, 2-GPU NCCL DDP when two GPUs exist) and NT3 at
# full size (60,483 features) in seconds per epoch, bf16 vs fp32, batch 5 (CANDLE's V100: 11 s) and 20.
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export RAY_AUTH_MODE=disabled
.venv/bin/python -m pytest -q -m gpu tests 2>&1 | tail -5
.venv/bin/python bench/gpu_nt3.py --epochs 4
