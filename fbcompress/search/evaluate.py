"""`fbcompress eval-retrieval`: a split's search queries over the whole catalogue, one stage or two.

Stage 1 (`ann`): each query is embedded and searched in the index (FAISS, or exact with `exact=True`); its top 100
products are ranked by similarity. Stage 2 (`rerank`, with a cross-encoder): the top `rerank_k` of stage 1 are
re-ordered by the cross-encoder's match probability (the rest keep their order after them). Metrics per stage
(evaluation/retrieval.py: Recall@1/5/10/100, nDCG@10, MRR with standard errors) and the latency of each stage per
query at batch 1, as the online path pays it.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.search_sets import search_queries
from fbcompress.evaluation.latency import summarise
from fbcompress.evaluation.retrieval import RECALL_KS, retrieval_metrics
from fbcompress.search.searcher import Searcher

DEPTH = max(RECALL_KS)  # the ranked list scored: recall@100 needs 100


def evaluate_retrieval(searcher: Searcher, dataset: DatasetDir, split: str = "test", rerank_k: int = DEPTH,
                       max_queries: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Stage metrics and per-stage latencies of `split`'s queries (see the module doc)."""
    index = searcher.index
    if index.manifest["data"]["fingerprint"] != dataset.fingerprint:
        raise FbError(f"the index {index.root} was built from other data than {dataset.root} (fingerprints differ): "
                      "retrieval is scored over the index's catalogue")
    queries = search_queries(dataset, split)[:max_queries]
    missing = sorted({p for q in queries for p in q.relevant} - set(index.product_ids))
    if missing:
        raise FbError(f"the index {index.root} lacks {len(missing)} product(s) its queries name (e.g. {missing[0]}): "
                      "build it again from this dataset")
    rerank_k = rerank_k if searcher.reranker is not None else 0
    first, second, timings = [], [], []
    for query in tqdm(queries, desc=f"search ({split})", disable=not progress, leave=False):
        hits, timing = searcher.search(query.text, DEPTH, rerank_k)
        reranked = [h.product_id for h in hits]
        by_similarity = sorted(hits, key=lambda h: -h.score) if rerank_k else hits
        first.append([h.product_id for h in by_similarity])
        second.append(reranked)
        timings.append(timing)
    relevance = [q.relevant for q in queries]
    stages: dict[str, Any] = {"ann": {**retrieval_metrics(first, relevance),
                                      "latency_ms": {"encode": summarise([t.encode for t in timings]).to_dict(),
                                                     "search": summarise([t.search for t in timings]).to_dict()}}}
    if rerank_k:
        stages["rerank"] = {**retrieval_metrics(second, relevance), "rerank_k": rerank_k,
                            "latency_ms": {"fetch": summarise([t.fetch for t in timings]).to_dict(),
                                           "rerank": summarise([t.rerank for t in timings]).to_dict()}}
    encoder = searcher.encoder
    return {
        "split": split,
        "queries": len(queries),
        "proxy": any(q.proxy for q in queries),
        "synthetic": bool(dataset.meta.get("synthetic", False)),
        "data_fingerprint": dataset.fingerprint,
        "encoder": {"name": encoder.name, "backend": encoder.backend, "space": encoder.tower.space},
        "index": {"path": str(index.root), "kind": "exact" if searcher.exact else index.kind,
                  "products": len(index.product_ids), "zero_shot": bool(index.manifest["model"].get("zero_shot"))},
        "reranker": None if searcher.reranker is None else {"name": searcher.reranker.scorer.name,
                                                            "backend": searcher.reranker.scorer.backend},
        "stages": stages,
    }


def format_retrieval(result: dict[str, Any]) -> str:
    """The Markdown table of an `eval-retrieval` result: one row per stage, metrics ± standard error, p50 ms."""
    lines = [f"Retrieval, {result['split']} split: {result['queries']} queries over {result['index']['products']} "
             f"products ({result['index']['kind']} index); encoder {result['encoder']['name']} "
             f"({result['encoder']['backend']})" + ("; queries are product names (a proxy)" if result["proxy"] else "")
             + ("; synthetic catalogue" if result["synthetic"] else ""), "",
             "| stage | Recall@1 | Recall@5 | Recall@10 | Recall@100 | nDCG@10 | MRR | p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, stage in result["stages"].items():
        latency = stage["latency_ms"]
        p50 = " + ".join(f"{key} {value['p50_ms']:.2f}" for key, value in latency.items())
        cells = [f"{stage[m]:.3f} ± {stage[m + '_se']:.3f}" for m in ("recall@1", "recall@5", "recall@10",
                                                                     "recall@100", "ndcg@10", "mrr")]
        label = name if name == "ann" else f"rerank top {stage['rerank_k']}"
        lines.append(f"| {label} | {' | '.join(cells)} | {p50} |")
    return "\n".join(lines)
