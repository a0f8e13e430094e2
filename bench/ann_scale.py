"""ANN search at catalogue scale: exact, HNSW and IVF-PQ at 10^4, 10^5, 10^6 products on this machine.

    python bench/ann_scale.py --index runs/quickstart/index --data runs/quickstart/data --out bench/results/DIR \
        --sizes 10000,100000,1000000

What is real and what is not, per size N: the index holds the catalogue's real product embeddings (from the index
that `fbcompress index build` made with the trained product tower, e.g. 3,000 products) and N minus that many
random unit vectors of the same size (no catalogue of a million products exists here). Two query sets are timed and
judged against exact search over the same N vectors:

* `real`: the dataset's search queries (every split) embedded by the index's own query tower; their true neighbours
  are mostly real products, so recall here is what the catalogue's shoppers would see;
* `random`: random unit vectors; in 256 dimensions these have no structure to exploit, the hardest case for ANN.

Per (N, kind): build seconds, serialised index size (MiB), single-query search latency p50/p99 over the queries
(batch 1, as the online path pays it), and recall@10 against exact search. Results: `ann-scale.json`,
`ann-scale.md` and `recall-vs-latency.png` under --out, with the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def time_queries(index, queries: np.ndarray, k: int = 10) -> tuple[list[float], np.ndarray]:
    """Per-query seconds (batch 1) and the rows found."""
    found, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        _, rows = index.search(query[None], k)
        seconds.append(time.perf_counter() - start)
        found.append(rows[0])
    return seconds, np.stack(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="an index made by `fbcompress index build`")
    parser.add_argument("--data", type=Path, required=True, help="its dataset dir (the real queries)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--kinds", default="exact,hnsw,ivfpq")
    parser.add_argument("--queries", type=int, default=200, help="queries per set")
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: FAISS's default)")
    args = parser.parse_args()

    import faiss

    from fbcompress.data.dataset_dir import SPLITS, DatasetDir
    from fbcompress.data.search_sets import search_queries
    from fbcompress.evaluation.latency import machine_info, machine_line, summarise
    from fbcompress.recipes import IndexSection, RetrieverSection
    from fbcompress.runtime.embedding import embed_queries
    from fbcompress.search.ann import build_faiss_index, exact_top_k, index_bytes
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.store import open_index

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    index = open_index(args.index)
    real = index.embeddings.astype(np.float32)
    dim = real.shape[1]
    encoder = open_query_encoder(index.manifest["model"]["path"], RetrieverSection())
    dataset = DatasetDir.open(args.data)
    texts = list(dict.fromkeys(q.text for s in SPLITS for q in search_queries(dataset, s)))[:args.queries]
    query_sets = {"real": embed_queries(encoder, texts),
                  "random": unit_rows(np.random.default_rng(1), args.queries, dim)}
    section = IndexSection()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(size)
        vectors = np.concatenate([real, unit_rows(rng, max(0, size - len(real)), dim)])[:size]
        exact = {name: exact_top_k(vectors, q, 10) for name, q in query_sets.items()}
        for kind in args.kinds.split(","):
            built = build_faiss_index(vectors, kind, section)
            entry = {"products": size, "real_products": min(len(real), size), "kind": kind, "params": built.params,
                     "build_s": round(built.build_seconds, 3), "index_mib": round(index_bytes(built.index) / 2**20, 2)}
            for name, queries in query_sets.items():
                seconds, found = time_queries(built.index, queries)
                stats = summarise(seconds)
                entry[name] = {"p50_ms": round(stats.p50_ms, 4), "p99_ms": round(stats.p99_ms, 4),
                               "recall_at_10": round(recall(found, exact[name]), 4)}
            rows.append(entry)
            print(json.dumps(entry), flush=True)
            del built
    machine = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "embedding_dim": dim, "real_products": len(real), "queries": len(texts),
              "index_recipe": section.model_dump(), "faiss": faiss.__version__, "rows": rows}
    (args.out / "ann-scale.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# ANN search at scale\n\n{machine_line(machine)}; FAISS {faiss.__version__}; {dim}-d embeddings, "
             f"{len(real)} real products from the trained product tower, the rest random unit vectors; "
             f"{len(texts)} real queries (the query tower) and {args.queries} random unit-vector queries; latency "
             "per query at batch 1; recall@10 against exact search over the same vectors.\n",
             "| products | index | build s | MiB | real: p50 ms | real: recall@10 | random: p50 ms "
             "| random: recall@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['products']:,} | {r['kind']} | {r['build_s']:.2f} | {r['index_mib']:.1f} | "
                     f"{r['real']['p50_ms']:.3f} | {r['real']['recall_at_10']:.3f} | {r['random']['p50_ms']:.3f} | "
                     f"{r['random']['recall_at_10']:.3f} |")
    (args.out / "ann-scale.md").write_text("\n".join(lines) + "\n\n![recall vs latency](recall-vs-latency.png)\n")
    plot(rows, args.out / "recall-vs-latency.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    markers = {"exact": "s", "hnsw": "o", "ivfpq": "^"}
    for axis, name in zip(axes, ("real", "random"), strict=True):
        for kind in markers:
            mine = [r for r in rows if r["kind"] == kind]
            if not mine:
                continue
            axis.plot([r[name]["p50_ms"] for r in mine], [r[name]["recall_at_10"] for r in mine],
                      marker=markers[kind], label=kind)
            for r in mine:
                point = (r[name]["p50_ms"], r[name]["recall_at_10"])
                axis.annotate(f"{r['products']:.0e}".replace("+0", ""), point, textcoords="offset points",
                              xytext=(4, 4), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("p50 ms per query (batch 1)")
        axis.set_title(f"{name} queries")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("recall@10 vs exact")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
