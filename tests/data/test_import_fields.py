"""The import's pure parts, row by row: column mapping, a row to a record or its reason, a search-log row, the text
join, image names and the negative-product draw (mutation testing of `data/importing` and the eval-set sampler found
these unchecked by the end-to-end tests of test_import.py)."""

from __future__ import annotations

import random

import pytest

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import LARGE_POOL, pick_negative_products, record_text
from fbcompress.data.importing.fields import FieldMap, reason_counts
from fbcompress.data.importing.importer import image_name
from fbcompress.data.importing.queries import _entry
from fbcompress.data.importing.table import BadText

COLUMNS = ["sku", "title", "blurb", "category", "subcategory", "photo", "colour", "tags"]


def test_record_text_joins_title_and_description_as_sentences():
    assert record_text("Linen shirt", "Relaxed fit") == "Linen shirt. Relaxed fit"
    for end in ".!?":
        assert record_text(f"Linen shirt{end}", "Relaxed fit") == f"Linen shirt{end} Relaxed fit"
    assert record_text("Shirt.x", "Fit") == "Shirt.x. Fit"  # only the last character counts
    assert record_text("X", "Fit") == "X. Fit" and record_text("", "Fit") == "Fit" and record_text("T", "") == "T"


def test_field_map_resolves_named_and_mapped_columns():
    fields = FieldMap.resolve(COLUMNS, ["sku=id", "blurb=description", "photo=image"], "shop.csv")
    assert fields.columns == {"id": "sku", "description": "blurb", "image": "photo", "title": "title",
                              "category": "category", "subcategory": "subcategory"}
    # a column already mapped to another field is not also taken by name
    taken = FieldMap.resolve(["id", "title", "category", "subcategory", "image"], ["title=id", "id=title"], "t")
    assert taken.columns == {"id": "title", "title": "id", "category": "category", "subcategory": "subcategory",
                             "image": "image"}
    spaced = FieldMap.resolve(COLUMNS, [" sku = id ", "photo=image"], "t")
    assert spaced.columns["id"] == "sku"


@pytest.mark.parametrize("pairs, message", [
    (["sku"], "--map 'sku': expected COL=FIELD, e.g. --map product_name=title"),
    (["=id"], "--map '=id': expected COL=FIELD"),
    (["sku="], "--map 'sku=': expected COL=FIELD"),
    (["sku=id=x"], "--map sku=id=x: 'id=x' is not a field (choose from id, title, category, subcategory, image, "
                   "description, group)"),
    (["sku=id", "photo=id"], "--map: id is mapped twice (sku and photo)"),
    (["nope=image"], "--map nope=image: shop.csv has no column 'nope' (its columns: sku, title, blurb, category, "
                     "subcategory, photo, colour, tags)"),
    (["sku=id"], "shop.csv has no column for image (map one with --map COL=image); its columns: sku, title, blurb"),
])
def test_field_map_refuses_bad_pairs_in_one_line(pairs, message):
    with pytest.raises(FbError) as caught:
        FieldMap.resolve(COLUMNS, pairs, "shop.csv")
    assert message in str(caught.value)


def test_a_row_becomes_a_record_or_a_reason():
    fields = FieldMap.resolve(COLUMNS, ["sku=id", "blurb=description", "photo=image", "colour=group"], "t")
    row = {"sku": 12.0, "title": " Linen  shirt ", "blurb": "Relaxed\tfit", "category": "women",
           "subcategory": "shirts", "photo": "a.jpg", "colour": "L1", "tags": ["x"], "extra": 3, "note": None}
    record, why = fields.record(row)
    assert why is None and record == {
        "id": "12", "product_id": "L1", "text": "Linen shirt. Relaxed fit", "title": "Linen shirt",
        "description": "Relaxed fit", "category": "women", "subcategory": "shirts",
        "attributes": {"extra": 3, "note": None},  # unmapped scalars; the list is left out
        "source_image": "a.jpg",
    }
    plain = FieldMap.resolve(COLUMNS, ["sku=id", "photo=image"], "t")  # no group, no description column
    record, _ = plain.record({**row, "blurb": "ignored"})
    assert record["product_id"] == "12" and record["text"] == "Linen shirt" and record["description"] == ""
    assert record["attributes"] == {"blurb": "ignored", "colour": "L1", "extra": 3, "note": None}
    assert fields.record({**row, "title": "", "blurb": ""}) == (None, "empty text (no title or description)")
    assert fields.record({**row, "sku": None}) == (None, "empty id (column sku)")
    assert fields.record({**row, "photo": " "}) == (None, "empty image (column photo)")
    assert fields.record({**row, "title": BadText("title"), "blurb": BadText("blurb")}) == (
        None, "not UTF-8 text in title, blurb")
    assert fields.record({"__error__": "line 3 is not valid JSON"}) == (None, "line 3 is not valid JSON")
    assert fields.record({**row, "sku": 7.5})[0]["id"] == "7.5"
    assert fields.record({**row, "sku": True})[0]["id"] == "True"


def test_reasons_are_counted_without_their_details():
    rejects = [{"reason": "image undecodable (OSError: x)"}, {"reason": "image undecodable (SyntaxError: y)"},
               {"reason": "empty text (no title or description)"}, {"reason": "image missing"}]
    assert reason_counts(rejects) == {"image undecodable": 2, "empty text": 1, "image missing": 1}


def test_image_names_are_the_id_when_safe_else_a_hash():
    assert image_name("SKU-001.a_b") == "SKU-001.a_b" and image_name("9") == "9"
    for unsafe in ("a/b", ".hidden", "-x", "é", "x" * 121, "a b"):
        name = image_name(unsafe)
        assert name.startswith("id-") and len(name) == 27, unsafe
    assert image_name("x" * 120) == "x" * 120 and image_name("a/b") != image_name("a/c")
    assert image_name("a/b") == image_name("a/b")


def test_a_search_log_row_becomes_an_entry_or_a_reason():
    columns = {"query": "q", "product": "sku", "weight": "clicks"}
    split_of = {"12": "train", "P1": "test"}
    entry, why = _entry({"q": " red  dress ", "sku": 12.0, "clicks": "3"}, columns, split_of, set())
    assert why is None and entry == {"query": "red dress", "id": "12", "weight": 3}
    assert type(entry["weight"]) is int  # written as 3, not 3.0
    assert _entry({"q": "d", "sku": " P1 ", "clicks": 2.5}, columns, split_of, set())[0]["weight"] == 2.5
    # no weight is one event: no weight column, a missing key (JSONL), null (Parquet), an empty cell (CSV)
    assert _entry({"q": "d", "sku": "P1"}, {"query": "q", "product": "sku"}, split_of, set())[0]["weight"] == 1
    for no_weight in ({}, {"clicks": None}, {"clicks": " "}):
        entry, why = _entry({"q": "d", "sku": "P1", **no_weight}, columns, split_of, set())
        assert why is None and entry["weight"] == 1 and type(entry["weight"]) is int, no_weight
    assert _entry({"q": "d", "sku": "P1", "clicks": "two"}, columns, split_of, set()) == (
        None, "weight is not a number (two)")
    for bad, shown in ((0, "0.0"), (-1, "-1.0"), (float("inf"), "inf"), (float("nan"), "nan")):
        assert _entry({"q": "d", "sku": "P1", "clicks": bad}, columns, split_of, set()) == (
            None, f"weight is not a positive number ({shown})")
    assert _entry({"q": "d", "sku": "P9", "clicks": 1}, columns, split_of, {"P9"}) == (
        None, "product rejected by the import (P9)")
    assert _entry({"q": "d", "sku": None, "clicks": 1}, columns, split_of, set()) == (None, "unknown product ()")
    assert _entry({"q": None, "sku": "P1"}, columns, split_of, set()) == (None, "empty query")
    assert _entry({"q": BadText("q"), "sku": "P1"}, columns, split_of, set()) == (None, "not UTF-8 text")
    assert _entry({"__error__": "line 2 is not UTF-8 text"}, columns, split_of, set()) == (
        None, "line 2 is not UTF-8 text")


def test_negatives_come_from_the_subcategory_then_the_category_then_anywhere():
    products = {f"p{i}": {"subcategory": "s" if i < 3 else "t" if i < 6 else "u", "category": "c" if i < 6 else "d"}
                for i in range(10)}
    by_sub = {"s": ["p0", "p1", "p2"], "t": ["p3", "p4", "p5"], "u": ["p6", "p7", "p8", "p9"]}
    by_cat = {"c": [f"p{i}" for i in range(6)], "d": ["p6", "p7", "p8", "p9"]}
    everyone = sorted(products)
    for n in (2, 5, 9):
        got = pick_negative_products("p0", products, by_sub, by_cat, n, random.Random(0), everyone)
        assert len(got) == len(set(got)) == n and "p0" not in got
        assert set(got[:2]) == {"p1", "p2"}  # the subcategory first
        assert set(got[2:5]) <= {"p3", "p4", "p5"}  # then the category
    assert len(pick_negative_products("p0", products, by_sub, by_cat, 20, random.Random(0), everyone)) == 9
    # a pool of exactly LARGE_POOL products is shuffled (draws as before the sampler existed); one more is sampled
    pool = [f"q{i}" for i in range(LARGE_POOL + 1)]
    big = {p: {"subcategory": "s", "category": "c"} for p in pool}
    exact = pool[:LARGE_POOL]
    shuffled = exact[1:]
    random.Random(3).shuffle(shuffled)
    assert pick_negative_products("q0", big, {"s": exact}, {"c": exact}, 5, random.Random(3), exact) == shuffled[:5]
    sampled = pick_negative_products("q0", big, {"s": pool}, {"c": pool}, 5, random.Random(3), pool)
    assert sampled != shuffled[:5] and len(set(sampled)) == 5 and "q0" not in sampled


class _NoScan(list):
    """A pool that may be indexed but not scanned: what the sampler promises for a large subcategory."""

    def __iter__(self):
        raise AssertionError("a large pool was scanned")


def test_negatives_are_exactly_n_and_a_full_pool_stops_the_draw():
    # a 2-product subcategory, then a category larger than the rest of n: exactly n come back, both when the
    # category is shuffled (small) and when it is sampled (large)
    for size in (12, LARGE_POOL + 10):
        cat = [f"p{i}" for i in range(size)]
        products = {p: {"subcategory": "s" if i < 3 else "t", "category": "c"} for i, p in enumerate(cat)}
        got = pick_negative_products("p0", products, {"s": cat[:3]}, {"c": cat}, 6, random.Random(1), cat)
        assert len(got) == len(set(got)) == 6 and "p0" not in got and set(got[:2]) == {"p1", "p2"}, size
    # a subcategory that fills n never looks at the category pool, nor at everyone
    products = {f"p{i}": {"subcategory": "s", "category": "c"} for i in range(5)}
    got = pick_negative_products("p0", products, {"s": sorted(products)}, {}, 4, random.Random(0), None)
    assert sorted(got) == ["p1", "p2", "p3", "p4"]


def test_a_large_pool_is_sampled_without_a_scan():
    pool = _NoScan(f"q{i}" for i in range(LARGE_POOL * 5))
    products = dict.fromkeys(list.__iter__(pool), {"subcategory": "s", "category": "c"})
    got = pick_negative_products("q0", products, {"s": pool}, {"c": pool}, 50, random.Random(7), pool)
    assert len(got) == len(set(got)) == 50 and "q0" not in got
    # a large pool with too few products left beyond those already seen is shuffled: all of it comes back
    small_rest = [f"q{i}" for i in range(LARGE_POOL + 2)]
    got = pick_negative_products("q0", products, {"s": small_rest}, {"c": []}, LARGE_POOL + 5, random.Random(7),
                                 [])
    assert sorted(got) == sorted(small_rest[1:])


def test_a_large_pool_mostly_drawn_already_is_emptied_not_looped_on():
    # the subcategory gives 1989 negatives; its category of 2010 (above LARGE_POOL) has only 20 left beyond them,
    # fewer than the 61 still wanted: the draw must take those 20 and go on to everyone, not redraw forever
    cat = [f"p{i:04d}" for i in range(2010)]
    products = {p: {"subcategory": "s" if i < 1990 else "t", "category": "c"} for i, p in enumerate(cat)}
    everyone = [*cat, "z1", "z2"]
    got = pick_negative_products("p0000", products, {"s": cat[:1990]}, {"c": cat}, 2050, random.Random(2), everyone)
    assert len(got) == len(set(got)) == 2011 and sorted(got) == sorted(everyone[1:])
    assert set(got[:1989]) == set(cat[1:1990]) and set(got[1989:2009]) == set(cat[1990:])
