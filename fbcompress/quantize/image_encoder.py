"""INT8 of `image_encoder.onnx`, shipped only when the guard holds end to end (images in, scores out).

A features model's accuracy depends on the features as much as on the scorer, so an INT8 encoder is judged by what
it does to the scores, not by how close its features are: every image of the guard split is encoded again with the
INT8 graph, the FP32 scorer (`model.onnx`) scores the split on those features, and the result is compared with the
FP32 scorer on the stored features (the FP32 encoder's) under the recipe's tolerances. Beyond them the INT8 encoder
is not written and the bundle keeps FP32/FP16 for the image side; the scorer's own INT8 files are not affected
(they were guarded on the stored features).

Quantization: ONNX Runtime static QDQ on every Conv (symmetric INT8 activations and per-channel weights, what a
strongly typed TensorRT build turns into INT8 convolutions), ranges from images of the train split prepared exactly
as `data features` prepared them. Also measured: the INT8 features' distance from the FP32 graph's and the CPU
throughput of both graphs on the guard split (ONNX Runtime, this machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.bundle.names import IMAGE_ENCODER_FILE, IMAGE_ENCODER_INT8_FILE
from fbcompress.core.errors import FbError
from fbcompress.quantize.record import ImageEncoderQuantization

ENCODE_BATCH = 16  # images per ONNX Runtime call while encoding a split
CONV_OPS = ("Conv",)


def encoder_record(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's record of its image encoder (identity: mode, input size, grid, sha256), or None."""
    entry = manifest.get("models", {}).get(IMAGE_ENCODER_FILE)
    return entry.get("encoder") if entry else None


def prepared_images(dataset, records: list[dict], identity: dict[str, Any]) -> np.ndarray:
    """The encoder's input for each record's image, as `data features` prepared it."""
    from fbcompress.data.patches import open_rgb
    from fbcompress.modeling.image_encoder import prepare_image

    missing = [r["id"] for r in records if not r.get("image")]
    if missing:
        raise FbError(f"record {missing[0]} of {dataset.root} has no image: the image encoder cannot be checked")
    return np.stack([prepare_image(open_rgb(dataset.root / r["image"]), identity["mode"], int(identity["input_size"]),
                                   int(identity["grid"])) for r in records])


def encode(runs: list[Callable[[np.ndarray], np.ndarray]], dataset, records: list[dict], identity: dict[str, Any],
           ) -> list[tuple[np.ndarray, float]]:
    """Patch features of every record's image with each of `runs` (the FP32 and INT8 graphs), each batch decoded
    and resized once for all of them; per run, the features and the seconds spent in it."""
    parts: list[list[np.ndarray]] = [[] for _ in runs]
    seconds = [0.0] * len(runs)
    for start in range(0, len(records), ENCODE_BATCH):
        images = prepared_images(dataset, records[start:start + ENCODE_BATCH], identity)
        for i, run in enumerate(runs):
            began = time.perf_counter()
            parts[i].append(run(images))
            seconds[i] += time.perf_counter() - began
    return [(np.concatenate(p), t) for p, t in zip(parts, seconds, strict=True)]


def calibration_images(dataset, identity: dict[str, Any], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` train images (a seeded draw), in batches of ENCODE_BATCH, as the calibrator's feeds."""
    records = dataset.records("train")
    if not records:
        raise FbError(f"{dataset.root} has no train split to calibrate the image encoder on")
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    chosen = [records[int(i)] for i in order]
    return [{"images": prepared_images(dataset, chosen[s:s + ENCODE_BATCH], identity)}
            for s in range(0, len(chosen), ENCODE_BATCH)]


def quantize_encoder(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], calibration_method: str,
                     per_channel: bool) -> dict[str, Any]:
    """Static QDQ INT8 of every Conv of `src` into `dst` (symmetric, TensorRT-ready); returns the settings."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from fbcompress.quantize.calibration import BatchReader
    from fbcompress.quantize.ort_methods import _calibrate_method, quiet

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    with quiet():
        quantize_static(str(src), str(dst), BatchReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(CONV_OPS), per_channel=per_channel, reduce_range=False,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=_calibrate_method(calibration_method), extra_options=extra)
    proto = onnx.load(str(dst))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"the quantized image encoder fails onnx.checker: {str(exc).splitlines()[0]}") from None
    dequantized = {out for node in proto.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    quantized = sum(1 for node in convs if node.input[0] in dequantized and node.input[1] in dequantized)
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "op_types": list(CONV_OPS),
            "activations": "int8 symmetric per tensor",
            "weights": f"int8 symmetric {'per channel' if per_channel else 'per tensor'}",
            "calibration_method": calibration_method, "convs_quantized": quantized, "convs": len(convs),
            "extra_options": extra}


def guard_encoder(run, work: Path) -> tuple[ImageEncoderQuantization, Path | None]:
    """Quantize the bundle's image encoder and guard it end to end; returns the report section and the file to
    ship (None when it is not shipped). `run` is the quantize pipeline's `_Run` (bundle, dataset, FP32 scores)."""
    from fbcompress.export.image_encoder_export import ort_features
    from fbcompress.quantize import measure
    from fbcompress.quantize.record import Comparison

    section, opts = run.section, run.opts
    identity = encoder_record(run.bundle.manifest)
    if section.image_encoder == "off":
        return ImageEncoderQuantization(status="skipped", reason="quantize.image_encoder is off"), None
    if identity is None:  # the pipeline calls this only for bundles that hold an encoder
        raise FbError(f"{run.bundle.root} has no {IMAGE_ENCODER_FILE} with a recorded encoder to quantize")
    run.bundle.verify(IMAGE_ENCODER_FILE)
    src = run.bundle.root / IMAGE_ENCODER_FILE
    dst = work / IMAGE_ENCODER_INT8_FILE
    count = int(section.image_encoder_calibration_images)
    run.say(f"image encoder: calibrating on {count} train images, INT8 QDQ of every Conv ...")
    settings = quantize_encoder(src, dst, calibration_images(run.dataset, identity, count),
                                section.calibration_method, section.per_channel)
    data = run.split_data(opts.split)
    run.say(f"image encoder: encoding the {len(data)} images of {opts.split} with FP32 and INT8 graphs ...")
    (fp32_features, fp32_seconds), (int8_features, int8_seconds) = encode(
        [ort_features(src), ort_features(dst)], run.dataset, data.records, identity)
    scale = max(1.0, float(np.abs(fp32_features).max()))
    run.say(f"guard: scoring FP32 {run.rel} on INT8-encoder features of {opts.split} ...")
    comparison = Comparison(**measure.compare(
        run.reference(opts.split),
        measure.score(run.src, f"{run.rel} on {IMAGE_ENCODER_INT8_FILE} features", run.spec, run.tokenizer_dir,
                      run.dataset, data.with_patches(int8_features.astype(np.float32)), opts.split,
                      progress=opts.progress),
        section.max_auc_drop, section.max_rank10_drop,
    ), scored_file=f"FP32 {run.rel} on features from {IMAGE_ENCODER_INT8_FILE}")
    images = len(data)
    record = ImageEncoderQuantization(
        status="shipped" if comparison.passed else "not-shipped",
        reason="the end-to-end guard held" if comparison.passed else
        "end-to-end guard: " + measure.describe_breaks(IMAGE_ENCODER_INT8_FILE,
                                                       [b.model_dump() for b in comparison.breaks])
        + f"; the bundle keeps {IMAGE_ENCODER_FILE} (FP32) and its FP16 engine for the image side",
        file=IMAGE_ENCODER_INT8_FILE if comparison.passed else None,
        calibration_images=count, settings=settings, accuracy=comparison,
        features={"images": images, "max_abs_diff_vs_fp32_graph": float(np.abs(int8_features - fp32_features).max()),
                  "scale": scale,
                  "mean_abs_diff_vs_fp32_graph": float(np.abs(int8_features - fp32_features).mean())},
        throughput={"runtime": "onnxruntime CPUExecutionProvider", "batch": ENCODE_BATCH,
                    "fp32_images_per_s": images / fp32_seconds if fp32_seconds > 0 else None,
                    "int8_images_per_s": images / int8_seconds if int8_seconds > 0 else None},
        bytes=dst.stat().st_size, fp32_bytes=src.stat().st_size,
    )
    return record, dst if comparison.passed else None
