"""How a metric drop is compared with its tolerance, shared by `check` and `quantize`.

A module of its own, without torch: `fbcompress check` imports it when the CLI starts, and importing the metric
code (torch, transformers) would add seconds to every `fbcompress --help`.
"""

from __future__ import annotations

TOLERANCE_EPS = 1e-9  # metric deltas are float differences: a drop exactly at its limit must pass


def within(drop: float, limit: float) -> bool:
    """Whether a metric drop keeps its tolerance. Rank@10 moves in steps of 1/n_queries, so a drop of exactly the
    limit (0.07 - 0.05 = 0.020000000000000004 against 0.02) is common and must not fail on float rounding."""
    return drop <= limit + TOLERANCE_EPS
