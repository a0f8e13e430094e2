"""Search logs (what shoppers typed, which product they clicked or bought, how often) into per-split query files.

Each log row (query text, product id, weight) goes to the split of its product, so a query's relevant products in
val or test are products no model trained on; a query seen only with test products is a test query. The files,
`queries-{train,val,test}.jsonl` with rows `query`, `id` (the record id), `weight`, are the search path's training
pairs and graded relevance. Rows naming a product that is not in the dataset (unknown, or rejected by the product
import), with an empty query or a weight that is not a positive number are rejects; a row without a weight (no
weight column, a missing key, null, an empty cell) is one event, weight 1. The log is streamed: memory holds the
record → split map, not the log.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS
from fbcompress.data.importing.fields import reason_kind
from fbcompress.data.importing.table import BadText, Table

QUERY_FIELDS = ("query", "product", "weight")
QUERY_REQUIRED = ("query", "product")
BATCH_ROWS = 50_000
REJECTS_FILE = "query-rejects.jsonl"


@dataclass
class QuerySummary:
    rows: int
    used: dict[str, int]
    rejected: int
    reasons: dict[str, int]


def query_columns(table: Table, pairs: list[str]) -> dict[str, str]:
    """field -> column for the query log: `--query-map COL=FIELD` pairs, else columns named like the fields."""
    chosen: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = (part.strip() for part in pair.partition("="))
        if not sep or field not in QUERY_FIELDS:
            raise FbError(f"--query-map {pair!r}: expected COL=FIELD with FIELD one of {', '.join(QUERY_FIELDS)}")
        if column not in table.columns:
            raise FbError(f"--query-map {pair}: {table.path} has no column {column!r} (its columns: "
                          f"{', '.join(table.columns)})")
        chosen[field] = column
    for field in QUERY_FIELDS:
        if field not in chosen and field in table.columns:
            chosen[field] = field
    missing = [f for f in QUERY_REQUIRED if f not in chosen]
    if missing:
        raise FbError(f"{table.path} has no column for {', '.join(missing)} (map one with --query-map "
                      f"COL={missing[0]}); its columns: {', '.join(table.columns)}")
    return chosen


def write_query_splits(table: Table, columns: dict[str, str], split_of: dict[str, str], rejected_ids: set[str],
                       root: Path) -> QuerySummary:
    """Write root/queries-{split}.jsonl from the log, and its rejects (row, reason) to root/REJECTS_FILE."""
    used = dict.fromkeys(SPLITS, 0)
    reasons: Counter[str] = Counter()
    rows = 0
    with contextlib.ExitStack() as stack:
        handles = {s: stack.enter_context(open(root / f"queries-{s}.jsonl", "w", encoding="utf-8")) for s in SPLITS}
        rejects = stack.enter_context(open(root / REJECTS_FILE, "w", encoding="utf-8"))
        for batch in table.batches(BATCH_ROWS):
            for row in batch:
                row_number, rows = rows, rows + 1
                entry, why = _entry(row, columns, split_of, rejected_ids)
                if entry is None:
                    rejects.write(json.dumps({"row": row_number, "reason": why}, ensure_ascii=False) + "\n")
                    reasons[reason_kind(str(why))] += 1
                    continue
                split = split_of[entry["id"]]
                handles[split].write(json.dumps(entry, ensure_ascii=False) + "\n")
                used[split] += 1
    return QuerySummary(rows, used, sum(reasons.values()), dict(reasons))


def _entry(row: dict[str, Any], columns: dict[str, str], split_of: dict[str, str],
           rejected_ids: set[str]) -> tuple[dict | None, str | None]:
    if "__error__" in row:
        return None, row["__error__"]
    if any(isinstance(v, BadText) for v in row.values()):
        return None, "not UTF-8 text"
    query = " ".join(str(row.get(columns["query"]) or "").split())
    if not query:
        return None, "empty query"
    product = row.get(columns["product"])
    if isinstance(product, float) and product.is_integer():
        product = int(product)
    product = "" if product is None else str(product).strip()
    if product not in split_of:
        why = "product rejected by the import" if product in rejected_ids else "unknown product"
        return None, f"{why} ({product})"
    weight: Any = row.get(columns["weight"]) if "weight" in columns else None
    if weight is None or (isinstance(weight, str) and not weight.strip()):
        weight = 1  # a row without a weight is one event, in every format (missing key, null, empty cell)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        return None, f"weight is not a number ({weight})"
    if not math.isfinite(weight) or weight <= 0:
        return None, f"weight is not a positive number ({weight})"
    return {"query": query, "id": product, "weight": int(weight) if weight.is_integer() else weight}, None
