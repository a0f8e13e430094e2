"""Turning a dataset split into model batches.

Texts are tokenized once up front (fast tokenizer, truncated to the model's max text length); images are decoded
on demand and, for small datasets, cached in memory as uint8. Batches are padded only to their own longest text
(variable sequence length): no global maximum anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.features.store import FeatureShards, features_meta
from fbcompress.data.patches import image_to_patches, load_features, load_rgb
from fbcompress.modeling.model import PatchSpec


@dataclass
class TextBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor


def pad_token_ids(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and attention mask [B, T], right-padded to the longest text *of this batch* (VSL). numpy only: the
    serving bundle's `preprocess.py` carries this very function (export/preprocessing.py)."""
    longest = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, seq in enumerate(token_ids):
        ids[row, : len(seq)] = np.asarray(seq, dtype=np.int64)
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_texts(token_ids: Sequence[Sequence[int]], pad_id: int) -> TextBatch:
    """Right-pad to the longest text *of this batch* (VSL), as torch tensors; segment 0 everywhere."""
    ids, mask = pad_token_ids(token_ids, pad_id)
    input_ids = torch.from_numpy(ids)
    return TextBatch(input_ids, torch.from_numpy(mask), torch.zeros_like(input_ids))


class SplitData:
    """One split's records with tokenized texts and patch access by record index or id."""

    def __init__(
        self,
        dataset: DatasetDir,
        split: str,
        tokenizer: PreTrainedTokenizerBase,
        spec: PatchSpec,
        cache_images: bool = True,
    ):
        self.dataset = dataset
        self.split = split
        self.spec = spec
        self.records = dataset.records(split)
        if not self.records:
            raise FbError(f"split '{split}' of {dataset.root} is empty")
        self.index = {record["id"]: i for i, record in enumerate(self.records)}
        texts = [str(record["text"]) for record in self.records]
        empty = [record["id"] for record, text in zip(self.records, texts, strict=True) if not text.strip()]
        if empty:
            raise FbError(f"record {empty[0]} in manifest-{split}.jsonl has an empty text")
        encoded = tokenizer(texts, truncation=True, max_length=spec.max_text_len)
        self.token_ids: list[list[int]] = encoded["input_ids"]
        self.token_strings = [tokenizer.convert_ids_to_tokens(ids) for ids in self.token_ids]
        self.pad_id = int(tokenizer.pad_token_id)
        self.products = [str(record["product_id"]) for record in self.records]
        self._cache: dict[int, np.ndarray] = {}
        self._cache_images = cache_images
        self._features = _feature_store(dataset, spec)

    def __len__(self) -> int:
        return len(self.records)

    def position(self, record_id: str) -> int:
        try:
            return self.index[record_id]
        except KeyError:
            raise FbError(f"eval set names record {record_id}, which is not in the {self.split} split") from None

    def patches(self, i: int) -> np.ndarray:
        if i in self._cache:
            return self._cache[i]
        record = self.records[i]
        if self.spec.patch_encoder == "features":
            if "features" not in record:
                raise FbError(f"record {record['id']} has no 'features' file but the model uses features")
            if self._features is not None:
                out = self._features.row(record)
            else:  # one .npy per record (docs/formats.md)
                out = load_features(self.dataset.root / record["features"], self.spec.num_patches, self.spec.patch_dim)
        else:
            image = load_rgb(self.dataset.root / record["image"], self.spec.image_size)
            out = image_to_patches(image, self.spec.grid)
        if self._cache_images:
            self._cache[i] = out
        return out

    def with_patches(self, patches: np.ndarray) -> SplitData:
        """This split with every record's patches replaced by `patches[i]` (same texts and eval sets): how
        `quantize` scores the scorer on features from another image encoder (its INT8 graph)."""
        expected = (len(self.records), self.spec.num_patches, self.spec.patch_dim)
        if tuple(patches.shape) != expected:
            raise FbError(f"replacement patches are {tuple(patches.shape)}, the split needs {expected}")
        other = copy.copy(self)
        other._cache = dict(enumerate(patches))
        other._cache_images = True
        return other

    def batch(self, image_rows: Sequence[int], text_rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for pairs (image of record a, text of record b)."""
        text = pad_texts([self.token_ids[i] for i in text_rows], self.pad_id)
        patches = torch.from_numpy(np.stack([self.patches(i) for i in image_rows]))
        return {
            "input_ids": text.input_ids,
            "attention_mask": text.attention_mask,
            "token_type_ids": text.token_type_ids,
            "patches": patches,
        }


def _feature_store(dataset: DatasetDir, spec: PatchSpec) -> FeatureShards | None:
    """The dataset's feature store for a model that reads features, after checking that they are the ones the model
    was trained on (same encoder, same size); None for a pixel model or legacy one-file-per-record features."""
    if spec.patch_encoder != "features":
        return None
    entry = features_meta(dataset.meta)
    if entry is None:
        if spec.feature_encoder is not None:
            raise FbError(f"{dataset.root} has no patch features; the model reads features of encoder "
                          f"{spec.feature_encoder[:12]} (make them with `fbcompress data features --data "
                          f"{dataset.root} --encoder DIR`)")
        return None
    encoder = entry.get("encoder") or {}
    if spec.feature_encoder is not None and not spec.encoder_matches(encoder):
        raise FbError(f"the features of {dataset.root} come from encoder {encoder.get('name')} "
                      f"({str(encoder.get('sha256'))[:12]}, {encoder.get('mode')} mode, {encoder.get('input_size')} "
                      f"px), the model was trained on features of encoder {spec.feature_encoder[:12]} "
                      f"({spec.feature_mode} mode, {spec.feature_input_size} px): make them again with that one")
    shape = (entry.get("num_patches"), entry.get("feature_dim"))
    if shape != (spec.num_patches, spec.patch_dim):
        raise FbError(f"the features of {dataset.root} are {shape[0]} x {shape[1]} per image, the model reads "
                      f"{spec.num_patches} x {spec.patch_dim}")
    return FeatureShards(dataset.root, entry, spec.num_patches, spec.patch_dim)
