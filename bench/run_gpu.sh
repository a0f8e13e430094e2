#!/usr/bin/env bash
# The standard GPU matrix on a target GPU: teacher vs student in PyTorch (fp32, fp16, fp16 + CUDA graphs; --compile
# adds torch.compile), the student's ONNX graph on ONNX Runtime's CUDA and TensorRT providers, and the bundle's
# TensorRT engines (fp16, int8); batch 1,8,32 x real text 8,16,32,48 (+ padded to 48), 100 timed runs each.
# Needs onnxruntime-gpu and tensorrt installed and the engines built on this GPU (fbcompress export --target
# tensorrt); whatever is missing is skipped with a note. Writes bench/results/<gpu>-<date>.{json,md} + plots.
#   bench/run_gpu.sh
#   DEVICE=cuda:1 bench/run_gpu.sh --compile
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" bench/matrix.py --preset gpu --device "${DEVICE:-cuda}" "$@"
