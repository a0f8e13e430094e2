"""`fbcompress check --index`: is a compressed query encoder good enough to replace the retriever's query tower?

Both encoders search the same index (the retriever's product embeddings, over the whole catalogue) with the split's
queries (`search/evaluate.py`), and are timed on one real query of `check.query_length` wordpieces at batch 1, in
alternating blocks. Gates: Recall@10 drop <= check.max_recall10_drop, nDCG@10 drop <= check.max_ndcg10_drop, tower
p50 / candidate p50 >= check.min_query_speedup. The verdict is the same typed record as the scorer's check
(release/verdict.py), so `--json`, the table and exit codes (0 pass, 1 fail, 2 bad input) are the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.evaluation.tolerance import within
from fbcompress.release.verdict import CheckedModel, CheckVerdict

ROLES = ("teacher", "candidate")


def _drop(metric: str, teacher: float, candidate: float, limit: float) -> dict[str, Any]:
    return {"metric": metric, "teacher": teacher, "candidate": candidate, "delta": candidate - teacher,
            "limit": f"drop <= {limit:g}", "passed": within(teacher - candidate, limit)}


def timing_query(texts: list[str], tokenizer: Any, length: int, max_len: int) -> list[int]:
    """The token ids of the first query of the split that is exactly `length` wordpieces long (real, unpadded)."""
    from fbcompress.runtime.embedding import tokenize_queries

    if length > max_len:
        raise FbError(f"check.query_length {length} exceeds the query encoder's {max_len} wordpieces")
    for ids in tokenize_queries(tokenizer, texts, max_len):
        if len(ids) == length:
            return ids
    raise FbError(f"no query of the split is {length} wordpieces long: set check.query_length to another length")


def run_retrieval_check(teacher: Path, candidate: Path, data_dir: Path, index_dir: Path, section: Any,
                        retriever: Any, split: str = "test", device: str = "cpu") -> CheckVerdict:
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.search_sets import search_queries
    from fbcompress.evaluation.latency import machine_info, time_interleaved
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.runtime.embedding import query_inputs
    from fbcompress.search.evaluate import evaluate_retrieval
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher
    from fbcompress.search.store import open_index

    dataset = DatasetDir.open(data_dir)
    index = open_index(index_dir)
    paths = {"teacher": Path(teacher), "candidate": Path(candidate)}
    encoders = {role: open_query_encoder(path, retriever, device) for role, path in paths.items()}
    searchers = {role: Searcher(encoder, index) for role, encoder in encoders.items()}  # both of the index's space
    evals = {role: evaluate_retrieval(searchers[role], dataset, split) for role in ROLES}
    tokenizer = load_tokenizer(encoders["candidate"].tokenizer_dir)
    ids = timing_query([q.text for q in search_queries(dataset, split)], tokenizer, section.query_length,
                       encoders["candidate"].tower.max_query_len)
    inputs = query_inputs([ids], int(tokenizer.pad_token_id))
    feeds = {role: {k: v.numpy() for k, v in inputs.items()} if "onnxruntime" in encoders[role].backend else inputs
             for role in ROLES}
    stats = time_interleaved([lambda role=role: encoders[role].queries(feeds[role]) for role in ROLES],
                             runs=section.latency_runs, warmup=section.latency_warmup)
    latency = {role: {**s.to_dict(), "pairs_per_s": 1000.0 / s.p50_ms if s.p50_ms > 0 else None,
                      "backend": encoders[role].backend, "precision": _precision(paths[role])}
               for role, s in zip(ROLES, stats, strict=True)}
    t, c = (evals[r]["stages"]["ann"] for r in ROLES)
    tp50, cp50 = latency["teacher"]["p50_ms"], latency["candidate"]["p50_ms"]
    speedup = tp50 / cp50 if cp50 > 0 else math.inf
    rows = [_drop("Recall@10", t["recall@10"], c["recall@10"], section.max_recall10_drop),
            _drop("nDCG@10", t["ndcg@10"], c["ndcg@10"], section.max_ndcg10_drop),
            {"metric": f"speed-up (p50 ms @ 1x{section.query_length} {device})", "teacher": tp50, "candidate": cp50,
             "delta": speedup,
             "limit": f">= {section.min_query_speedup:g}x" if section.min_query_speedup > 0 else "not checked",
             "passed": within(section.min_query_speedup - speedup, 0.0) if section.min_query_speedup > 0 else None}]
    rows += [{"metric": name, "teacher": t[key], "candidate": c[key], "delta": c[key] - t[key], "limit": "",
              "passed": None} for name, key in (("Recall@100", "recall@100"), ("MRR", "mrr"))]
    failed = [r["metric"] for r in rows if r["passed"] is False]
    return CheckVerdict(
        passed=not failed, verdict="FAIL" if failed else "PASS", failed=failed, split=split, data=str(data_dir),
        synthetic_data=bool(evals["teacher"]["synthetic"]), device=device,
        tolerances={k: getattr(section, k) for k in ("max_recall10_drop", "max_ndcg10_drop", "min_query_speedup",
                                                      "query_length", "latency_runs", "latency_warmup")},
        checks=rows,
        teacher=CheckedModel(path=str(teacher), eval=evals["teacher"], latency=latency["teacher"]),
        candidate=CheckedModel(path=str(candidate), eval=evals["candidate"], latency=latency["candidate"]),
        machine=machine_info(int(device.partition(":")[2] or 0) if device.startswith("cuda") else None))


def _precision(path: Path) -> str:
    name = path.name
    return "int8" if ".int8." in name else "fp16" if ".fp16." in name else "fp32"
