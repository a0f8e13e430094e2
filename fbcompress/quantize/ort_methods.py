"""ONNX Runtime quantization: the symmetric QDQ graph for TensorRT, the CPU graph, and dynamic INT8.

All three start from the standard-ops FP32 `model.onnx`. Settings and why:

* `QuantFormat.QDQ`: the only format TensorRT reads, and the one ONNX Runtime's CPU kernels fuse best since 1.11.
* TensorRT file: `activation_type=QInt8` with `ActivationSymmetric` (TensorRT requires zero point 0), INT8 weights
  per output channel (`WeightSymmetric`), `QuantizeBias=False` (TensorRT does not read int32 bias DQs; the bias Add
  stays FP), no Q/DQ on MatMul outputs (`OpTypesToExcludeOutputQuantization`: TensorRT fuses the output scaling
  itself), op types MatMul/Gemm only (LayerNorm, Softmax, GELU stay FP). `quantize_trt` quantizes the FP32 graph;
  the pipeline then converts the result to FP16 outside the quantized ops (`export.onnx_export.convert_qdq_fp16`,
  model.fp16.onnx's policy: LayerNorm, Softmax and the logits layer FP32, FP32 graph I/O, opset >= 19 for float16
  Q/DQ scales), since a strongly typed TensorRT build would otherwise run everything but the GEMMs in FP32/TF32.
* CPU file: activation type from the CPU's ISA (`cpu.detect_isa`), asymmetric where it is uint8 (the zero point
  buys a bit of range for the skewed post-GELU activations), Gathers added so the embedding tables are stored INT8.
  Written with Optimum's `ORTQuantizer` (a `QuantizationConfig` built here, `operators_to_quantize` passed
  explicitly: `AutoQuantizationConfig`'s presets would add LayerNormalization or pick uint8 weights).
* Where Optimum does not fit, ONNX Runtime's API is used directly: calibration (`create_calibrator` over our VSL
  batches; Optimum's `fit` wants a fixed-length `datasets.Dataset`, one padded text length for every batch), the
  TensorRT file (Optimum's config cannot set `QuantizeBias=False` nor keep Q/DQ off MatMul/Gemm outputs, and an
  int32 bias DQ is not something TensorRT reads) and dynamic INT8 (`MatMulConstBOnly`, so attention's QK^T/PV
  stay FP, is not exposed by Optimum either).
* Calibration ranges are computed once (`calibrate`) and saved, so both files and every attempt of the accuracy
  fall-back loop use the same ranges without running calibration again.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fbcompress.core.errors import FbError
from fbcompress.quantize import graph as G
from fbcompress.quantize.calibration import BatchReader
from fbcompress.quantize.cpu import CpuIsa

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass
class StaticSettings:
    """What both static files share: calibration, per-channel weights, the nodes kept FP."""

    calibration_method: str = "MinMax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = False  # CPU file only (TensorRT wants full 8-bit weights)
    exclude: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a 'consider pre-processing' warning per call through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise FbError(f"calibration method {name} is not one of {', '.join(CALIBRATION_METHODS)}")
    return getattr(CalibrationMethod, name)


def calibrate(src: Path, reader: BatchReader, cache: Path, settings: StaticSettings) -> dict[str, Any]:
    """Run the calibration batches through `src` once; save ONNX Runtime's TensorsData to `cache` (JSON)."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"percentile": settings.percentile} if settings.calibration_method == "Percentile" else {}
    reader.rewind()
    with quiet(), tempfile.TemporaryDirectory(prefix="fbcompress-calib-") as tmp:
        calibrator = create_calibrator(
            Path(src),
            [*G.GEMM_OPS, *G.EMBEDDING_OPS],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_calibrate_method(settings.calibration_method),
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    return {
        "tool": "onnxruntime.quantization.create_calibrator",
        "method": settings.calibration_method,
        "tensors": len(ranges.data),
        "cache": cache.name,
    }


def _finish(path: Path, quantized_ops: tuple[str, ...]) -> dict[str, Any]:
    """Keep Q/DQ on the chosen nodes' inputs only, drop orphans, check the graph, save; returns what was changed."""
    model = onnx.load(str(path))
    rewired = G.restrict_to_quantized_consumers(model, quantized_ops)
    removed = G.remove_dangling_qdq(model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"quantized ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from None
    onnx.save(model, str(path))
    return {"consumers_rewired_to_fp": rewired, "qdq_nodes_removed": removed}


def quantize_trt(src: Path, dst: Path, cache: Path, settings: StaticSettings) -> dict[str, Any]:
    """Symmetric INT8 QDQ on MatMul/Gemm inputs of the FP32 graph: `model.int8.trt.onnx` before its FP16
    conversion (`convert_qdq_fp16`, done by the pipeline); ranges from `calibrate` (must have run)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(G.GEMM_OPS),
    }
    if not cache.is_file():
        raise FbError(f"no calibration ranges at {cache}: run calibrate() first")
    with quiet():
        quantize_static(
            str(src),
            str(dst),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(G.GEMM_OPS),
            per_channel=settings.per_channel,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(settings.exclude),
            calibrate_method=_calibrate_method(settings.calibration_method),
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    cleanup = _finish(dst, G.GEMM_OPS)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "int8 symmetric per tensor",
        "weights": f"int8 symmetric {'per channel' if settings.per_channel else 'per tensor'}",
        "op_types": list(G.GEMM_OPS),
        "extra_options": extra,
        "cleanup": cleanup,
    }


def quantize_cpu(src: Path, dst: Path, cache: Path, settings: StaticSettings, isa: CpuIsa) -> dict[str, Any]:
    """Static QDQ for ONNX Runtime on this CPU with Optimum's ORTQuantizer: MatMul/Gemm with the ISA's activation
    type, embedding Gathers INT8, ranges from `calibrate` (which must have run)."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization.calibrate import load_tensors_data
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import QuantizationConfig

    act = QuantType.QUInt8 if isa.activation == "uint8" else QuantType.QInt8
    symmetric = isa.activation == "int8"
    ops = [*G.GEMM_OPS, *G.EMBEDDING_OPS]
    config = QuantizationConfig(
        is_static=True,
        format=QuantFormat.QDQ,
        activations_dtype=act,
        activations_symmetric=symmetric,
        weights_dtype=QuantType.QInt8,
        weights_symmetric=True,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        nodes_to_exclude=list(settings.exclude),
        operators_to_quantize=ops,
    )
    with quiet(), tempfile.TemporaryDirectory(prefix="fbcompress-optimum-") as tmp:
        # the QDQ quantizer decides what is a float tensor from value_info: give it the shape-inferred graph, as
        # onnxruntime's quantize_static does for itself
        onnx.save(load_model_with_shape_infer(Path(src)), str(Path(tmp) / "model.onnx"))
        quantizer = ORTQuantizer.from_pretrained(tmp, file_name="model.onnx")
        out = quantizer.quantize(
            config, Path(tmp) / "out", file_suffix="int8", calibration_tensors_range=load_tensors_data(cache)
        )
        (out / "model_int8.onnx").replace(dst)
    cleanup = _finish(dst, G.GEMM_OPS)
    return {
        "tool": "optimum.onnxruntime.ORTQuantizer.quantize (QuantizationConfig, operators_to_quantize set here)",
        "format": "QDQ",
        "activations": f"{isa.activation} {'symmetric' if symmetric else 'asymmetric'} per tensor ({isa.scheme}: "
        f"{isa.reason})",
        "weights": f"int{7 if settings.reduce_range else 8} symmetric "
        f"{'per channel' if settings.per_channel else 'per tensor'}",
        "embeddings": "Gather tables stored int8 (weight-only)",
        "op_types": ops,
        "reduce_range": settings.reduce_range,
        "cleanup": cleanup,
    }


def quantize_dyn(src: Path, dst: Path, per_channel: bool, reduce_range: bool, exclude: list[str]) -> dict[str, Any]:
    """Dynamic INT8: weights INT8 offline, activations quantized per batch at run time (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = [*G.GEMM_OPS, *G.EMBEDDING_OPS]
    extra = {"MatMulConstBOnly": True}
    with quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=ops,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options=extra,
        )
    try:
        onnx.checker.check_model(str(dst), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"dynamic-quantized ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "format": "dynamic (MatMulInteger / DynamicQuantizeLinear)",
        "activations": "uint8 asymmetric, range computed per batch at run time",
        "weights": f"int{7 if reduce_range else 8} symmetric {'per channel' if per_channel else 'per tensor'}",
        "op_types": ops,
        "extra_options": extra,
        "reduce_range": reduce_range,
    }
