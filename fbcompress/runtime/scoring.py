"""The scoring interface shared by eval, check and bench.

A `Scorer` takes the design.md model inputs (numpy or torch, any batch size and text length) and returns the
match probability softmax(logits)[:, 1] as a numpy vector. The PyTorch backend lives here; ONNX Runtime and
TensorRT backends implement the same protocol, and `open_scorer` picks the backend from the model path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fbcompress.core.errors import FbError
from fbcompress.modeling.model import FashionBERT, PatchSpec

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "patches")


class Scorer(Protocol):
    backend: str
    spec: PatchSpec
    tokenizer_dir: Path
    name: str

    def logits(self, inputs: dict[str, torch.Tensor]) -> np.ndarray: ...


def match_probability(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[:, 1] / exp.sum(axis=1)


def scores_in_length_order(
    scorer: Scorer, lengths: Sequence[int], batch_of: Callable[[np.ndarray], dict], batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """Match probability of items 0..n-1, scored in batches of similar text length (VSL: each batch is padded
    only to its own longest text); `batch_of(indices)` builds the model inputs of those items. Scores come back
    in item order."""
    from tqdm import tqdm

    order = np.argsort(lengths, kind="stable")
    scores = np.empty(len(lengths), dtype=np.float64)
    for start in tqdm(range(0, len(order), batch_size), desc="pairs", disable=not progress, leave=False):
        chunk = order[start : start + batch_size]
        scores[chunk] = match_probability(scorer.logits(batch_of(chunk)))
    return scores


class TorchScorer:
    """PyTorch eager backend (CPU or CUDA)."""

    backend = "pytorch"

    def __init__(self, model: FashionBERT, tokenizer_dir: Path, name: str, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.spec = model.spec
        self.tokenizer_dir = tokenizer_dir
        self.name = name

    @torch.inference_mode()
    def logits(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        moved = {k: torch.as_tensor(inputs[k]).to(self.device) for k in INPUT_NAMES}
        return self.model(**moved).float().cpu().numpy()


def open_scorer(path: str | Path, device: str = "cpu", backend: str = "auto") -> Scorer:
    """Backend from the path: a checkpoint dir → PyTorch; `.onnx` → ONNX Runtime; `.plan` → TensorRT; an export
    bundle dir → its primary model. Bundle files are hash-checked against the bundle's manifest.json first.
    A `backend` other than "auto" that the form cannot run is bad input (a checkpoint in ONNX Runtime is exported
    first: `fbcompress.export.checkpoint_ort`)."""
    path = Path(path)
    scorer = _open_by_form(path, device)
    if backend != "auto" and not scorer.backend.startswith(backend):
        raise FbError(f"--backend {backend} cannot score {path}: it runs in {scorer.backend}")
    return scorer


def _open_by_form(path: Path, device: str) -> Scorer:
    if path.is_dir() and (path / "manifest.json").is_file() and not (path / "fbcompress.json").is_file():
        from fbcompress.bundle.names import SEARCH_KIND
        from fbcompress.bundle.store import Bundle

        bundle = Bundle.open(path)
        if bundle.manifest.get("kind") == SEARCH_KIND:
            raise FbError(f"{path} is a search bundle (a query encoder), not a scorer: use it with `fbcompress search` "
                          "or `eval-retrieval --model`")
        path = path / bundle.primary_model()
    if path.suffix == ".onnx":
        from fbcompress.runtime.onnxruntime import OrtScorer

        return OrtScorer.open(path, device)
    if path.suffix == ".plan":
        from fbcompress.runtime.tensorrt import TrtScorer

        return TrtScorer.open(path, "cuda" if device == "cpu" else device)
    if path.is_dir():
        from fbcompress.modeling.checkpoint import load_model

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FbError("--device cuda asked for, but torch sees no CUDA device")
        model, ckpt = load_model(path, device)
        return TorchScorer(model, ckpt.directory, str(path), device)
    if not path.exists():
        raise FbError(f"model not found: {path}")
    raise FbError(f"{path}: unsupported model form (expected a checkpoint directory, an .onnx or a .plan file)")


def match_scores(
    scorer: Scorer,
    texts: Sequence[str],
    images: Sequence[str | Path | np.ndarray],
    batch_size: int = 64,
) -> np.ndarray:
    """Match probability of each (text, image) pair, from raw inputs: what a notebook or a serving prototype needs.

    `images` are image files or uint8 RGB arrays at the model's image size (pixel models; never resized, as in
    training), or [num_patches, D] feature arrays (feature models). Texts are tokenized with the model's own
    tokenizer and truncated to its text length; pairs are scored in batches of similar text length (VSL), and the
    scores come back in the order given.
    """
    from fbcompress.data.loader import pad_texts
    from fbcompress.data.patches import image_to_patches, load_rgb
    from fbcompress.modeling.backbone import load_tokenizer

    if len(texts) != len(images):
        raise FbError(f"{len(texts)} texts but {len(images)} images: one image per text")
    spec = scorer.spec
    tokenizer = load_tokenizer(Path(scorer.tokenizer_dir))
    token_ids = tokenizer([str(t) for t in texts], truncation=True, max_length=spec.max_text_len)["input_ids"]

    def patches(image: str | Path | np.ndarray) -> np.ndarray:
        if spec.patch_encoder == "features":
            array = np.asarray(image, dtype=np.float32)
            if array.shape != (spec.num_patches, spec.patch_dim):
                raise FbError(f"patch features of shape {array.shape}, the model expects "
                              f"({spec.num_patches}, {spec.patch_dim})")
            return array
        if isinstance(image, np.ndarray):
            if image.shape != (spec.image_size, spec.image_size, 3) or image.dtype != np.uint8:
                raise FbError(f"an image array of shape {image.shape} ({image.dtype}): the model expects uint8 "
                              f"({spec.image_size}, {spec.image_size}, 3)")
            return image_to_patches(image, spec.grid)
        return image_to_patches(load_rgb(Path(image), spec.image_size), spec.grid)

    def batch_of(chunk: np.ndarray) -> dict:
        text = pad_texts([token_ids[i] for i in chunk], int(tokenizer.pad_token_id))
        return {"input_ids": text.input_ids, "attention_mask": text.attention_mask,
                "token_type_ids": text.token_type_ids,
                "patches": torch.from_numpy(np.stack([patches(images[i]) for i in chunk]))}

    return scores_in_length_order(scorer, [len(ids) for ids in token_ids], batch_of, batch_size)
