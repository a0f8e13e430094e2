"""Search queries of the synthetic catalogue: graded relevance on hand-made products, the shopper's wording, and
the query sets `data synth` writes (one per split, relevance over the whole catalogue)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fbcompress.data.dataset_dir import SPLITS, DatasetDir, EvalSetSizes
from fbcompress.data.search_sets import SEARCH_FILE, build_name_queries
from fbcompress.data.synth import synthesize_dataset
from fbcompress.data.synth.queries import (
    CatalogueProduct,
    build_search_set,
    draw_query,
    facets,
    grade,
    phrase,
)
from fbcompress.data.synth.vocabulary import COLOUR_WORDS, SUBCATEGORY_BY_NAME


def dress(pid: str, colour: str = "red", pattern: str = "floral", length: str = "maxi", **more) -> CatalogueProduct:
    return CatalogueProduct(pid, "dress", {"colour": colour, "pattern": pattern, "pattern_colour": "white",
                                           "length": length, "sleeve": "short", "neckline": "round",
                                           "closure": "none", "pockets": 0, **more})


def test_all_named_facets_are_grade_2_all_but_one_of_three_grade_1():
    named = {"colour": "red", "pattern": "floral", "length": "maxi"}  # "red floral maxi dress"
    assert grade(named, "dress", dress("exact")) == 2
    assert grade(named, "dress", dress("exact", pattern_colour="yellow")) == 2  # a pattern is named by its kind
    assert grade(named, "dress", dress("midi", length="midi")) == 1
    assert grade(named, "dress", dress("blue midi", colour="blue", length="midi")) == 0
    skirt = CatalogueProduct("skirt", "skirt", {"colour": "red", "pattern": "floral", "length": "maxi"})
    assert grade(named, "dress", skirt) == 0  # another garment is never relevant
    two = {"colour": "red", "length": "maxi"}  # with two named facets a miss is not a partial match
    assert grade(two, "dress", dress("midi", length="midi")) == 0
    assert grade({}, "dress", dress("any", colour="green")) == 2  # "dress": every dress


def test_facets_are_what_a_query_can_name():
    got = facets({"colour": "red", "pattern": "solid", "closure": "none", "pockets": 0, "logo": False,
                  "scene": {"x": 1}, "variant_of": "s1"})
    assert got == {"colour": "red", "pattern": "solid"}
    assert facets({"colour": "red", "pattern": "dots", "pockets": 2, "logo": True, "closure": "zip"}) == {
        "colour": "red", "pattern": "dots", "pockets": True, "logo": True, "closure": "zip"}
    named = {"pockets": True}
    assert grade(named, "dress", dress("two", pockets=2)) == 2 and grade(named, "dress", dress("none")) == 0


def test_queries_read_like_a_shoppers_one_to_six_words():
    rng = random.Random(0)
    texts = [phrase("dress", {"colour": "red", "pattern": "floral", "length": "maxi"}, rng) for _ in range(200)]
    assert all(1 <= len(t.split()) <= 6 and t == t.lower() for t in texts)
    assert all("dress" in t.split() for t in texts)
    assert {"red", "scarlet"} <= {w for t in texts for w in t.split()}  # synonyms, as titles use them
    assert any(t.split()[-1] != "dress" for t in texts) and any(t.split()[-1] == "dress" for t in texts)
    long = phrase("tote", {"colour": "black", "pattern": "dots", "pockets": True}, random.Random(3))
    assert len(long.split()) <= 6
    assert phrase("tote", {}, random.Random(1)) in SUBCATEGORY_BY_NAME["tote"].nouns
    for seed in range(50):
        text, named = draw_query(dress("p", pockets=2, logo=True), random.Random(seed))
        assert len(named) <= 3 and grade(named, "dress", dress("p", pockets=2, logo=True)) == 2
        assert ("colour" in named) == any(w in text for w in COLOUR_WORDS["red"])


def _catalogue(n: int = 200) -> tuple[list[CatalogueProduct], dict[str, str]]:
    rng = random.Random(5)
    products = [dress(f"d{i}", colour=rng.choice(["red", "blue"]), pattern=rng.choice(["floral", "solid"]),
                      length=rng.choice(["mini", "maxi"]), pockets=rng.choice([0, 2])) for i in range(n)]
    split_of = {p.product_id: ("train", "val", "test")[i % 3] for i, p in enumerate(products)}
    return products, split_of


def test_each_split_gets_its_queries_with_relevance_over_the_whole_catalogue():
    products, split_of = _catalogue()
    rows = build_search_set(products, split_of, queries=10, seed=0)
    assert rows == build_search_set(products, split_of, queries=10, seed=0)  # fixed for the seed
    assert rows != build_search_set(products, split_of, queries=10, seed=1)
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        assert 1 <= len(mine) <= 10 and len({r["query"] for r in mine}) == len(mine)
        for row in mine:
            assert split_of[row["source_product"]] == split and row["relevant"][row["source_product"]] == 2
            brute = {p.product_id: g for p in products if (g := grade(row["named"], row["subcategory"], p))}
            assert row["relevant"] == brute
    assert any(split_of[pid] != r["split"] for r in rows for pid in r["relevant"])  # other splits' products too


def test_data_synth_writes_the_search_set(tmp_path: Path):
    out = synthesize_dataset(tmp_path / "cat", products=60, image_size=32, seed=0, val_fraction=0.2,
                             test_fraction=0.2, eval_sizes=EvalSetSizes(8, 4), poses=2)
    dataset = DatasetDir.open(out)
    rows = [json.loads(line) for line in (out / SEARCH_FILE).read_text().splitlines()]
    split_of = {r["product_id"]: name for name in SPLITS for r in dataset.records(name)}
    assert {r["split"] for r in rows} == set(SPLITS) and all(len([r for r in rows if r["split"] == s]) <= 8
                                                             for s in SPLITS)
    for row in rows:
        assert set(row["relevant"]) <= set(split_of) and split_of[row["source_product"]] == row["split"]
    records = {r["product_id"]: r for name in SPLITS for r in dataset.records(name)}
    row = rows[0]
    source = records[row["source_product"]]
    assert grade(row["named"], source["subcategory"], CatalogueProduct(
        source["product_id"], source["subcategory"], source["attributes"])) == 2
    before = dataset.fingerprint
    (out / SEARCH_FILE).write_text("")
    from fbcompress.data.dataset_dir import fingerprint

    assert fingerprint(out) != before  # the query sets are part of what identifies the data


def test_no_queries_asked_gives_none():
    products, split_of = _catalogue(30)
    assert build_search_set(products, split_of, queries=0, seed=0) == []


def test_product_names_are_a_labelled_proxy_where_there_are_no_queries():
    names = {"a": "Slim Jeans", "b": "slim  jeans", "c": "Wool Coat", "d": "Silk Scarf", "e": ""}
    split_of = {"a": "train", "b": "test", "c": "test", "d": "val", "e": "test"}
    rows = build_name_queries(names, split_of, queries=5, seed=0)
    test = {r["query"]: r for r in rows if r["split"] == "test"}
    assert set(test) == {"slim jeans", "wool coat"}  # an empty name is no query
    assert test["slim jeans"]["relevant"] == {"a": 2, "b": 2} and test["slim jeans"]["proxy"] is True
    assert [r["query"] for r in rows if r["split"] == "val"] == ["silk scarf"]
    assert len(build_name_queries(names, split_of, queries=1, seed=0)) == 3  # at most `queries` per split


def test_the_train_split_can_have_more_queries_without_moving_val_and_test():
    """`data.search_train_queries`: the retriever's training queries; val and test sets stay the ones drawn before."""
    products, split_of = _catalogue(300)
    same = build_search_set(products, split_of, queries=10, seed=0)
    more = build_search_set(products, split_of, queries={"train": 40, "val": 10, "test": 10}, seed=0)
    assert [r for r in more if r["split"] != "train"] == [r for r in same if r["split"] != "train"]
    train = [r for r in more if r["split"] == "train"]
    assert 10 < len(train) <= 40 and train[:10] == [r for r in same if r["split"] == "train"]
    assert EvalSetSizes(10, 4, train_search_queries=40).search_counts() == {"train": 40, "val": 10, "test": 10}
    assert EvalSetSizes(10, 4).search_counts() == {"train": 10, "val": 10, "test": 10}


def test_search_queries_read_the_split_and_refuse_broken_rows(tmp_path: Path):
    from fbcompress.core.errors import FbError
    from fbcompress.data.search_sets import search_queries

    out = synthesize_dataset(tmp_path / "cat", products=40, image_size=32, seed=0, val_fraction=0.2,
                             test_fraction=0.2, eval_sizes=EvalSetSizes(5, 4))
    dataset = DatasetDir.open(out)
    rows = [json.loads(line) for line in (out / SEARCH_FILE).read_text().splitlines()]
    val = search_queries(dataset, "val")
    assert [q.text for q in val] == [r["query"] for r in rows if r["split"] == "val"]
    assert val[0].relevant == next(r["relevant"] for r in rows if r["split"] == "val") and not val[0].proxy
    for broken, message in ((dict(rows[0], relevant={}), "no relevant products"),
                            (dict(rows[0], relevant={"s1": 3}), "expected 1 or 2"),
                            (dict(rows[0], query=""), "without a query text")):
        (out / SEARCH_FILE).write_text(json.dumps(broken) + "\n")
        with pytest.raises(FbError, match=message):
            search_queries(dataset, broken["split"])
    (out / SEARCH_FILE).unlink()
    with pytest.raises(FbError, match="has no search queries"):
        search_queries(dataset, "val")


def test_search_logs_become_graded_queries_over_every_split(tmp_path: Path):
    """An import's logs: a query is relevant to every product it led to, in any split; grade 2 for products with at
    least half its largest weight. A split's queries are the texts of its own log."""
    from fbcompress.data.search_sets import log_queries, search_queries

    out = synthesize_dataset(tmp_path / "cat", products=40, image_size=32, seed=0, val_fraction=0.2,
                             test_fraction=0.2, eval_sizes=EvalSetSizes(5, 4))
    (out / SEARCH_FILE).unlink()
    dataset = DatasetDir.open(out)
    train, test = dataset.records("train"), dataset.records("test")
    logs = {"train": [{"query": "red  dress", "id": train[0]["id"], "weight": 10},
                      {"query": "red dress", "id": train[1]["id"], "weight": 4},
                      {"query": "coat", "id": train[2]["id"], "weight": 1}],
            "val": [],
            "test": [{"query": "red dress", "id": test[0]["id"], "weight": 5}]}
    for split, rows in logs.items():
        (out / f"queries-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = {q.text: q for q in log_queries(dataset, "train")}
    assert set(queries) == {"red dress", "coat"}
    assert queries["red dress"].relevant == {train[0]["product_id"]: 2, train[1]["product_id"]: 1,
                                             test[0]["product_id"]: 2}
    assert [q.text for q in search_queries(dataset, "test")] == ["red dress"]
