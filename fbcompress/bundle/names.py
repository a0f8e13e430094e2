"""The files of an export bundle, named once: every stage that writes or reads one uses these names.

Engines are named after their source graph's precision (`model.fp16.plan` from `model.fp16.onnx`, see
`export/build_kit.py`); the Triton repository is the `triton/` tree.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
README = "README.md"
TOKENIZER_DIR = "tokenizer"
PREPROCESS_FILE = "preprocess.py"  # raw text and image bytes -> the scorer's inputs (export/preprocessing.py)
TRITON_CLIENT_FILE = "triton_client.py"  # calls the bundle's Triton ensemble (export --target triton)
SERVE_SCRIPT_FILE = "serve_triton.py"  # serves triton/ with the nvidia-pytriton wheel's tritonserver
SERVING_REQUIREMENTS_FILE = "serving-requirements.txt"  # what that serving environment installs
ONNX_FILE = "model.onnx"  # portable FP32 graph, standard ONNX ops only: ORT, TensorRT and quantization start here
ORT_FILE = "model.ort.onnx"  # ORT transformer fusions: what ONNX Runtime serves
FP16_FILE = "model.fp16.onnx"  # mixed precision graph, the TensorRT FP16 engine's source
INT8_TRT_FILE = "model.int8.trt.onnx"  # QDQ graph from `fbcompress quantize`, the TensorRT INT8 engine's source
IMAGE_ENCODER_FILE = "image_encoder.onnx"  # images -> patch features, for models that read features (offline)
IMAGE_ENCODER_FP16_FILE = "image_encoder.fp16.onnx"  # its FP16 graph, the TensorRT FP16 encoder engine's source
IMAGE_ENCODER_INT8_FILE = "image_encoder.int8.onnx"  # its QDQ graph from `quantize` (only when the guard held)
INT8_CPU_FILE = "model.int8.onnx"  # ORT-quantized graph from `fbcompress quantize` (CPU / ONNX Runtime)
QUANTIZATION_JSON = "quantization.json"
QUANTIZATION_MD = "quantization.md"
BUILD_SCRIPT = "build_engines.sh"
TIMING_CACHE = "timing.cache"

# A search bundle (a dual-tower checkpoint exported: the online query encoder, export/search_bundle.py)
SEARCH_KIND = "search"
QUERY_ENCODER_FILE = "query_encoder.onnx"  # FP32, dynamic batch and text: ORT, TensorRT and quantize start here
QUERY_ENCODER_FP16_FILE = "query_encoder.fp16.onnx"  # mixed precision, the TensorRT FP16 engine's source
QUERY_ENCODER_INT8_FILE = "query_encoder.int8.onnx"  # INT8 for ONNX Runtime on CPUs (`quantize`, guarded)
QUERY_ENCODER_INT8_TRT_FILE = "query_encoder.int8.trt.onnx"  # symmetric QDQ, the TensorRT INT8 engine's source
SEARCH_SUBDIR = "search"  # the search bundle shipped inside a scorer bundle: a bundle of its own (own manifest)
