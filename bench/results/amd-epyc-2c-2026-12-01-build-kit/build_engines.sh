#!/usr/bin/env bash
# Build this bundle's TensorRT engines on the GPU that will serve them (engines are tied to the GPU model
# and TensorRT version that build them). Written by `fbcompress export --target tensorrt`; run it inside
# the bundle: bash build_engines.sh [precision ...]   (default: every precision below)
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
if [ ! -x "$TRTEXEC" ]; then
  echo "error: trtexec not found (put TensorRT's bin/ on PATH or set TRTEXEC=/path/to/trtexec)" >&2
  exit 2
fi
wanted=${*:-fp16 int8}

if [[ " $wanted " == *" fp16 "* ]]; then
  echo "building model.fp16.plan from model.fp16.onnx ..." >&2
  "$TRTEXEC" --onnx=model.fp16.onnx --saveEngine=model.fp16.plan \
      --profile=0 \
      --minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x192 \
      --optShapes=input_ids:1x16,attention_mask:1x16,token_type_ids:1x16,patches:1x64x192 \
      --maxShapes=input_ids:8x48,attention_mask:8x48,token_type_ids:8x48,patches:8x64x192 \
      --profile=1 \
      --minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x192 \
      --optShapes=input_ids:32x32,attention_mask:32x32,token_type_ids:32x32,patches:32x64x192 \
      --maxShapes=input_ids:128x48,attention_mask:128x48,token_type_ids:128x48,patches:128x64x192 \
      --stronglyTyped --timingCacheFile=timing.cache --memPoolSize=workspace:2048M
fi
if [[ " $wanted " == *" int8 "* ]]; then
  echo "building model.int8.plan from model.int8.trt.onnx ..." >&2
  "$TRTEXEC" --onnx=model.int8.trt.onnx --saveEngine=model.int8.plan \
      --profile=0 \
      --minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x192 \
      --optShapes=input_ids:1x16,attention_mask:1x16,token_type_ids:1x16,patches:1x64x192 \
      --maxShapes=input_ids:8x48,attention_mask:8x48,token_type_ids:8x48,patches:8x64x192 \
      --profile=1 \
      --minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x192 \
      --optShapes=input_ids:32x32,attention_mask:32x32,token_type_ids:32x32,patches:32x64x192 \
      --maxShapes=input_ids:128x48,attention_mask:128x48,token_type_ids:128x48,patches:128x64x192 \
      --stronglyTyped --timingCacheFile=timing.cache --memPoolSize=workspace:2048M
fi

echo "done: model.fp16.plan model.int8.plan (as asked)" >&2
