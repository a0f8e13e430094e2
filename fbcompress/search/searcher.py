"""Search: a query encoder, the product index, and optionally a cross-encoder that re-ranks the top K.

The online path of a search, stage by stage: the query is embedded (`QueryEncoder`), the index returns the K nearest
products (FAISS; or exact inner product over the stored embeddings, `exact=True`), and a cross-encoder bundle may
score (query, product image) for those K and re-order them. Each stage is timed per query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS, DatasetDir
from fbcompress.data.loader import SplitData, pad_texts
from fbcompress.runtime.embedding import QueryEncoder, query_inputs, tokenize_queries
from fbcompress.runtime.scoring import Scorer, match_probability
from fbcompress.search.ann import exact_top_k, top_k
from fbcompress.search.store import ProductIndex, check_space


@dataclass
class Hit:
    product_id: str
    title: str
    score: float  # cosine similarity of query and product embeddings
    rerank_score: float | None = None  # the cross-encoder's match probability, when re-ranked


class ProductImages:
    """Patches of any product of the dataset an index was built from (its first record), for re-ranking."""

    def __init__(self, dataset: DatasetDir, tokenizer: Any, scorer: Scorer, index: ProductIndex):
        if index.manifest["data"]["fingerprint"] != dataset.fingerprint:
            raise FbError(f"the index {index.root} was built from other data than {dataset.root} (fingerprints "
                          "differ): re-ranking needs the products' images")
        self.splits = {name: SplitData(dataset, name, tokenizer, scorer.spec, cache_images=False) for name in SPLITS}
        self.where: dict[str, tuple[str, int]] = {}
        for name, data in self.splits.items():
            for row, product in enumerate(data.products):
                self.where.setdefault(product, (name, row))

    def patches(self, product_id: str) -> np.ndarray:
        try:
            split, row = self.where[product_id]
        except KeyError:
            raise FbError(f"product {product_id} is not in the dataset") from None
        return self.splits[split].patches(row)


class Reranker:
    """A cross-encoder scoring (query, product image) pairs: the second stage of a search."""

    def __init__(self, scorer: Scorer, images: ProductImages, tokenizer: Any):
        self.scorer = scorer
        self.images = images
        self.tokenizer = tokenizer

    def patches(self, product_ids: list[str]) -> np.ndarray:
        """The products' image tokens [K, 64, D]: read from the dataset here, a feature-store lookup in serving."""
        return np.stack([self.images.patches(p) for p in product_ids])

    def score(self, query: str, patches: np.ndarray) -> np.ndarray:
        """Match probability of `query` with each product's patches, in one batch (the same text for all)."""
        if not len(patches):
            return np.zeros(0)
        ids = self.tokenizer([query], truncation=True, max_length=self.scorer.spec.max_text_len)["input_ids"]
        text = pad_texts(ids * len(patches), int(self.tokenizer.pad_token_id))
        return match_probability(self.scorer.logits({"input_ids": text.input_ids, "attention_mask":
                                                     text.attention_mask, "token_type_ids": text.token_type_ids,
                                                     "patches": torch.from_numpy(patches)}))

    def scores(self, query: str, product_ids: list[str]) -> np.ndarray:
        return self.score(query, self.patches(product_ids)) if product_ids else np.zeros(0)


@dataclass
class Timings:
    """Seconds per stage for one query: `fetch` reads the re-ranked products' image tokens (a feature-store lookup
    in serving, PNG decoding here), `rerank` is the cross-encoder itself."""

    encode: float
    search: float
    rerank: float = 0.0
    fetch: float = 0.0

    @property
    def total(self) -> float:
        return self.encode + self.search + self.fetch + self.rerank


class Searcher:
    """Search one query at a time, as the online path does (batch 1), each stage timed."""

    def __init__(self, encoder: QueryEncoder, index: ProductIndex, reranker: Reranker | None = None,
                 exact: bool = False):
        check_space(index, encoder.tower.space or "", encoder.name)
        from fbcompress.modeling.backbone import load_tokenizer

        self.encoder = encoder
        self.index = index
        self.reranker = reranker
        self.exact = exact
        self.tokenizer = load_tokenizer(encoder.tokenizer_dir)
        self._vectors = index.embeddings.astype(np.float32) if exact else None

    def embed(self, query: str) -> np.ndarray:
        ids = tokenize_queries(self.tokenizer, [query], self.encoder.tower.max_query_len)
        return self.encoder.queries(query_inputs(ids, int(self.tokenizer.pad_token_id)))

    def nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k nearest products of one query vector [1, E]."""
        if self._vectors is not None:
            rows = exact_top_k(self._vectors, vector, k)[0]
            return rows, (self._vectors[rows] @ vector[0]).astype(np.float64)
        scores, rows = top_k(self.index.faiss_index, vector, k)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep].astype(np.float64)

    def search(self, query: str, k: int = 10, rerank_k: int = 0) -> tuple[list[Hit], Timings]:
        """The top `k` products (after re-ranking the top `rerank_k` when a reranker is set), and the stage times."""
        if k < 1:
            raise FbError(f"-k must be at least 1, got {k}")
        start = time.perf_counter()
        vector = self.embed(query)
        encoded = time.perf_counter()
        rows, scores = self.nearest(vector, max(k, rerank_k))
        searched = time.perf_counter()
        hits = [Hit(self.index.product_ids[r], self.index.titles[r], float(s)) for r, s in zip(rows, scores,
                                                                                              strict=True)]
        timings = Timings(encoded - start, searched - encoded)
        if self.reranker is not None and rerank_k > 0:
            head, tail = hits[:rerank_k], hits[rerank_k:]
            patches = self.reranker.patches([h.product_id for h in head])
            fetched = time.perf_counter()
            probabilities = self.reranker.score(query, patches)
            timings.fetch, timings.rerank = fetched - searched, time.perf_counter() - fetched
            for hit, p in zip(head, probabilities, strict=True):
                hit.rerank_score = float(p)
            head.sort(key=lambda h: -(h.rerank_score or 0.0))
            hits = head + tail
        return hits[:k], timings


def open_reranker(bundle: str | Path, index: ProductIndex, data: str | Path | None, device: str = "cpu") -> Reranker:
    """A cross-encoder (any scorer form) over the products of the index's dataset (`data`, or the one it records)."""
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.runtime.scoring import open_scorer

    scorer = open_scorer(bundle, device)
    dataset = DatasetDir.open(data if data is not None else index.manifest["data"]["root"])
    tokenizer = load_tokenizer(Path(scorer.tokenizer_dir))
    return Reranker(scorer, ProductImages(dataset, tokenizer, scorer, index), tokenizer)
