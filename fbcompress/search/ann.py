"""The FAISS index over product embeddings: exact inner product for small catalogues, HNSW or IVF-PQ above a size.

Embeddings are L2-normalised, so inner product is cosine similarity and exact search is `IndexFlatIP`. Which ANN
index, and its knobs, come from the recipe's `index` section; the choice is recorded with the index, with its build
time, its serialised size (what a server holds in memory) and its recall@10 against exact search, measured on real
queries when the index is built (`recall_against_exact`).

`faiss-gpu`, where it is installed instead of `faiss-cpu`, moves search to the GPUs (`on_gpus`); the index file is
always the CPU form, which every FAISS build reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fbcompress.core.errors import FbError
from fbcompress.recipes import IndexSection

KINDS = ("exact", "hnsw", "ivfpq")


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise FbError("vector search needs FAISS: `pip install faiss-cpu` (or faiss-gpu on a GPU machine)") from None
    return faiss


def choose_kind(products: int, section: IndexSection) -> str:
    """Exact below `exact_below` products (its latency is fine there and its recall is 1), else the recipe's kind."""
    return "exact" if products < section.exact_below else section.kind


def ivf_lists(products: int, section: IndexSection) -> int:
    """The IVF lists: the recipe's, or 2·sqrt(n) (inside FAISS's guideline of 1 to 16·sqrt(n)), at most one list
    per 39 vectors (FAISS's floor for k-means)."""
    wanted = section.ivf_lists or int(2 * math.sqrt(products))
    return max(1, min(wanted, products // 39))


TRAIN_PER_LIST = 64  # k-means sample per IVF list: FAISS warns below 39; more costs time, not recall


def training_sample(vectors: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """The vectors IVF-PQ trains on: all of them, or a seeded sample of TRAIN_PER_LIST per list (k-means over a
    million 256-d vectors and 2,000 centroids would take most of an hour on a 2-core CPU; a sample of 128k, minutes)."""
    if len(vectors) <= TRAIN_PER_LIST * lists:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), TRAIN_PER_LIST * lists, replace=False)
    return vectors[np.sort(rows)]


@dataclass
class BuiltIndex:
    index: Any
    kind: str
    params: dict[str, Any]
    build_seconds: float


def build_faiss_index(vectors: np.ndarray, kind: str, section: IndexSection) -> BuiltIndex:
    """An index of `kind` over float32 [n, d] unit vectors, ids 0..n-1 (the row order of the embedding shards)."""
    faiss = faiss_module()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    started = time.perf_counter()
    params: dict[str, Any]
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
        params = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, section.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = section.hnsw_ef_construction
        index.hnsw.efSearch = section.hnsw_ef_search
        params = {"m": section.hnsw_m, "ef_construction": section.hnsw_ef_construction,
                  "ef_search": section.hnsw_ef_search}
    elif kind == "ivfpq":
        if dim % section.pq_bytes:
            raise FbError(f"index.pq_bytes {section.pq_bytes} does not divide the embedding size {dim}")
        lists = ivf_lists(n, section)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, lists, section.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        if n < 256:
            raise FbError(f"IVF-PQ needs at least 256 products to train its codebooks, the catalogue has {n} "
                          "(use exact search: raise index.exact_below)")
        index.train(training_sample(vectors, lists))
        index.nprobe = min(section.ivf_probe, lists)
        params = {"lists": lists, "pq_bytes": section.pq_bytes, "probe": index.nprobe}
    else:
        raise FbError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")
    index.add(vectors)
    return BuiltIndex(index, kind, params, time.perf_counter() - started)


def index_bytes(index: Any) -> int:
    """The serialised size of an index: what loading it costs in memory, near enough."""
    return int(faiss_module().serialize_index(index).nbytes)


def set_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    """Search-time knobs are not all kept by write_index (HNSW's efSearch is): set them again after a load."""
    if kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        index.nprobe = int(params["probe"])


def on_gpus(index: Any) -> Any:
    """The index on every GPU where faiss-gpu sees one (search only; the file stays the CPU form), else as is."""
    faiss = faiss_module()
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def top_k(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) [q, k] of the best k rows per query; rows are -1 where the index found fewer than k."""
    k = max(1, min(k, index.ntotal))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, rows


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows [q, k] of the exact top k by inner product, best first (numpy: a partial sort of each row)."""
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def recall_against_exact(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean |ANN top k ∩ exact top k| / k over the queries: what the approximation loses, whatever the model."""
    _, found = top_k(index, queries, k)
    exact = exact_top_k(vectors, queries, k)
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, exact, strict=True)]))
