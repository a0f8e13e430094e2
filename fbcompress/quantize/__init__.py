"""`fbcompress quantize`: FP32 `model.onnx` of an export bundle → INT8 models + a quantization report.

Why this subsystem looks the way it does (the numbers are in the report of every run):

* Two INT8 files, because TensorRT and ONNX Runtime on a CPU want different graphs. TensorRT's explicit quantization
  needs symmetric INT8 Q/DQ (zero point 0) on the inputs of MatMul/Gemm, with LayerNorm, Softmax and GELU left in
  floating point: that is `model.int8.trt.onnx`, the source of `fbcompress export --target tensorrt --precision int8`.
  A strongly typed engine takes every type from the file, so outside the quantized GEMMs it carries FP16 with
  model.fp16.onnx's policy (LayerNorm, Softmax and the logits layer FP32, FP32 graph I/O): int8.plan
  then differs from fp16.plan only in the GEMMs. On an AVX2 CPU without VNNI the same symmetric graph runs *slower*
  than FP32 in ONNX Runtime (its S8S8 kernels are emulated), so the CPU file `model.int8.onnx` uses the activation
  type the CPU's ISA is fast at (U8S8 on AVX2, S8S8 on VNNI/AMX) and also weight-quantizes the embedding Gathers: the
  30522-row word-embedding table outweighs two encoder layers, and a file with only MatMuls quantized stays at ~83% of
  FP32.
* The CPU file is whichever of static QDQ and dynamic INT8 is faster *here* within tolerance (`cpu_choice.py`,
  recipe `quantize.cpu_file: auto`): on a narrow student the Q/DQ pairs around each small GEMM cost what INT8
  saves, and a static file measured slower than FP32 at batch 1; which wins depends on the width and the ISA.
* Quantization starts from the standard-ops `model.onnx`, never from the ORT-fused `model.ort.onnx` (its fused
  com.microsoft ops are not what TensorRT or the QDQ quantizer understand).
* Calibration runs real training pairs (matched and mismatched) in batches of different text lengths, as the model
  sees them under VSL; a single padded length would calibrate the attention ranges on the wrong mask pattern.
* Accuracy is guarded, not hoped for: the INT8 models are scored with the design.md metrics against the FP32 model;
  while the recipe's tolerance is broken on the val split, the MatMuls with the largest local quantization error
  are returned to FP (the report lists them and what they cost in latency). The final check runs on `--split`
  (test); beyond tolerance the command exits 1 and the bundle is left exactly as it was.
"""

from __future__ import annotations

ROLE_REPORT = "quantization-report"
METHODS = ("ort-static", "ort-dynamic", "inc")
