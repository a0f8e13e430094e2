#!/usr/bin/env bash
# The standard CPU matrix on this machine: teacher vs student (PyTorch fp32, student bf16), the student's ONNX graphs
# (fp32, INT8) on ONNX Runtime CPU; batch 1,8,32 x real text 8,16,32,48 (+ padded to 48), 100 timed runs each.
# Writes bench/results/<machine>-<date>.{json,md} and bench/results/<machine>-<date>/*.png.
# Run it on an otherwise idle machine: the figures are only as quiet as the box.
#   bench/run_cpu.sh                       # defaults: runs/quickstart, exported/quickstart, all usable cores
#   THREADS=1 bench/run_cpu.sh --runs 200  # extra flags go to bench/matrix.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=(--preset cpu)
if [[ -n "${THREADS:-}" ]]; then args+=(--threads "$THREADS"); fi
exec "$PY" bench/matrix.py "${args[@]}" "$@"
