"""Scoring, comparing and timing the FP32 and INT8 graphs: the guard's numbers and the report's.

Accuracy uses design.md's metrics through `evaluation.metrics.evaluate` on the fixed eval sets, so the INT8 and
FP32 models are scored on exactly the same pairs and candidates. Latency uses `evaluation.latency.time_interleaved`
(>= 100 timed runs after warm-up, every file in alternating blocks) on ONNX Runtime's CPU provider at batch 1, the
online case.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.evaluation.metrics import RANKS, evaluate
from fbcompress.evaluation.tolerance import within

LATENCY_TEXTS = (8, 32)
ONLINE_BATCH = 1  # one query-product pair per call: the online case the INT8 file is chosen for


def score(
    path: Path,
    name: str,
    spec,
    tokenizer_dir: Path,
    dataset,
    data,
    split: str,
    max_queries: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """ACC, AUC, ITR/TIR Rank@1/5/10 of one ONNX file on `split` (ONNX Runtime, CPU)."""
    from fbcompress.runtime.onnxruntime import OrtScorer

    scorer = OrtScorer(path, spec, tokenizer_dir, name, "cpu")
    result = evaluate(scorer, dataset, data, split, max_queries=max_queries, progress=progress)
    if not isinstance(result.get("auc"), float) or math.isnan(result["auc"]):
        raise FbError(f"the {split} split of {dataset.root} gives no AUC (it needs matched and mismatched pairs)")
    return result


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The flat metrics the report compares: accuracy, auc, itr_r1..tir_r10."""
    out = {"accuracy": float(result["accuracy"]), "auc": float(result["auc"])}
    for mode in ("itr", "tir"):
        for k in RANKS:
            if mode in result:
                out[f"{mode}_r{k}"] = float(result[mode][f"r{k}"])
    return out


def compare(
    reference: dict[str, Any], candidate: dict[str, Any], max_auc_drop: float, max_rank10_drop: float
) -> dict[str, Any]:
    """Deltas INT8 - FP32 for every metric, and the tolerance breaks (a drop beyond the recipe's limit)."""
    ref, got = headline(reference), headline(candidate)
    deltas = {key: got[key] - ref[key] for key in ref if key in got}
    breaks = []
    drop = ref["auc"] - got["auc"]
    if not within(drop, max_auc_drop):
        breaks.append(
            {
                "metric": "AUC",
                "fp32": ref["auc"],
                "int8": got["auc"],
                "drop": drop,
                "tolerance": max_auc_drop,
                "key": "quantize.max_auc_drop",
            }
        )
    for mode in ("itr", "tir"):
        key = f"{mode}_r10"
        if key not in ref or key not in got:
            continue
        drop = ref[key] - got[key]
        if not within(drop, max_rank10_drop):
            breaks.append(
                {
                    "metric": f"{mode.upper()} Rank@10",
                    "fp32": ref[key],
                    "int8": got[key],
                    "drop": drop,
                    "tolerance": max_rank10_drop,
                    "key": "quantize.max_rank10_drop",
                }
            )
    return {
        "split": candidate.get("split"),
        "fp32": ref,
        "int8": got,
        "deltas": deltas,
        "breaks": breaks,
        "passed": not breaks,
    }


def describe_breaks(rel: str, breaks: list[dict[str, Any]]) -> str:
    """One line: which metric of which file broke, by how much, against which recipe key."""
    parts = [
        f"{b['metric']} {b['int8']:.4f} vs FP32 {b['fp32']:.4f} (drop {b['drop']:.4f} > {b['key']} {b['tolerance']:g})"
        for b in breaks
    ]
    return f"{rel}: " + "; ".join(parts)


def race(
    paths: dict[str, Path], spec, max_positions: int, runs: int, texts: tuple[int, ...] = LATENCY_TEXTS
) -> dict[str, list[dict[str, Any]]]:
    """Time several ONNX files at batch ONLINE_BATCH and each text length, in alternating blocks of 10 runs
    (`latency.time_interleaved`), so that a slow spell of a shared machine does not decide which one is faster."""
    from fbcompress.evaluation.latency import example_inputs, throughput, time_interleaved
    from fbcompress.runtime.onnxruntime import cpu_session

    sessions = {name: cpu_session(path) for name, path in paths.items()}
    cases: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for text in sorted({min(t, max_positions) for t in texts}):
        calls = []
        for session in sessions.values():
            names = {i.name for i in session.get_inputs()}
            feed = {k: v.numpy() for k, v in example_inputs(spec, ONLINE_BATCH, text).items() if k in names}
            calls.append(lambda session=session, feed=feed: session.run(None, feed))
        for name, stats in zip(sessions, time_interleaved(calls, runs=runs, warmup=10, block=10), strict=True):
            cases[name].append(
                {"batch": ONLINE_BATCH, "text": text, **stats.to_dict(), "pairs_per_s": throughput(stats, ONLINE_BATCH)}
            )
    return cases
