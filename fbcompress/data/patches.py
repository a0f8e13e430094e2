"""Images → image tokens. One place defines the preprocessing, so training, eval and export agree.

An RGB image of `image_size`² pixels is cut into a `grid`×`grid` raster of square patches (row-major), each
flattened as (row, column, channel) and scaled from 0..255 to [-1, 1]. The serving bundle records exactly this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fbcompress.core.errors import FbError

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB; a missing or unreadable file is one FbError line naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FbError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
        raise FbError(f"cannot read image {path}: {exc}") from None


def square_rgb(image: Image.Image, size: int) -> Image.Image:
    """What a catalogue image becomes before the model sees it (`data import`, the serving bundle's
    `preprocess.py`): RGB (grayscale and alpha dropped as PIL converts them), then LANCZOS-resized to size x size
    unless it already is."""
    rgb = image.convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.LANCZOS)


def load_rgb(path: Path, image_size: int) -> np.ndarray:
    """Read an image as uint8 [S, S, 3]; a wrong size is an error, never a silent resize."""
    arr = np.asarray(open_rgb(path))
    if arr.shape[:2] != (image_size, image_size):
        raise FbError(
            f"image {path} is {arr.shape[1]}x{arr.shape[0]} px, the model expects {image_size}x{image_size} "
            "(convert the data with a matching --image-size)"
        )
    return arr


def image_to_patches(image: np.ndarray, grid: int) -> np.ndarray:
    """uint8 [S, S, 3] → float32 [grid², 3·p·p] with p = S / grid."""
    size = image.shape[0]
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[1] != size or size % grid:
        raise FbError(f"image of shape {image.shape} cannot be cut into a {grid}x{grid} grid")
    p = size // grid
    scaled = (image.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
    patches = scaled.reshape(grid, p, grid, p, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(patches.reshape(grid * grid, p * p * 3))


def load_features(path: Path, num_patches: int, feature_dim: int) -> np.ndarray:
    """Precomputed per-patch features (e.g. 64×2048 ResNet-50) stored as a .npy file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FbError(f"feature file not found: {path}") from None
    except ValueError as exc:
        raise FbError(f"cannot read feature file {path}: {exc}") from None
    if arr.shape != (num_patches, feature_dim):
        raise FbError(f"feature file {path} has shape {arr.shape}, expected ({num_patches}, {feature_dim})")
    return arr.astype(np.float32, copy=False)
