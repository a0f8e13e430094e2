"""`eval-search.jsonl`: a dataset's fixed search query sets, one per split, relevance graded over the whole catalogue.

Rows: `split`, `query`, `relevant` ({product id: grade}, 2 most relevant), and what made them: the synthetic
catalogue's shopper queries (`data/synth/queries.py`: `subcategory`, `named`, `source_product`), or, for a
catalogue without queries (Fashion-Gen), product names as a proxy (`proxy: true`, here).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS, DatasetDir, read_jsonl_numbered

SEARCH_FILE = "eval-search.jsonl"


def queries_for(queries: int | Mapping[str, int], split: str) -> int:
    """How many queries `split` gets from a count for every split or a {split: count} mapping (absent: none)."""
    return queries if isinstance(queries, int) else int(queries.get(split, 0))


def build_name_queries(names: Mapping[str, str], split_of: Mapping[str, str], queries: int | Mapping[str, int],
                       seed: int, splits: Iterable[str] = ("train", "val", "test")) -> list[dict[str, Any]]:
    """A proxy for catalogues without queries (Fashion-Gen): product names as queries, relevant (grade 2) every
    product of the whole catalogue with that name; rows carry `proxy: true` so reports can say so."""
    by_name: dict[str, list[str]] = {}
    for product_id, name in names.items():
        key = " ".join(name.lower().split())
        if key:
            by_name.setdefault(key, []).append(product_id)
    rows = []
    for split in splits:
        rng = random.Random(f"search-names/{seed}/{split}")
        mine = sorted({" ".join(names[p].lower().split()) for p, s in split_of.items() if s == split and p in names}
                      - {""})
        rng.shuffle(mine)
        for text in mine[:queries_for(queries, split)]:
            rows.append({"split": split, "query": text, "proxy": True,
                         "relevant": {product_id: 2 for product_id in sorted(by_name[text])}})
    return rows


def write_search_set(path: Path, rows: list[dict[str, Any]]) -> None:
    """`eval-search.jsonl`: one JSON object per line, keys sorted (byte-stable for the dataset's fingerprint)."""
    with path.open("w") as handle:
        handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)


@dataclass(frozen=True)
class SearchQuery:
    """One search query of a split and its graded relevant products over the whole catalogue (product id → 1 or 2;
    2 most relevant). `proxy`: a stand-in for real queries (Fashion-Gen's product names)."""

    text: str
    relevant: dict[str, int]
    proxy: bool = False


def search_queries(dataset: DatasetDir, split: str) -> list[SearchQuery]:
    """A split's search queries: `eval-search.jsonl` (synthetic, Fashion-Gen), else an import's search logs
    (`queries-{split}.jsonl`, see `log_queries`). Broken rows are one-line errors naming the file and line."""
    if split not in SPLITS:
        raise FbError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    path = dataset.root / SEARCH_FILE
    if path.is_file():
        queries = [_search_row(path, lineno, row) for lineno, row in read_jsonl_numbered(path) if row.get("split")
                   == split]
    elif any((dataset.root / f"{LOG_PREFIX}{s}.jsonl").is_file() for s in SPLITS):
        queries = log_queries(dataset, split)
    else:
        raise FbError(f"{dataset.root} has no search queries ({SEARCH_FILE}, or {LOG_PREFIX}*.jsonl from `data "
                      "import --queries`): make the dataset dir again with this version of `fbcompress data ...`")
    if not queries:
        raise FbError(f"{dataset.root} has no search queries for split '{split}'")
    return queries


def _search_row(path: Path, lineno: int, row: dict[str, Any]) -> SearchQuery:
    text, relevant = row.get("query"), row.get("relevant")
    if not isinstance(text, str) or not text.strip():
        raise FbError(f"{path}:{lineno}: a search row without a query text")
    if not isinstance(relevant, dict) or not relevant:
        raise FbError(f"{path}:{lineno}: search query {text!r} has no relevant products")
    for product, grade in relevant.items():
        if isinstance(grade, bool) or grade not in (1, 2):
            raise FbError(f"{path}:{lineno}: search query {text!r} grades product {product} {grade!r} (expected 1 "
                          "or 2)")
    return SearchQuery(" ".join(text.split()), {str(k): int(v) for k, v in relevant.items()}, bool(row.get("proxy")))


LOG_PREFIX = "queries-"


def log_queries(dataset: DatasetDir, split: str) -> list[SearchQuery]:
    """Search queries from an import's logs: the distinct query texts of `queries-{split}.jsonl`, each relevant to
    every product it led to in any split (search runs over the whole catalogue), graded by its weight: 2 for
    products with at least half the query's largest weight, else 1."""
    product_of = {r["id"]: str(r["product_id"]) for s in SPLITS for r in dataset.records(s)}
    weights: dict[str, dict[str, float]] = {}
    mine: dict[str, None] = {}  # the split's query texts, in first-seen order
    for name in SPLITS:
        path = dataset.root / f"{LOG_PREFIX}{name}.jsonl"
        if not path.is_file():
            continue
        for lineno, row in read_jsonl_numbered(path):
            text, record, weight = row.get("query"), row.get("id"), row.get("weight", 1)
            if not isinstance(text, str) or not text.strip() or record not in product_of or isinstance(
                    weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise FbError(f"{path}:{lineno}: a search-log row needs a query, a record id of the dataset and a "
                              "positive weight")
            text = " ".join(text.split())
            per_product = weights.setdefault(text, {})
            per_product[product_of[record]] = per_product.get(product_of[record], 0.0) + float(weight)
            if name == split:
                mine.setdefault(text)
    out = []
    for text in mine:
        top = max(weights[text].values())
        out.append(SearchQuery(text, {p: 2 if w >= top / 2 else 1 for p, w in sorted(weights[text].items())}))
    return out
