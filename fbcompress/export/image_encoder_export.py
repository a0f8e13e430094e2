"""`image_encoder.onnx`: the bundle's image side for a model that reads patch features.

Product images are known ahead of time, so a serving team computes each catalogue image's patch features offline
with this graph (batched, on a GPU) and stores them; the online scorer then takes text + stored features. The graph
is the `ImageEncoder` that `data features` ran: images float32 [B, S, S, 3], RGB 0..255 at the input size (grid
mode; crop mode: each image's grid*grid crops, [B, grid*grid, c, c, 3]) -> patch features [B, grid*grid, D]. The
batch axis is the images' in both modes, so Triton's dynamic batching can stack requests along it.
Scaling and normalisation are inside, so the client only decodes and resizes. Export is parity-checked against
PyTorch as the scorer is.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.bundle.names import IMAGE_ENCODER_FILE
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.features.store import features_meta
from fbcompress.modeling.image_encoder import ImageEncoder, input_shape, load_image_encoder
from fbcompress.modeling.model import PatchSpec

INPUT = "images"
OUTPUT = "patch_features"
PARITY_BATCHES = (1, 3)


def resolve_image_encoder(spec: PatchSpec, explicit: Path | None, dataset: DatasetDir | None,
                          bundle_manifest: dict | None = None) -> ImageEncoder | None:
    """The encoder whose features the model reads (checked against the model's spec), or None when the model reads
    pixels or legacy features without a recorded encoder. Default directory: the one `data features` recorded in
    the dataset, else the one the bundle's earlier export recorded (re-exporting into a bundle needs no flags)."""
    if spec.patch_encoder != "features" or spec.feature_encoder is None:
        return None
    directory = explicit
    recorded = [(features_meta(dataset.meta) or {}).get("encoder_dir") if dataset is not None else None,
                (bundle_manifest or {}).get("models", {}).get(IMAGE_ENCODER_FILE, {}).get("encoder_dir")]
    for candidate in recorded:
        if directory is None and isinstance(candidate, str) and Path(candidate).is_dir():
            directory = Path(candidate)
    if directory is None:
        raise FbError(f"the model reads patch features of image encoder {spec.feature_encoder[:12]}: pass "
                      "--image-encoder DIR (the directory `data features` used) to put it in the bundle")
    if spec.feature_mode is None or spec.feature_input_size is None:
        raise FbError(f"the model's patch_spec names encoder {spec.feature_encoder[:12]} without its mode and input "
                      "size (a hand-edited config?): it cannot be rebuilt for the bundle")
    encoder = load_image_encoder(directory, spec.grid, spec.feature_mode, spec.feature_input_size)
    if not spec.encoder_matches(encoder.identity.to_dict()):
        found = encoder.identity
        raise FbError(f"{directory} is not the image encoder the model's features came from (sha256 "
                      f"{found.sha256[:12]}, {found.mode} mode, {found.input_size} px; the model: "
                      f"{spec.feature_encoder[:12]}, {spec.feature_mode}, {spec.feature_input_size} px)")
    return encoder


def sample_images(encoder: ImageEncoder, batch: int, seed: int = 0) -> np.ndarray:
    """What the graph takes for `batch` images: random RGB values 0..255 (crop mode: their grid*grid crops)."""
    identity = encoder.identity
    shape = input_shape(identity.mode, identity.input_size, identity.grid, batch)
    return np.random.default_rng(seed + batch).uniform(0.0, 255.0, size=shape).astype(np.float32)


def export_image_encoder(encoder: ImageEncoder, path: Path, opset: int) -> dict[str, Any]:
    """Export with a dynamic batch axis and `onnx.checker`; returns what the manifest records about the graph."""
    import onnx
    import torch

    from fbcompress.export.onnx_export import graph_io, save_onnx

    encoder = encoder.eval()
    example = torch.from_numpy(sample_images(encoder, 2))
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(encoder, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    proto = onnx.load(str(path))
    # The tracer leaves the output's patch and feature axes symbolic (they come out of a Reshape); they are fixed,
    # and saying so gives Triton and TensorRT [B, grid*grid, D] instead of [B, -1, -1].
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims[1:], (encoder.identity.grid**2, encoder.identity.feature_dim), strict=True):
        dim.Clear()
        dim.dim_value = size
    save_onnx(proto, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"exported image encoder fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return {"exporter": "torchscript", "torch": torch.__version__, "opset": opset,
            "export_seconds": round(time.perf_counter() - start, 3), "io": graph_io(path)}


def feature_parity(encoder: ImageEncoder, run: Callable[[np.ndarray], np.ndarray],
                   batches: Sequence[int] = PARITY_BATCHES) -> dict[str, Any]:
    """`run(images)` (ONNX Runtime, a TensorRT engine) vs PyTorch on random images at each batch size. Judged
    relative to the features' scale (max |feature|, at least 1): a ResNet-50's post-ReLU features reach tens, where
    float32 convolutions of two libraries differ by more than an absolute 1e-4 without being wrong."""
    import torch

    cases = []
    for batch in batches:
        images = sample_images(encoder, batch, seed=1)
        with torch.no_grad():
            expected = encoder(torch.from_numpy(images)).numpy()
        got = run(images)
        if got.shape != expected.shape:
            raise FbError(f"the image encoder returns {got.shape} for batch {batch}, PyTorch {expected.shape}")
        scale = max(1.0, float(np.abs(expected).max()))
        cases.append({"batch": batch, "max_abs_diff": float(np.abs(got - expected).max()), "scale": scale})
    return {"cases": cases, "max_relative_diff": max(case["max_abs_diff"] / case["scale"] for case in cases)}


def ort_features(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """images -> patch features with an ONNX Runtime CPU session of `path` (any of the encoder's graphs)."""
    from fbcompress.runtime.onnxruntime import cpu_session

    session = cpu_session(path)
    return lambda images: session.run([OUTPUT], {INPUT: images})[0]


def image_encoder_parity(encoder: ImageEncoder, path: Path, tolerance: float) -> dict[str, Any]:
    """The export gate of `image_encoder.onnx`: ONNX Runtime (CPU) vs PyTorch within `tolerance` (relative)."""
    import onnxruntime as ort

    parity = feature_parity(encoder, ort_features(path))
    return {**parity, "tolerance": tolerance, "passed": parity["max_relative_diff"] <= tolerance,
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider"}


def image_preprocessing(encoder: ImageEncoder) -> dict[str, Any]:
    """How a serving team feeds `image_encoder.onnx` (the manifest's preprocessing.image_encoder)."""
    identity = encoder.identity
    size, grid = identity.input_size, identity.grid
    common = {"channels": "RGB, height x width x channel, float32 values 0..255 (no scaling: the graph does it)",
              "normalize": {"mean": list(identity.mean), "std": list(identity.std),
                            "formula": "(x / 255 - mean) / std per channel, inside the graph"},
              "resize": "PIL bicubic (Image.BICUBIC), as `fbcompress data features` did"}
    if identity.mode == "grid":
        return {"mode": "grid", "input": f"[B, {size}, {size}, 3]: each image resized to {size}x{size} px", **common,
                "output": f"[B, {grid * grid}, {identity.feature_dim}]: cell r*{grid}+c of the last feature map"}
    return {"mode": "crop", **common,
            "input": f"[B, {grid * grid}, {size}, {size}, 3]: each image cut into a {grid}x{grid} grid of cells "
                     f"(row-major, edges at round(k*side/{grid})), each cell resized to {size}x{size} px",
            "output": f"[B, {grid * grid}, {identity.feature_dim}]: the average-pooled feature of each cell"}
