"""Search queries the way shoppers type them, with graded relevance over the whole synthetic catalogue.

A query names a garment (a noun of its subcategory, synonyms included) and up to three of a product's attributes
("red floral maxi dress", "jacket zip", "striped shirt long-sleeve"): 1 to 6 words. Each query is drawn from a
product of its split, so it has at least one exact match there, but relevance is judged over every product of the
catalogue, because search runs over the whole index:

* grade 2: the garment and every named attribute match;
* grade 1: the garment and all but one of three named attributes match (a partial match, less relevant);
* otherwise not relevant (absent from the row).

The facets compared are canonical values, not words: "scarlet" and "red" name the same colour, "pockets" means at
least one pocket, a pattern is named by its kind (not its colour). The rows go to `eval-search.jsonl` (split,
query, named facets, relevant product ids with their grades), one fixed query set per split like the other eval
files; a retriever trains on the train split's queries and keeps to the train products among their relevant ones.
Catalogues without queries (Fashion-Gen) get a labelled proxy instead (`data/search_sets.py`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fbcompress.data.search_sets import queries_for
from fbcompress.data.synth.text import PATTERN_ADJ, TITLE_ADJ
from fbcompress.data.synth.vocabulary import COLOUR_WORDS, DESCRIBED_KEYS, SUBCATEGORY_BY_NAME

MAX_NAMED = 3  # facets a query names beside the garment
MAX_WORDS = 6
FACET_KEYS = DESCRIBED_KEYS  # what titles and descriptions state is what a shopper can ask for


@dataclass(frozen=True)
class CatalogueProduct:
    """What relevance looks at: a product's id, subcategory and attributes (as the manifest records them)."""

    product_id: str
    subcategory: str
    attributes: Mapping[str, Any]


def facets(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The nameable facets of a product: canonical values a query can name (absent details are not facets)."""
    out: dict[str, Any] = {}
    for key in FACET_KEYS:
        value = attributes.get(key)
        if key in ("pockets", "logo"):
            if value:
                out[key] = True
        elif key == "closure":
            if value not in (None, "none"):
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def grade(named: Mapping[str, Any], subcategory: str, product: CatalogueProduct) -> int:
    """2: the garment and every named facet match; 1: the garment and all but one of three named facets; else 0."""
    if product.subcategory != subcategory:
        return 0
    have = facets(product.attributes)
    matched = sum(1 for key, value in named.items() if have.get(key) == value)
    if matched == len(named):
        return 2
    return 1 if len(named) == MAX_NAMED and matched == len(named) - 1 else 0


def _word(key: str, value: Any, rng: random.Random) -> str:
    """One shopper's wording of a facet (synonyms drawn like the titles draw them)."""
    if key == "colour":
        return rng.choice(COLOUR_WORDS[value])
    if key == "pattern":
        return "plain" if value == "solid" else rng.choice(PATTERN_ADJ[value])
    if key == "pockets":
        return "pockets"
    if key == "logo":
        return "logo"
    if key == "closure" and value == "laces":
        return "lace-up"
    words = TITLE_ADJ.get(key, {}).get(value)
    return rng.choice(words) if words else str(value)


def phrase(subcategory: str, named: Mapping[str, Any], rng: random.Random) -> str:
    """The query text: the named facets' words around the garment noun, mostly before it ("red maxi dress"),
    sometimes one after it ("dress with pockets", "jacket zip-up"), lower case."""
    nouns = SUBCATEGORY_BY_NAME[subcategory].nouns
    noun = rng.choice(nouns)
    words = [_word(key, value, rng) for key, value in named.items()]
    if sum(len(w.split()) for w in [noun, *words]) > MAX_WORDS:  # two-word synonyms: fall back to one word each
        noun, words = nouns[0], [w.split()[-1] for w in words]
    rng.shuffle(words)
    after = words.pop() if words and rng.random() < 0.3 else None
    return " ".join([*words, noun, *([after] if after else [])]).lower()


def draw_query(product: CatalogueProduct, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A query a shopper looking for `product` might type: its garment and 0..3 of its facets."""
    available = facets(product.attributes)
    count = min(len(available), rng.choices((0, 1, 2, 3), weights=(1, 3, 3, 2))[0])
    keys = rng.sample(sorted(available), count)
    named = {key: available[key] for key in FACET_KEYS if key in keys}
    return phrase(product.subcategory, named, rng), named


def build_search_set(catalogue: list[CatalogueProduct], split_of: Mapping[str, str], queries: int | Mapping[str, int],
                     seed: int, splits: Iterable[str] = ("train", "val", "test")) -> list[dict[str, Any]]:
    """`queries` queries per split (or {split: count}; at most one per product of the split, distinct texts), each
    with its graded relevant products over the whole catalogue, deterministically for `seed`. A split's queries do
    not depend on another split's count: each split draws from its own seeded stream."""
    by_subcategory: dict[str, list[CatalogueProduct]] = {}
    for product in catalogue:
        by_subcategory.setdefault(product.subcategory, []).append(product)
    rows = []
    for split in splits:
        rng = random.Random(f"search/{seed}/{split}")
        pool = [p for p in catalogue if split_of.get(p.product_id) == split]
        rng.shuffle(pool)
        seen: set[str] = set()
        wanted = queries_for(queries, split)
        for product in pool:
            if len(seen) >= wanted:
                break
            text, named = draw_query(product, rng)
            if text in seen:
                continue
            seen.add(text)
            relevant = {p.product_id: g for p in by_subcategory[product.subcategory]
                        if (g := grade(named, product.subcategory, p))}
            rows.append({"split": split, "query": text, "subcategory": product.subcategory, "named": named,
                         "source_product": product.product_id, "relevant": relevant})
    return rows

