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
    assert _entry({"q": " red  dress ", "sku": 12.0, "clicks": "3"}, columns, split_of, set()) == (
        {"query": "red dress", "id": "12", "weight": 3}, None)
    assert _entry({"q": "d", "sku": " P1 ", "clicks": 2.5}, columns, split_of, set())[0]["weight"] == 2.5
    assert _entry({"q": "d", "sku": "P1"}, {"query": "q", "product": "sku"}, split_of, set())[0]["weight"] == 1
    assert _entry({"q": "d", "sku": "P1", "clicks": None}, columns, split_of, set()) == (
        None, "weight is not a number (None)")
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
    assert pick_negative_products("p0", products, by_sub, by_cat, 9, random.Random(0)) == pick_negative_products(
        "p0", products, by_sub, by_cat, 9, random.Random(0), everyone)  # `everyone` is only a cache of sorted()
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
