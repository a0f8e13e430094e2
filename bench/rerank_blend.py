"""Does the cross-encoder help as a second stage? Its score blended with the first stage's similarity.

    python bench/rerank_blend.py --index runs/quickstart/index --data runs/quickstart/data \
        --model runs/quickstart/bundles/search/query_encoder.int8.onnx --rerank exported/quickstart/model.int8.onnx

For each query of the split, the index's top 100 (the query encoder), then the top K re-ordered by
similarity + w · logit(the cross-encoder's match probability), for each w (w = 0: the first stage alone; a large w:
the re-rank alone). Prints Recall@10, nDCG@10 and MRR per w, one line each.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the query encoder")
    parser.add_argument("--rerank", type=Path, required=True, help="the cross-encoder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--top", type=int, default=50, help="K: how many the cross-encoder scores")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--weights", default="0,0.005,0.01,0.02,0.05,0.1,0.2,1,100")
    args = parser.parse_args()
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.search_sets import search_queries
    from fbcompress.evaluation.retrieval import retrieval_metrics
    from fbcompress.recipes import RetrieverSection
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher, open_reranker
    from fbcompress.search.store import open_index

    index = open_index(args.index)
    searcher = Searcher(open_query_encoder(args.model, RetrieverSection()), index,
                        open_reranker(args.rerank, index, args.data))
    queries = search_queries(DatasetDir.open(args.data), args.split)[:args.queries]
    lists = []
    for query in queries:
        hits, _ = searcher.search(query.text, 100, args.top)
        lists.append(sorted(hits, key=lambda h: -h.score))

    def fused(hit, weight: float) -> float:
        p = min(max(hit.rerank_score, 1e-6), 1 - 1e-6)
        return hit.score + weight * math.log(p / (1 - p))

    for weight in (float(w) for w in args.weights.split(",")):
        rankings = [[h.product_id for h in sorted(hits[:args.top], key=lambda h: -fused(h, weight))]
                    + [h.product_id for h in hits[args.top:]] for hits in lists]
        metrics = retrieval_metrics(rankings, [q.relevant for q in queries])
        print(f"{args.split} w={weight:g}: Recall@10 {metrics['recall@10']:.4f} nDCG@10 {metrics['ndcg@10']:.4f} "
              f"MRR {metrics['mrr']:.4f} ({len(queries)} queries)", flush=True)


if __name__ == "__main__":
    main()
