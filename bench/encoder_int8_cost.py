"""The image encoder in INT8 vs FP32 on this CPU: ONNX Runtime throughput side by side, size, feature error.

    python bench/encoder_int8_cost.py --work /tmp/encoder-int8 --batch 16 --runs 20

The encoder is a ResNet-50 (transformers' `ResNetConfig()` defaults) with random weights, as in feature_cost.py:
the architecture and FLOPs of microsoft/resnet-50, so the speed is what a real one costs, while the feature error
of random weights says nothing about a trained encoder's (and no AUC can be measured: the end-to-end guard in
`fbcompress quantize` is what decides for a real model). Grid mode, 256 px. `image_encoder.onnx` is exported as
`fbcompress export` does; the INT8 graph is made by the same `quantize_encoder` as `fbcompress quantize`
(static QDQ on every Conv, symmetric, per channel), calibrated on 32 synthetic catalogue images. Both graphs are
timed in alternating blocks (`evaluation.latency.time_interleaved`) on one batch of catalogue images.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calibration-images", type=int, default=32)
    args = parser.parse_args()
    import onnxruntime as ort
    from feature_cost import random_resnet50

    from fbcompress.data.dataset_dir import DatasetDir, EvalSetSizes
    from fbcompress.data.synth import synthesize_dataset
    from fbcompress.evaluation.latency import machine_info, time_interleaved
    from fbcompress.export.image_encoder_export import export_image_encoder
    from fbcompress.modeling.image_encoder import load_image_encoder
    from fbcompress.quantize.image_encoder import calibration_images, prepared_images, quantize_encoder

    encoder_dir = random_resnet50(args.work)
    data = args.work / "data"
    if not (data / "dataset.json").is_file():
        synthesize_dataset(data, products=200, image_size=64, seed=0, val_fraction=0.1, test_fraction=0.1,
                           eval_sizes=EvalSetSizes(10, 5))
    dataset = DatasetDir.open(data)
    encoder = load_image_encoder(encoder_dir, grid=8, mode="grid")
    identity = encoder.identity.to_dict()
    fp32, int8 = args.work / "image_encoder.onnx", args.work / "image_encoder.int8.onnx"
    export_image_encoder(encoder, fp32, 17)
    settings = quantize_encoder(fp32, int8, calibration_images(dataset, identity, args.calibration_images),
                                "MinMax", per_channel=True)
    images = prepared_images(dataset, dataset.records("test")[: args.batch], identity)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    outputs = [s.run(None, {"images": images})[0] for s in sessions]
    stats = time_interleaved([lambda s=s: s.run(None, {"images": images}) for s in sessions], runs=args.runs,
                             warmup=2, block=5)
    per_s = [args.batch / (st.p50_ms / 1000.0) for st in stats]
    print(json.dumps({
        "encoder": "ResNet-50 (random init)", "mode": "grid", "input_size": identity["input_size"],
        "batch": args.batch, "runs": args.runs, "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "fp32": {"p50_ms": stats[0].p50_ms, "p90_ms": stats[0].p90_ms, "images_per_s": round(per_s[0], 2),
                 "bytes": fp32.stat().st_size},
        "int8": {"p50_ms": stats[1].p50_ms, "p90_ms": stats[1].p90_ms, "images_per_s": round(per_s[1], 2),
                 "bytes": int8.stat().st_size, "convs_quantized": settings["convs_quantized"],
                 "convs": settings["convs"]},
        "int8_speedup": round(per_s[1] / per_s[0], 3),
        "feature_max_abs_diff": float(np.abs(outputs[1] - outputs[0]).max()),
        "feature_max_abs": float(np.abs(outputs[0]).max()),
        "machine": machine_info(None),
    }, default=str))


if __name__ == "__main__":
    main()
