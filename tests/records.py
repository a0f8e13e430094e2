"""Hand-made records in the project's own formats, for tests that feed a reader without running the writer."""

from __future__ import annotations

import copy
from typing import Any


def verdict_record(candidate_latency: dict, candidate: str = "c.int8.onnx", passed: bool = True) -> dict:
    """A whole `fbcompress check --json` record (release/verdict.py's schema) with this candidate latency."""
    row = {"metric": "AUC", "teacher": 0.9, "candidate": 0.9, "delta": 0.0, "limit": "<= 0.005", "passed": passed}
    return {"schema": "fbcompress-check/1", "passed": passed, "verdict": "PASS" if passed else "FAIL",
            "failed": [] if passed else ["AUC"], "split": "test", "data": "d", "synthetic_data": True,
            "device": "cpu", "tolerances": {}, "tolerances_from": "recipe smoke", "checks": [row],
            "teacher": {"path": "t", "eval": {"auc": 0.9}, "latency": {"p50_ms": 100.0, "p99_ms": 120.0}},
            "candidate": {"path": candidate, "eval": {"auc": 0.9}, "latency": candidate_latency}, "machine": {}}


DELETE = object()


def mutated(tree: Any, path: tuple, value: Any) -> Any:
    """A deep copy of `tree` with the node at `path` replaced by `value` (or removed when `value` is DELETE)."""
    out = copy.deepcopy(tree)
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out
