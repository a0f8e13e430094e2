"""The accuracy-aware fall-back: quantize, score on val, and while the tolerance is broken return the most
sensitive MatMuls to floating point, one at a time, most sensitive first.

One node at a time because each costs latency (its GEMM runs FP32 again, with casts around it): the loop stops at
the first node set that meets the tolerance, so the shipped model keeps as much INT8 as accuracy allows. The
ranking comes from the first attempt's per-node errors (`sensitivity.node_errors`) and is not recomputed: the
errors are local to each node, so returning one node to FP does not change the others'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FallbackResult:
    files: dict[str, Path]  # rel -> the accepted attempt's file
    first_files: dict[str, Path]  # rel -> attempt 0 (nothing returned to FP): the latency baseline of the cost
    excluded: list[str]  # nodes returned to FP by the loop, in order
    steps: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    stopped: str = ""


def run_fallback(
    build: Callable[[list[str], int], dict[str, Path]],
    check: Callable[[dict[str, Path]], dict[str, Any]],
    rank: Callable[[dict[str, Path]], list[dict[str, Any]]],
    max_nodes: int,
    enabled: bool = True,
    log: Callable[[str], None] | None = None,
) -> FallbackResult:
    """`build(excluded, attempt)` quantizes with `excluded` kept FP; `check(files)` scores them on val and returns
    {"passed": bool, ...}; `rank(files)` orders the candidate nodes, most sensitive first."""
    say = log or (lambda _text: None)
    files = build([], 0)
    verdict = check(files)
    result = FallbackResult(files=files, first_files=files, excluded=[], passed=bool(verdict["passed"]))
    result.steps.append({"attempt": 0, "returned_to_fp": None, "excluded": [], **verdict})
    if result.passed:
        result.stopped = "tolerance met without returning any node to FP"
        return result
    if not enabled:
        result.stopped = "tolerance broken on val; fall-back disabled (quantize.fallback: false)"
        return result
    result.ranking = rank(files)
    for attempt, row in enumerate(result.ranking[:max_nodes], start=1):
        result.excluded.append(row["name"])
        say(f"fall-back {attempt}: returning {row['name']} (error {row['rel_error']:.3g}) to FP ...")
        files = build(list(result.excluded), attempt)
        verdict = check(files)
        result.steps.append(
            {"attempt": attempt, "returned_to_fp": row["name"], "excluded": list(result.excluded), **verdict}
        )
        result.files = files
        if verdict["passed"]:
            result.passed = True
            result.stopped = f"tolerance met on val after returning {attempt} node(s) to FP"
            return result
    if not result.ranking:
        result.stopped = "tolerance broken on val and no quantized node is left to return to FP"
    else:
        result.stopped = (
            f"tolerance still broken on val after returning {len(result.excluded)} node(s) to FP "
            f"(quantize.max_fallback_nodes {max_nodes}, {len(result.ranking)} candidates)"
        )
    return result
