"""`eval-search.jsonl`: a dataset's fixed search query sets, one per split, relevance graded over the whole catalogue.

Rows: `split`, `query`, `relevant` ({product id: grade}, 2 most relevant), and what made them: the synthetic
catalogue's shopper queries (`data/synth/queries.py`: `subcategory`, `named`, `source_product`), or, for a
catalogue without queries (Fashion-Gen), product names as a proxy (`proxy: true`, here).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SEARCH_FILE = "eval-search.jsonl"


def build_name_queries(names: Mapping[str, str], split_of: Mapping[str, str], queries: int, seed: int,
                       splits: Iterable[str] = ("train", "val", "test")) -> list[dict[str, Any]]:
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
        for text in mine[:queries]:
            rows.append({"split": split, "query": text, "proxy": True,
                         "relevant": {product_id: 2 for product_id in sorted(by_name[text])}})
    return rows


def write_search_set(path: Path, rows: list[dict[str, Any]]) -> None:
    """`eval-search.jsonl`: one JSON object per line, keys sorted (byte-stable for the dataset's fingerprint)."""
    with path.open("w") as handle:
        handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
