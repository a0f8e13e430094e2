"""Embedding queries and products with a dual tower in any form: the QueryEncoder protocol and its backends.

A query encoder takes `input_ids`, `attention_mask`, `token_type_ids` (segment Q) and returns `embedding` [B, E],
L2-normalised (design.md). Every form states the embedding space it embeds into (`space`), so that an index of
product embeddings is searched only by query encoders of its own space. Products are embedded offline by the
PyTorch tower (`TowerEncoder.products`), the catalogue's one pass.

Batches are cut in text-length order and each is padded only to its own longest text (VSL), as for scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fbcompress.core.errors import FbError
from fbcompress.data.loader import SplitData, pad_texts, pad_token_ids
from fbcompress.modeling.dual_tower import QUERY_SEGMENT, DualTower, TowerSpec

QUERY_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class QueryEncoder(Protocol):
    backend: str
    name: str
    tower: TowerSpec  # pooling, text field, query length, and the embedding space
    tokenizer_dir: Path

    def queries(self, inputs: dict[str, Any]) -> np.ndarray: ...


class TowerEncoder:
    """The PyTorch dual tower: queries (online) and products (the offline pass)."""

    backend = "pytorch"

    def __init__(self, model: DualTower, tokenizer_dir: Path, name: str, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.tower = model.tower
        self.spec = model.spec
        self.tokenizer_dir = Path(tokenizer_dir)
        self.name = name

    @torch.inference_mode()
    def queries(self, inputs: dict[str, Any]) -> np.ndarray:
        moved = {k: torch.as_tensor(inputs[k]).to(self.device) for k in QUERY_INPUTS}
        return self.model.encode_query(**moved).cpu().numpy()

    @torch.inference_mode()
    def products(self, inputs: dict[str, Any]) -> np.ndarray:
        moved = {k: torch.as_tensor(inputs[k]).to(self.device) for k in (*QUERY_INPUTS, "patches")}
        return self.model.encode_product(**moved).cpu().numpy()


def in_length_order(lengths: Sequence[int], embed: Callable[[np.ndarray], np.ndarray], batch_size: int,
                    progress: str | None = None) -> np.ndarray:
    """Embeddings of items 0..n-1 in batches of similar length (`embed(indices)` → [b, E]), in item order."""
    from tqdm import tqdm

    if not len(lengths):
        raise FbError("nothing to embed")
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    with tqdm(total=len(order), desc=progress, disable=progress is None, unit="item", mininterval=1.0,
              leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            vectors = embed(chunk)
            if out is None:
                out = np.empty((len(order), vectors.shape[1]), dtype=np.float32)
            out[chunk] = vectors
            bar.update(len(chunk))
    assert out is not None
    return out


def query_arrays(token_ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """int64 model inputs of a batch of tokenized queries, padded to the batch's longest query, segment Q on the real
    tokens (0 on padding). numpy only: a search bundle's `preprocess.py` carries this very function."""
    ids, mask = pad_token_ids(token_ids, pad_id)
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": np.where(mask == 1, QUERY_SEGMENT, 0).astype(np.int64)}


def query_inputs(token_ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """`query_arrays` as torch tensors."""
    return {name: torch.from_numpy(value) for name, value in query_arrays(token_ids, pad_id).items()}


def normalized_queries(texts: Sequence[str]) -> list[str]:
    """What a shopper typed, whitespace collapsed; an empty query is bad input (also in `preprocess.py`)."""
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise FbError(f"query {empty[0] + 1} of {len(texts)} is empty: a search needs at least one word")
    return [" ".join(str(t).split()) for t in texts]


def tokenize_queries(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """WordPiece ids of queries, `[CLS] query [SEP]`, cut at `max_len`; an empty query is bad input."""
    return tokenizer(normalized_queries(texts), truncation=True, max_length=max_len)["input_ids"]


def embed_queries(encoder: QueryEncoder, texts: Sequence[str], batch_size: int = 64,
                  tokenizer: Any | None = None) -> np.ndarray:
    """[n, E] float32 embeddings of query texts, tokenized with the encoder's own tokenizer."""
    if tokenizer is None:
        from fbcompress.modeling.backbone import load_tokenizer

        tokenizer = load_tokenizer(encoder.tokenizer_dir)
    ids = tokenize_queries(tokenizer, texts, encoder.tower.max_query_len)
    pad = int(tokenizer.pad_token_id)
    return in_length_order([len(t) for t in ids], lambda chunk: encoder.queries(query_inputs([ids[i] for i in chunk],
                                                                                                pad)), batch_size)


def product_texts(records: Sequence[dict], field: str) -> list[str]:
    """What the product side reads of each record: its title (the record's text where it has none), or its whole
    text (`TowerSpec.product_text`)."""
    if field == "text":
        return [str(r["text"]) for r in records]
    return [str(r.get("title") or "").strip() or str(r["text"]) for r in records]


def embed_products(encoder: TowerEncoder, data: SplitData, rows: Sequence[int], token_ids: Sequence[Sequence[int]],
                   batch_size: int, progress: str | None = None) -> np.ndarray:
    """[len(rows), E] embeddings of records `rows` of a split: `token_ids[i]` the text of rows[i], with its patches."""
    pad = data.pad_id

    def embed(chunk: np.ndarray) -> np.ndarray:
        text = pad_texts([token_ids[i] for i in chunk], pad)
        patches = torch.from_numpy(np.stack([data.patches(rows[i]) for i in chunk]))
        return encoder.products({"input_ids": text.input_ids, "attention_mask": text.attention_mask,
                                 "token_type_ids": text.token_type_ids, "patches": patches})

    return in_length_order([len(t) for t in token_ids], embed, batch_size, progress)
