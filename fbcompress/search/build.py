"""`fbcompress index build`: encode every product of the catalogue with the product tower, then index them.

The encoding is the offline pass over a catalogue of possibly millions of products, so it is resumable and
rank-sharded like `data features`: products are cut into shards of `index.shard_rows`, written one by one (to a
temporary name, then renamed) into a work folder beside the index; a run that finds the work of an interrupted run
with the same inputs (model weights, embedding space, data fingerprint, shard size) keeps its complete shards.
Under `torchrun` rank r encodes the shards k with k % world == r; rank 0, once all are there, builds the FAISS
index (`ann.py`), measures its recall@10 against exact search on the dataset's search queries, writes the manifest
last and renames the work folder into place (`store.py` has the layout).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fbcompress.core import distributed
from fbcompress.core.artifacts import atomic_write_json, open_work_dir, replace_dir, sha256_file
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS, DatasetDir
from fbcompress.data.loader import SplitData
from fbcompress.data.search_sets import search_queries
from fbcompress.modeling.backbone import load_tokenizer
from fbcompress.recipes import IndexSection, RetrieverSection
from fbcompress.runtime.embedding import embed_products, embed_queries, product_texts
from fbcompress.search.ann import build_faiss_index, choose_kind, faiss_module, index_bytes, recall_against_exact
from fbcompress.search.models import TowerModel, open_tower
from fbcompress.search.store import FAISS_FILE, INDEX_FORMAT, INDEX_MANIFEST, read_shard, shard_name, write_shard

WORK_VERSION = 1


@dataclass
class IndexOptions:
    model: Path
    data: Path
    out: Path
    index: IndexSection
    retriever: RetrieverSection  # the zero-shot tower's settings when `model` is a cross-encoder
    batch_size: int = 64
    device: str | None = None
    force: bool = False
    progress: bool = False
    log: Callable[[str], None] | None = None


@dataclass
class IndexSummary:
    out: Path
    products: int
    kind: str
    encoded: int  # products encoded by this run (the rest: resumed shards)
    resumed_shards: int
    encode_seconds: float
    recall_at_10: float | None
    index_bytes: int
    build_seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        rate = f" ({self.encoded / self.encode_seconds:.1f} products/s)" if self.encoded and self.encode_seconds else ""
        resumed = f"; {self.resumed_shards} shard(s) kept from an interrupted run" if self.resumed_shards else ""
        recall = f", recall@10 vs exact {self.recall_at_10:.4f}" if self.recall_at_10 is not None else ""
        return (f"index {self.out}: {self.products} products, {self.kind} ({self.index_bytes / 2**20:.1f} MiB, "
                f"built in {self.build_seconds:.2f} s{recall}); encoded {self.encoded} in {self.encode_seconds:.1f} s"
                f"{rate}{resumed}")


@dataclass
class Catalogue:
    """One row per product: its first record in manifest order, with the split data that reads its patches."""

    splits: dict[str, SplitData]
    rows: list[tuple[str, int]]  # (split, record row)

    @classmethod
    def of(cls, dataset: DatasetDir, tokenizer: Any, model: TowerModel, cache_images: bool) -> Catalogue:
        splits = {name: SplitData(dataset, name, tokenizer, model.tower.spec, cache_images) for name in SPLITS}
        seen: set[str] = set()
        rows = []
        for name in SPLITS:
            for row, product in enumerate(splits[name].products):
                if product not in seen:
                    seen.add(product)
                    rows.append((name, row))
        return cls(splits, rows)

    def product_id(self, i: int) -> str:
        split, row = self.rows[i]
        return self.splits[split].products[row]

    def record(self, i: int) -> dict:
        split, row = self.rows[i]
        return self.splits[split].records[row]

    def digest(self) -> str:
        digest = hashlib.sha256()
        for i in range(len(self.rows)):
            digest.update(f"{self.product_id(i)}\t{self.record(i)['id']}\n".encode())
        return digest.hexdigest()


def build_index(opts: IndexOptions) -> IndexSummary:
    """Run `index build` (see the module doc); one-line FbError on bad input, nothing half-written at `out`."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise FbError(f"--out {out} is a file")
    if (out / INDEX_MANIFEST).is_file() and not opts.force:
        raise FbError(f"{out} already holds an index: pass --force to build it again")
    if out.exists() and any(out.iterdir()) and not (out / INDEX_MANIFEST).is_file():
        raise FbError(f"--out {out} holds other files; pick an empty folder or a new path")
    dataset = DatasetDir.open(opts.data)
    ctx = distributed.setup(opts.device)
    try:
        model = open_tower(opts.model, opts.retriever, str(ctx.device))
        if model.spec.query_only:
            raise FbError(f"{opts.model} is a query encoder: its products are embedded by the retriever it was "
                          "distilled from; build the index with that retriever")
        tokenizer = load_tokenizer(model.checkpoint.directory)
        catalogue = Catalogue.of(dataset, tokenizer, model, cache_images=False)
        shard_rows = opts.index.shard_rows
        shards = [list(range(i, min(i + shard_rows, len(catalogue.rows))))
                  for i in range(0, len(catalogue.rows), shard_rows)]
        work = out.parent / f".{out.name}.work"
        state = {"version": WORK_VERSION, "space": model.spec.space, "weights": model.checkpoint.weights_sha256,
                 "data": dataset.fingerprint, "products": catalogue.digest(), "shard_rows": shard_rows,
                 "tower": model.spec.to_dict()}
        if ctx.is_main:
            open_work_dir(work, state, opts.log)
            (work / shard_name(0)).parent.mkdir(exist_ok=True)
        distributed.barrier(ctx)
        encode_started = time.perf_counter()
        pending = [k for k in range(len(shards)) if not (work / shard_name(k)).is_file()]  # every rank sees the same
        resumed = len(shards) - len(pending)
        if ctx.is_main and opts.log and resumed:
            opts.log(f"resuming: {resumed} of {len(shards)} shard(s) already encoded in {work}")
        encoded = _encode_shards(model, catalogue, tokenizer, shards, pending[ctx.rank::ctx.world_size], work, opts,
                                 ctx)
        distributed.barrier(ctx)
        encode_seconds = time.perf_counter() - encode_started
        summary = None
        if ctx.is_main:
            summary = _finish(model, catalogue, tokenizer, dataset, shards, work, out, opts, ctx,
                              encoded_total=sum(len(shards[k]) for k in pending), encode_seconds=encode_seconds,
                              resumed=resumed)
        distributed.barrier(ctx)
    finally:
        distributed.teardown(ctx)
    if summary is None:  # another rank: it encoded its shards; rank 0 reports
        return IndexSummary(out, len(catalogue.rows), "", encoded, 0, encode_seconds, None, 0, 0.0)
    return summary


def _encode_shards(model: TowerModel, catalogue: Catalogue, tokenizer: Any, shards: list[list[int]], mine: list[int],
                   work: Path, opts: IndexOptions, ctx: distributed.RunContext) -> int:
    encoder = model.encoder(str(ctx.device))
    field = model.spec.product_text
    total = sum(len(shards[k]) for k in mine)
    with tqdm(total=total, unit="product", desc="index: encoding", disable=not (opts.progress and ctx.is_main),
              mininterval=1.0) as bar:
        for k in mine:
            products = shards[k]
            vectors = np.empty((len(products), model.tower.embedding_dim), dtype=np.float32)
            by_split: dict[str, list[int]] = {}
            for j, i in enumerate(products):
                by_split.setdefault(catalogue.rows[i][0], []).append(j)
            for split, positions in by_split.items():
                data = catalogue.splits[split]
                rows = [catalogue.rows[products[j]][1] for j in positions]
                texts = product_texts([data.records[r] for r in rows], field)
                ids = tokenizer(texts, truncation=True, max_length=data.spec.max_text_len)["input_ids"]
                vectors[positions] = embed_products(encoder, data, rows, ids, opts.batch_size)
                bar.update(len(rows))
            titles = [str(catalogue.record(i).get("title") or catalogue.record(i)["text"]) for i in products]
            write_shard(work / shard_name(k), [catalogue.product_id(i) for i in products], titles, vectors)
    return total


def _finish(model: TowerModel, catalogue: Catalogue, tokenizer: Any, dataset: DatasetDir, shards: list[list[int]],
            work: Path, out: Path, opts: IndexOptions, ctx: distributed.RunContext, encoded_total: int,
            encode_seconds: float, resumed: int) -> IndexSummary:
    missing = [k for k in range(len(shards)) if not (work / shard_name(k)).is_file()]
    if missing:  # a rank failed without raising here: never publish an index with holes
        raise FbError(f"embedding shards {missing[:5]} are missing in {work}; run `index build` again to finish")
    dim = model.tower.embedding_dim
    entries, parts = [], []
    for k, products in enumerate(shards):
        path = work / shard_name(k)
        ids, _, vectors = read_shard(path, dim)
        if ids != [catalogue.product_id(i) for i in products]:
            raise FbError(f"{path} does not hold the products it should (another run's shard?); delete {work}")
        entries.append({"file": shard_name(k), "rows": len(ids), "sha256": sha256_file(path)})
        parts.append(vectors)
    vectors = np.concatenate(parts).astype(np.float32)
    kind = choose_kind(len(vectors), opts.index)
    built = build_faiss_index(vectors, kind, opts.index)
    faiss_module().write_index(built.index, str(work / FAISS_FILE))
    queries = _recall_queries(dataset, opts.index.recall_queries)
    recall = None
    if queries and kind != "exact":
        query_vectors = embed_queries(model.encoder(str(ctx.device)), queries, tokenizer=tokenizer)
        recall = recall_against_exact(built.index, vectors, query_vectors, 10)
    size = index_bytes(built.index)
    manifest = {
        "format": INDEX_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(Path(opts.model).resolve()), "kind": model.checkpoint.kind,
                  "zero_shot": model.zero_shot, "weights_sha256": model.checkpoint.weights_sha256,
                  "space": model.spec.space, "tower": model.spec.to_dict()},
        "data": {"root": str(dataset.root.resolve()), "fingerprint": dataset.fingerprint,
                 "synthetic": bool(dataset.meta.get("synthetic", False))},
        "products": len(vectors),
        "embedding_dim": dim,
        "embedding_dtype": "float16",
        "shards": entries,
        "ann": {"kind": kind, "params": built.params, "file": FAISS_FILE, "sha256": sha256_file(work / FAISS_FILE),
                "bytes": size, "build_seconds": round(built.build_seconds, 3),
                "recall_at_10_vs_exact": recall if kind != "exact" else 1.0,
                "recall_queries": len(queries) if kind != "exact" else 0},
        "encoding": {"seconds": round(encode_seconds, 3), "products": encoded_total, "resumed_shards": resumed,
                     "products_per_second": round(encoded_total / encode_seconds, 2) if encoded_total else None,
                     "world_size": ctx.world_size, "device": str(ctx.device), "batch_size": opts.batch_size},
    }
    atomic_write_json(work / INDEX_MANIFEST, manifest)
    (work / "state.json").unlink(missing_ok=True)
    replace_dir(work, out)
    return IndexSummary(out, len(vectors), kind, encoded_total, resumed, encode_seconds, recall, size,
                        built.build_seconds, manifest)


def _recall_queries(dataset: DatasetDir, limit: int) -> list[str]:
    """Up to `limit` distinct search query texts of the dataset (every split): what the ANN index is judged on."""
    texts: dict[str, None] = {}
    for split in SPLITS:
        try:
            queries = search_queries(dataset, split)
        except FbError:
            continue
        for query in queries:
            texts.setdefault(query.text)
    return list(texts)[:limit]
