"""The feature store of a dataset dir: per-patch image features in float16 shards with a small index.

Layout (made by `fbcompress data features`, see `extract.py`)::

    DIR/features/<tag>/index.json          encoder identity, shard files with their rows and sha256
    DIR/features/<tag>/shard-000000.npy    float16 [rows, grid*grid, D], records in manifest order
    DIR/manifest-*.jsonl                   each record: "features": "features/<tag>/shard-....npy", "features_row": i
    DIR/dataset.json                       "features": the encoder identity, the tag, the index's sha256

One folder per encoder (`<tag>` names the encoder, the mode and the first 12 hex digits of its sha256), so the
manifests never point at features of another encoder than dataset.json names, even after an interrupted run. A
64 x 2048 float16 image costs 256 KiB: Fashion-Gen's 325k images are 85 GB, which is why reads are memory-mapped
and a load checks each shard's header (shape, dtype) and the index's sha256, not every shard's bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError

FEATURES_DIR = "features"
INDEX_FILE = "index.json"
INDEX_FORMAT = "fbcompress-features/1"


def features_meta(meta: dict) -> dict[str, Any] | None:
    """dataset.json's "features" entry (made by `data features`), or None for a dataset without a feature store."""
    entry = meta.get("features")
    return entry if isinstance(entry, dict) else None


class FeatureShards:
    """Reads rows of a dataset's feature shards (memory-mapped, opened once each, headers checked)."""

    def __init__(self, root: Path, entry: dict[str, Any], num_patches: int, feature_dim: int):
        self.root = root
        self.folder = f"{FEATURES_DIR}/{entry['tag']}/"
        index_path = root / self.folder / INDEX_FILE
        if not index_path.is_file():
            raise FbError(f"{root} names features in {self.folder} but {index_path} is missing (make them again "
                          f"with `fbcompress data features`)")
        if sha256_file(index_path) != entry.get("index_sha256"):
            raise FbError(f"{index_path} does not match the sha256 in {root / 'dataset.json'} (changed or cut; "
                          f"make the features again)")
        self.shape = (num_patches, feature_dim)
        self._open: dict[str, np.ndarray] = {}

    def row(self, record: dict) -> np.ndarray:
        """float32 [grid*grid, D] of one manifest record."""
        rel = str(record["features"])
        if not rel.startswith(self.folder):
            raise FbError(f"record {record['id']} points at features {rel}, not at {self.folder} that dataset.json "
                          "names (an interrupted `data features`? run it again)")
        shard = self._open.get(rel)
        if shard is None:
            shard = self._open[rel] = self._load(rel)
        index = record.get("features_row")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < shard.shape[0]:
            raise FbError(f"record {record['id']} has features_row {index!r}, outside {rel}'s {shard.shape[0]} rows")
        return np.asarray(shard[index], dtype=np.float32)

    def _load(self, rel: str) -> np.ndarray:
        path = self.root / rel
        try:
            shard = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FbError(f"feature shard not found: {path}") from None
        except ValueError as exc:
            raise FbError(f"cannot read feature shard {path}: {exc}") from None
        if shard.dtype != np.float16 or shard.ndim != 3 or tuple(shard.shape[1:]) != self.shape:
            raise FbError(f"feature shard {path} is {shard.dtype} {tuple(shard.shape)}, expected float16 "
                          f"[rows, {self.shape[0]}, {self.shape[1]}]")
        return shard


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FbError(f"cannot read {path}: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise FbError(f"{path} is not a feature index ({INDEX_FORMAT})")
    return index
