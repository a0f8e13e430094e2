"""The product index on disk: embedding shards any vector database can load, a FAISS index, and a manifest.

Layout (made by `fbcompress index build`, `build.py`)::

    INDEX/index.json                        format, the model and its embedding space, the data, the shards and
                                            the FAISS index with their sha256, measured costs and recall
    INDEX/embeddings/shard-NNNNNN.parquet   product_id (string), title (string), embedding (float16 [E])
    INDEX/faiss.index                       FAISS (CPU form), ids = row order of the shards

One row per product: its first record in manifest order (train, val, test), the image a listing shows first.
Loading checks the manifest and the sha256 of every file it reads, and refuses an index of another embedding space
than the query encoder's (`check_space`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError

INDEX_MANIFEST = "index.json"
INDEX_FORMAT = "fbcompress-index/1"
EMBEDDINGS_DIR = "embeddings"
FAISS_FILE = "faiss.index"


def shard_name(k: int) -> str:
    return f"{EMBEDDINGS_DIR}/shard-{k:06d}.parquet"


def write_shard(path: Path, product_ids: list[str], titles: list[str], embeddings: np.ndarray) -> None:
    """One Parquet shard, written to a temporary name and renamed (pyarrow: float16 fixed-size lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fbcompress.core.artifacts import atomic_file

    half = np.ascontiguousarray(embeddings, dtype=np.float16)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1)), half.shape[1])
    table = pa.table({"product_id": pa.array(product_ids, pa.string()), "title": pa.array(titles, pa.string()),
                      "embedding": vectors})
    with atomic_file(path) as handle:
        pq.write_table(table, handle)


def read_shard(path: Path, dim: int) -> tuple[list[str], list[str], np.ndarray]:
    """(product ids, titles, float16 [rows, dim]) of one shard; a shard of another shape is refused."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise FbError(f"cannot read embedding shard {path}: {exc}") from None
    if set(table.column_names) != {"product_id", "title", "embedding"}:
        raise FbError(f"{path} is not an embedding shard (columns {table.column_names})")
    column = table.column("embedding").combine_chunks()
    values = np.asarray(column.values.to_numpy(zero_copy_only=False))
    if values.dtype != np.float16 or values.size != table.num_rows * dim:
        raise FbError(f"{path} holds {values.dtype} embeddings of {values.size // max(1, table.num_rows)} values, "
                      f"expected float16 x {dim}")
    return (table.column("product_id").to_pylist(), table.column("title").to_pylist(),
            values.reshape(table.num_rows, dim))


@dataclass
class ProductIndex:
    """A loaded index: the manifest, product ids and titles in row order, the float16 embeddings, the FAISS index."""

    root: Path
    manifest: dict[str, Any]
    product_ids: list[str]
    titles: list[str]
    embeddings: np.ndarray  # float16 [n, E]
    faiss_index: Any

    @property
    def space(self) -> str:
        return str(self.manifest["model"]["space"])

    @property
    def kind(self) -> str:
        return str(self.manifest["ann"]["kind"])

    def row_of(self, product_id: str) -> int:
        if not hasattr(self, "_rows"):
            self._rows = {p: i for i, p in enumerate(self.product_ids)}
        try:
            return self._rows[product_id]
        except KeyError:
            raise FbError(f"product {product_id} is not in the index {self.root}") from None


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / INDEX_MANIFEST
    if not root.is_dir():
        raise FbError(f"index not found: {root}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FbError(f"{root} is not an index (no {INDEX_MANIFEST}); make one with `fbcompress index build`") from None
    except (OSError, ValueError) as exc:
        raise FbError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise FbError(f"{path} is not an fbcompress index manifest ({INDEX_FORMAT})")
    for key in ("model", "data", "shards", "ann", "products", "embedding_dim"):
        if key not in manifest:
            raise FbError(f"{path} lacks '{key}'")
    return manifest


def _verified(root: Path, rel: str, sha256: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise FbError(f"index file missing: {path}")
    if sha256_file(path) != sha256:
        raise FbError(f"{path} does not match the sha256 in {root / INDEX_MANIFEST} (changed or cut; build the index "
                      "again)")
    return path


def open_index(root: str | Path, faiss_on_gpus: bool = False) -> ProductIndex:
    """Load and verify an index (every shard's and the FAISS file's sha256, row counts)."""
    from fbcompress.search.ann import faiss_module, on_gpus, set_search_params

    root = Path(root)
    manifest = read_manifest(root)
    dim = int(manifest["embedding_dim"])
    ids: list[str] = []
    titles: list[str] = []
    parts = []
    for shard in manifest["shards"]:
        shard_ids, shard_titles, vectors = read_shard(_verified(root, shard["file"], shard["sha256"]), dim)
        if len(shard_ids) != shard["rows"]:
            raise FbError(f"{root / shard['file']} holds {len(shard_ids)} rows, the manifest says {shard['rows']}")
        ids += shard_ids
        titles += shard_titles
        parts.append(vectors)
    if len(ids) != manifest["products"]:
        raise FbError(f"{root} holds {len(ids)} products, its manifest says {manifest['products']}")
    ann = manifest["ann"]
    faiss = faiss_module()
    index = faiss.read_index(str(_verified(root, ann["file"], ann["sha256"])))
    if index.ntotal != len(ids) or index.d != dim:
        raise FbError(f"{root / ann['file']} holds {index.ntotal} vectors of {index.d}, the shards {len(ids)} of {dim}")
    set_search_params(index, ann["kind"], ann.get("params", {}))
    if faiss_on_gpus:
        index = on_gpus(index)
    return ProductIndex(root, manifest, ids, titles, np.concatenate(parts) if parts else np.zeros((0, dim)), index)


def check_space(index: ProductIndex, space: str, encoder_name: str) -> None:
    """An index answers only queries embedded in its own space (the same product tower's)."""
    if index.space != space:
        raise FbError(f"{encoder_name} embeds queries in another space than the index {index.root} (index: "
                      f"{index.space[:24]}, model: {space[:24]}): build the index with this model's product tower, "
                      "or search it with its own model")
