#!/usr/bin/env bash
# The standard GPU matrix on a target GPU: teacher vs student in PyTorch (fp32, fp16, fp16 + CUDA graphs, fp16
# torch.compile; --no-compile leaves that out), the student's ONNX graph on ONNX Runtime's CUDA and TensorRT (fp16)
# providers, and the bundle's TensorRT engines (fp16, int8); batch 1,8,32 x real text 8,16,32,64 (+ padded to 64),
# 100 timed runs each.
# Lengths beyond what a model runs are skipped for that model only, with the reason in the table and JSON (the
# quickstart engines' profiles, and ORT's TensorRT provider built from them, stop at 48 text tokens).
# Needs onnxruntime-gpu and tensorrt installed and the engines built on this GPU (fbcompress export --target
# tensorrt); whatever is missing or does not load is skipped with a note. Writes bench/results/<gpu>-<date>.{json,md}
# + plots.
#   bench/run_gpu.sh
#   DEVICE=cuda:1 bench/run_gpu.sh --no-compile
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" bench/matrix.py --preset gpu --device "${DEVICE:-cuda}" "$@"
