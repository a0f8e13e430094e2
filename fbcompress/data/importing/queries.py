"""Search logs (what shoppers typed, which product they clicked or bought, how often) into per-split query files.

Each log row (query text, product id, weight) goes to the split of its product, so a query's relevant products in
val or test are products no model trained on; a query seen only with test products is a test query. The files,
`queries-{train,val,test}.jsonl` with rows `query`, `id` (the record id), `weight`, are the search path's training
pairs and graded relevance. Rows naming a product that is not in the dataset (unknown, or rejected by the product
import), with an empty query or a weight that is not a positive number are rejects. The log is streamed: memory
holds the product → split map, not the log.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS
from fbcompress.data.importing.fields import reason_counts
from fbcompress.data.importing.table import BadText, Table

QUERY_FIELDS = ("query", "product", "weight")
QUERY_REQUIRED = ("query", "product")
BATCH_ROWS = 50_000


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
                       root: Path) -> tuple[QuerySummary, list[dict]]:
    """Write root/queries-{split}.jsonl from the log; returns the summary and the rejects (row, reason)."""
    used = dict.fromkeys(SPLITS, 0)
    rejects: list[dict] = []
    rows = 0
    with contextlib.ExitStack() as stack:
        handles = {s: stack.enter_context(open(root / f"queries-{s}.jsonl", "w", encoding="utf-8")) for s in SPLITS}
        for batch in table.batches(BATCH_ROWS):
            for row in batch:
                row_number, rows = rows, rows + 1
                entry, why = _entry(row, columns, split_of, rejected_ids)
                if entry is None:
                    rejects.append({"row": row_number, "reason": why})
                    continue
                split = split_of[entry["id"]]
                handles[split].write(json.dumps(entry, ensure_ascii=False) + "\n")
                used[split] += 1
    return QuerySummary(rows, used, len(rejects), reason_counts(rejects)), rejects


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
    weight: Any = row.get(columns["weight"], 1) if "weight" in columns else 1
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        return None, f"weight is not a number ({weight})"
    if not math.isfinite(weight) or weight <= 0:
        return None, f"weight is not a positive number ({weight})"
    return {"query": query, "id": product, "weight": int(weight) if weight.is_integer() else weight}, None
