"""The image side of the paper: a convolutional vision backbone that turns an image into per-patch features.

FashionBERT feeds BERT one image token per patch of an 8x8 grid, each a 2048-d ResNet-50 feature. The backbone is
a local Hugging Face directory (`microsoft/resnet-50` or a user's own fine-tuned one, loaded by
`transformers.AutoModel`; nothing is downloaded). Two readings of "a feature per patch":

* `grid` (default): one forward pass of the whole image at the size that makes the backbone's last feature map
  exactly grid x grid (ResNet-50, stride 32: 256 px -> 8x8x2048); each cell is one patch feature.
* `crop`: the paper's literal reading: every patch cropped, resized to `crop_size` and passed through the backbone
  alone, its feature map average-pooled (64 passes per image; for comparison).

Both give [grid*grid, D] per image in row-major patch order (patch r*grid + c), the order of the pixel path.
`ImageEncoder` takes images as the serving side decodes them, float32 [B, S, S, 3] RGB in 0..255 at the input size
(crop mode: [B, grid*grid, c, c, 3], each image's crops), and does the scaling and normalisation itself, so the
exported `image_encoder.onnx` needs only a decode and a resize.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fbcompress.core.errors import FbError

MODES = ("grid", "crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what transformers' ResNet image processors use (microsoft/resnet-50)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PROBE_CELLS = 64  # the probe input is grid * this many pixels: a multiple of every power-of-two stride up to 64


@dataclass(frozen=True)
class EncoderIdentity:
    """What a dataset records about the encoder its features came from, and a model checks against."""

    name: str  # the directory's name, for people
    model_type: str
    sha256: str  # of config.json and the weight files: the identity a model checks
    feature_dim: int
    mode: str
    input_size: int  # grid mode: the image side; crop mode: each crop's side
    grid: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {**self.__dict__, "mean": list(self.mean), "std": list(self.std)}


def encoder_sha256(directory: Path) -> str:
    """sha256 over config.json and the weight files, so any change of architecture or weights changes it."""
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        path = directory / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def _normalisation(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's own image_mean/image_std (preprocessor_config.json) where it ships one, else ImageNet's."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        config = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in config["image_mean"]), tuple(float(v) for v in config["image_std"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FbError(f"{path} has no usable image_mean/image_std ({exc})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise FbError(f"{path}: image_mean/image_std must be 3 values each, std positive")
    return mean, std


def load_backbone(directory: str | Path) -> nn.Module:
    """A local HF vision backbone (AutoModel), in eval mode; one-line errors for anything else."""
    from transformers import AutoConfig, AutoModel

    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise FbError(f"image encoder directory {path} has no config.json (save one with save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError) as exc:
        raise FbError(f"{path}/config.json is not a Hugging Face model config: {str(exc).splitlines()[0]}") from None
    if getattr(config, "num_channels", None) != 3 or not hasattr(config, "hidden_sizes"):
        raise FbError(f"{path} holds a '{config.model_type}' model, not a convolutional vision backbone "
                      "(e.g. a ResNet saved by transformers)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FbError(f"image encoder directory {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError, RuntimeError) as exc:
        raise FbError(f"cannot load the image encoder in {path}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def _feature_map(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = backbone(pixel_values=pixels).last_hidden_state
    if out.ndim != 4:
        raise FbError(f"the image encoder's output has shape {tuple(out.shape)}, not a [B, C, h, w] feature map")
    return out


class ImageEncoder(nn.Module):
    """Images (float32 [B, S, S, 3], RGB 0..255, S = the input size; crop mode [B, grid*grid, c, c, 3]) -> patch
    features [B, grid*grid, D]."""

    def __init__(self, backbone: nn.Module, identity: EncoderIdentity, directory: Path | None = None):
        super().__init__()
        self.backbone = backbone
        self.identity = identity
        self.directory = directory  # where it was loaded from (the bundle records it, to rebuild it later)
        self.register_buffer("mean", torch.tensor(identity.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(identity.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        return (images.permute(0, 3, 1, 2) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.identity.grid
        if self.identity.mode == "grid":
            features = _feature_map(self.backbone, self._normalised(images))  # [B, D, grid, grid]
            return features.permute(0, 2, 3, 1).reshape(images.shape[0], grid * grid, -1)
        # crop: images are [B, grid*grid, crop, crop, 3], each image's crops in patch order (`crops_of`); the batch
        # axis stays the images' in both modes, so a server can batch requests along it (Triton does)
        side = images.shape[-2]
        pooled = _feature_map(self.backbone, self._normalised(images.reshape(-1, side, side, 3))).mean(dim=(2, 3))
        return pooled.reshape(images.shape[0], grid * grid, pooled.shape[1])

    def prepare(self, image: Image.Image) -> np.ndarray:
        return prepare_image(image, self.identity.mode, self.identity.input_size, self.identity.grid)


def prepare_image(image: Image.Image, mode: str, input_size: int, grid: int) -> np.ndarray:
    """A PIL image -> what the encoder takes for it: [S, S, 3] (grid) or [grid*grid, c, c, 3] (crop), float32 RGB
    0..255. A free function so that a stage holding only the bundle's record of the encoder (quantize) prepares
    images exactly as `data features` did."""
    rgb = image.convert("RGB")
    if mode == "grid":
        return np.asarray(rgb.resize((input_size, input_size), Image.BICUBIC), dtype=np.float32)
    return crops_of(np.asarray(rgb), grid, input_size)


def input_shape(mode: str, input_size: int, grid: int, batch: int) -> tuple[int, ...]:
    """The graph input's shape for `batch` images."""
    side = input_size
    return (batch, side, side, 3) if mode == "grid" else (batch, grid * grid, side, side, 3)


def crops_of(image: np.ndarray, grid: int, crop_size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [grid*grid, crop_size, crop_size, 3]: the grid's cells in row-major order (the
    pixel path's patches), each resized to crop_size."""
    height, width = image.shape[:2]
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    crops = []
    for r in range(grid):
        for c in range(grid):
            cell = Image.fromarray(image[rows[r]:rows[r + 1], cols[c]:cols[c + 1]])
            crops.append(np.asarray(cell.resize((crop_size, crop_size), Image.BICUBIC), dtype=np.float32))
    return np.stack(crops)


def _output_shape(backbone: nn.Module, size: int) -> tuple[int, ...]:
    """[C, h, w] of the backbone's last feature map for one size x size image."""
    with torch.no_grad():
        return tuple(_feature_map(backbone, torch.zeros(1, 3, size, size)).shape[1:])


def grid_input_size(backbone: nn.Module, grid: int) -> tuple[int, int]:
    """(the image side at which the backbone's last feature map is exactly grid x grid, i.e. its stride times
    grid; the feature size there)."""
    probe = grid * _PROBE_CELLS
    side = _output_shape(backbone, probe)[-1]
    if side == 0 or probe % side:
        raise FbError(f"the image encoder maps {probe} px to {side} cells (no whole stride): it cannot make a "
                      f"{grid}x{grid} grid")
    size = grid * (probe // side)
    dim, *made = _output_shape(backbone, size)
    if tuple(made) != (grid, grid):
        raise FbError(f"the image encoder's stride cannot make a {grid}x{grid} grid (at {size} px it gives "
                      f"{made[0]}x{made[1]})")
    return size, dim


def load_image_encoder(directory: str | Path, grid: int, mode: str = "grid", crop_size: int = 224) -> ImageEncoder:
    """The encoder of `directory` set up for `grid` and `mode` (see the module doc)."""
    if mode not in MODES:
        raise FbError(f"unknown feature mode {mode!r} (choose from {', '.join(MODES)})")
    if grid < 1:
        raise FbError(f"grid must be at least 1, got {grid}")
    path = Path(directory).expanduser()
    backbone = load_backbone(path)
    mean, std = _normalisation(path)
    if mode == "grid":
        size, dim = grid_input_size(backbone, grid)
    else:
        if crop_size < 1:
            raise FbError(f"--crop-size must be a positive number of pixels, got {crop_size}")
        size, dim = crop_size, _output_shape(backbone, crop_size)[0]
    identity = EncoderIdentity(
        name=path.resolve().name, model_type=str(backbone.config.model_type), sha256=encoder_sha256(path),
        feature_dim=dim, mode=mode, input_size=size, grid=grid, mean=tuple(mean), std=tuple(std),  # type: ignore[arg-type]
    )
    return ImageEncoder(backbone, identity, path.resolve())


def encode_batch(encoder: ImageEncoder, prepared: list[np.ndarray], device: torch.device) -> np.ndarray:
    """Patch features [B, grid*grid, D] float32 of prepared images (`ImageEncoder.prepare`)."""
    with torch.no_grad():
        out = encoder(torch.from_numpy(np.stack(prepared)).to(device))
    return out.float().cpu().numpy()
