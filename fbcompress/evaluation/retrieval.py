"""Retrieval metrics over a whole catalogue: Recall@K, nDCG@10 and MRR of ranked product lists, with standard errors.

The definitions (docs/metrics.md, "Retrieval") take graded relevance as `eval-search.jsonl` holds it ({product
id: grade}, grade >= 1 relevant, 2 most relevant):

* **Recall@K** is capped: |top K ∩ relevant| / min(K, |relevant|). A query such as "dress" has hundreds of relevant
  products, and uncapped recall would score a perfect top 10 near 0; capped, a perfect ranking scores 1 at every K.
* **nDCG@10**: DCG = Σ_{i<=10} (2^grade − 1) / log2(i + 1) over the top 10, divided by the DCG of the ideal order of
  the query's relevant products.
* **MRR**: 1 / the rank of the first relevant product, 0 when none is in the ranked list.

Each is the mean over queries; its standard error is the sample standard deviation over queries / sqrt(n), so two
systems' figures can be told apart from noise. A query without relevant products is an error in the eval set, not
a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fbcompress.core.errors import FbError

RECALL_KS = (1, 5, 10, 100)
NDCG_K = 10


def query_metrics(ranked: Sequence[str], relevant: Mapping[str, int], ks: Sequence[int] = RECALL_KS
                  ) -> dict[str, float]:
    """One query's recall@K (capped), nDCG@10 and reciprocal rank, for `ranked` product ids, best first."""
    hits = {pid: int(g) for pid, g in relevant.items() if int(g) > 0}
    if not hits:
        raise FbError("a search query has no relevant product: its eval row is broken")
    if len(set(ranked)) != len(ranked):
        raise FbError("a ranked list names a product twice")
    out = {f"recall@{k}": sum(1 for pid in ranked[:k] if pid in hits) / min(k, len(hits)) for k in ks}
    dcg = sum((2 ** hits.get(pid, 0) - 1) / math.log2(i + 2) for i, pid in enumerate(ranked[:NDCG_K]))
    ideal = sorted(hits.values(), reverse=True)[:NDCG_K]
    out[f"ndcg@{NDCG_K}"] = dcg / sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i for i, pid in enumerate(ranked) if pid in hits), None)
    out["mrr"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def retrieval_metrics(rankings: Sequence[Sequence[str]], relevance: Sequence[Mapping[str, int]],
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float | int]:
    """Mean of every query's metrics and its standard error (`<name>_se`), and the number of queries."""
    if len(rankings) != len(relevance):
        raise FbError(f"{len(rankings)} rankings for {len(relevance)} queries")
    if not rankings:
        raise FbError("no search queries to score")
    per_query = [query_metrics(r, rel, ks) for r, rel in zip(rankings, relevance, strict=True)]
    n = len(per_query)
    out: dict[str, float | int] = {"queries": n}
    for name in per_query[0]:
        values = [q[name] for q in per_query]
        mean = sum(values) / n
        out[name] = mean
        out[f"{name}_se"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1
                             else float("nan"))
    return out
