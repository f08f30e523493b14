#!/usr/bin/env bash
# The GPU checks of issue 12 in one run, for a machine with an NVIDIA GPU (see gpu_check.py).
# Usage: bash bench/gpu_check.sh [--steps 3] [--peak-tflops 989]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import ptgym" 2>/dev/null || python3 -m pip install --quiet --no-deps -e .
ptgym models pull smollm2-135m >/dev/null
python3 bench/gpu_check.py "$@"
