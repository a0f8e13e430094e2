"""Cost of `fbcompress data features` per image, grid vs crop mode, and the feature store's size.

    python bench/feature_cost.py --work /tmp/feature-cost --grid-images 1000 --crop-images 20

The encoder is a ResNet-50 (transformers' `ResNetConfig()` defaults: bottleneck stages [3, 4, 6, 3], 2048-d)
with random weights, saved with save_pretrained: the same architecture and FLOPs as microsoft/resnet-50 (no
pretrained CNN ships offline, so its features mean nothing; only the cost is measured). Images are the synthetic
catalogue's (64 px, resized by the encoder's preprocessing: 256 px per image in grid mode, 224 px per patch in crop
mode). Each mode runs `make_features` on a fresh copy of the dataset; the timing excludes loading the encoder.
Prints one JSON line per mode: images, seconds, images/s, ms/image, store bytes, bytes per 1,000 images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def random_resnet50(work: Path) -> Path:
    """transformers' `ResNetConfig()` (ResNet-50: bottleneck stages [3, 4, 6, 3], 2048-d) with seeded random weights,
    saved once under `work` (no pretrained CNN ships offline: the FLOPs are real, the features mean nothing)."""
    from transformers import ResNetConfig, ResNetModel

    work.mkdir(parents=True, exist_ok=True)
    encoder = work / "resnet-50-random"
    if not (encoder / "config.json").is_file():
        torch.manual_seed(0)
        ResNetModel(ResNetConfig()).save_pretrained(encoder)
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--grid-images", type=int, default=1000)
    parser.add_argument("--crop-images", type=int, default=20, help="at least 20 (the synthetic catalogue's minimum)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from fbcompress.data.dataset_dir import EvalSetSizes
    from fbcompress.data.features.extract import FeatureOptions, make_features
    from fbcompress.data.synth import synthesize_dataset

    encoder = random_resnet50(args.work)
    for mode, images in (("grid", args.grid_images), ("crop", args.crop_images)):
        if images == 0:  # skip this mode
            continue
        data = args.work / f"data-{mode}"
        shutil.rmtree(data, ignore_errors=True)
        synthesize_dataset(data, products=images, image_size=64, seed=0, val_fraction=0.1, test_fraction=0.1,
                           eval_sizes=EvalSetSizes(10, 5))
        started = time.perf_counter()
        summary = make_features(FeatureOptions(data=data, encoder=encoder, mode=mode, crop_size=224,
                                               batch_size=args.batch_size if mode == "grid" else 1,
                                               device=args.device))
        wall = time.perf_counter() - started
        print(json.dumps({
            "mode": mode, "images": summary.images, "encode_seconds": round(summary.seconds, 2),
            "wall_seconds_with_encoder_load": round(wall, 2),
            "images_per_s": round(summary.images / summary.seconds, 3),
            "ms_per_image": round(1000 * summary.seconds / summary.images, 1), "store_bytes": summary.store_bytes,
            "store_mib_per_1000_images": round(summary.store_bytes / summary.images * 1000 / 2**20, 1),
            "torch_threads": torch.get_num_threads(), "device": args.device,
        }), flush=True)


if __name__ == "__main__":
    main()
