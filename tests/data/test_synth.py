"""The synthetic catalogue: deterministic, texts that state what the images show, hard-negative variants,
and a valid dataset dir written atomically. Kept to a few dozen small images so the suite stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fbcompress.core.errors import FbError
from fbcompress.data.contact_sheet import make_contact_sheet
from fbcompress.data.dataset_dir import SPLITS, DatasetDir, EvalSetSizes
from fbcompress.data.synth import (
    COLOUR_WORDS,
    DESCRIBED_KEYS,
    SUBCATEGORIES,
    attribute_diff,
    generate_catalogue,
    synthesize_dataset,
)
from fbcompress.data.synth import catalogue as catalogue_module

EVAL = EvalSetSizes(queries=10, negatives=4)
RECORD_KEYS = ("id", "product_id", "text", "title", "description", "category", "subcategory", "attributes",
               "synthetic")


@pytest.fixture(scope="module")
def catalogue() -> list[tuple[dict, np.ndarray]]:
    return list(generate_catalogue(120, 32, seed=7))


def test_same_seed_same_catalogue_other_seed_differs() -> None:
    first = list(generate_catalogue(25, 32, seed=3, poses=2))
    again = list(generate_catalogue(25, 32, seed=3, poses=2))
    other = list(generate_catalogue(25, 32, seed=4, poses=2))
    assert [r for r, _ in first] == [r for r, _ in again]
    assert all(a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(first, again, strict=True))
    assert [r["text"] for r, _ in first] != [r["text"] for r, _ in other]
    assert any(a.tobytes() != b.tobytes() for (_, a), (_, b) in zip(first, other, strict=True))


def test_catalogue_does_not_depend_on_image_size() -> None:
    small = [r for r, _ in generate_catalogue(20, 32, seed=1)]
    large = [r for r, _ in generate_catalogue(20, 64, seed=1)]
    assert small == large


def test_records_have_keys_images_have_shape(catalogue: list[tuple[dict, np.ndarray]]) -> None:
    ids = set()
    for record, image in catalogue:
        assert all(k in record for k in RECORD_KEYS), record
        assert record["text"].strip() and record["text"] == f"{record['title']}. {record['description']}"
        assert record["synthetic"] is True
        assert record["id"].startswith(record["product_id"] + "-")
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        json.dumps(record)  # JSON-serialisable, attributes included
        ids.add(record["id"])
    assert len(ids) == len(catalogue)
    assert {r["subcategory"] for r, _ in catalogue} == {s.name for s in SUBCATEGORIES}
    assert 0.1 < np.mean([r["attributes"]["scene"]["model"] for r, _ in catalogue]) < 0.5


def _mentions(text: str, *words: str) -> bool:
    return any(w in text for w in words)


def test_text_states_every_drawn_attribute(catalogue: list[tuple[dict, np.ndarray]]) -> None:
    length_words = {"mini": ("mini", "above-the-knee"), "midi": ("midi", "mid-calf"),
                    "maxi": ("maxi", "floor-length"), "cropped": ("cropped",),
                    "full": ("full-length", "long straight leg"), "low-top": ("low-top",),
                    "high-top": ("high-top",), "ankle": ("ankle",), "knee-high": ("knee-high",)}
    sleeve_words = {"long": "long sleeve", "short": "short sleeve", "sleeveless": "sleeveless"}
    neck_words = {"round": ("round", "crew"), "v-neck": ("v-neck",), "collar": ("collar",)}
    pattern_words = {"stripes": ("stripe",), "checks": ("check", "gingham"), "dots": ("dot",),
                     "floral": ("floral", "flower")}
    for record, _ in catalogue:
        a, text = record["attributes"], record["text"].lower()
        assert _mentions(text, *COLOUR_WORDS[a["colour"]]), text
        if a["pattern"] == "solid":
            assert "pattern_colour" not in a
            assert not _mentions(text, "stripe", "check", "gingham", "dot", "floral", "flower"), text
        else:
            assert a["pattern_colour"] in text and _mentions(text, *pattern_words[a["pattern"]]), text
        if "sleeve" in a:
            assert sleeve_words[a["sleeve"]] in text.replace("-", " "), text
        if "neckline" in a:
            assert _mentions(text, *neck_words[a["neckline"]]), text
        if "length" in a:
            assert _mentions(text, *length_words[a["length"]]), text
        closure = a.get("closure", "none")
        assert ("zip" in text) == (closure == "zip"), text
        assert ("button" in text) == (closure == "buttons"), text
        assert ("lace" in text) == (closure == "laces"), text
        assert ("pocket" in text) == bool(a.get("pockets")), text
        assert ("logo" in text) == bool(a.get("logo")), text
        assert "model" not in text and "hand" not in text


def test_variants_differ_from_their_parent_in_one_or_two_attributes(
    catalogue: list[tuple[dict, np.ndarray]],
) -> None:
    by_product = {r["product_id"]: r for r, _ in catalogue}
    variants = [r for r, _ in catalogue if "variant_of" in r["attributes"]]
    assert 0.2 < len(variants) / len(catalogue) < 0.5
    for record in variants:
        parent = by_product[record["attributes"]["variant_of"]]
        assert parent["product_id"] < record["product_id"]
        assert parent["subcategory"] == record["subcategory"]
        assert 1 <= len(attribute_diff(parent["attributes"], record["attributes"])) <= 2
        assert parent["attributes"]["scene"] == record["attributes"]["scene"]
    keys = (*DESCRIBED_KEYS, "pattern_colour")
    signatures = {(r["subcategory"], *(str(r["attributes"].get(k)) for k in keys))
                  for r in by_product.values()}
    assert len(signatures) == len(by_product), "two products share every described attribute"


def test_attribute_diff_counts_pattern_and_its_colour_once() -> None:
    base = {"colour": "red", "pattern": "solid", "logo": True}
    assert attribute_diff(base, {**base, "pattern": "stripes", "pattern_colour": "white"}) == ["pattern"]
    assert attribute_diff(base, {**base, "colour": "blue", "logo": False}) == ["colour", "logo"]


def test_poses_share_attributes_and_text() -> None:
    items = list(generate_catalogue(20, 32, seed=2, poses=3))
    assert len(items) == 60
    for i in range(0, 60, 3):
        group = [r for r, _ in items[i:i + 3]]
        assert [r["id"] for r in group] == [f"{group[0]['product_id']}-{p}" for p in range(3)]
        assert all(r["text"] == group[0]["text"] and r["attributes"] == group[0]["attributes"] for r in group)
    assert items[0][1].tobytes() != items[1][1].tobytes()  # jittered, not copied


def test_synthesize_dataset_writes_a_valid_dataset_dir(tmp_path: Path) -> None:
    out = synthesize_dataset(tmp_path / "cat", products=40, image_size=32, seed=0, val_fraction=0.2,
                             test_fraction=0.2, eval_sizes=EVAL, poses=2)
    dataset = DatasetDir.open(out)
    assert dataset.meta["source"] == "synthetic" and dataset.meta["synthetic"] is True
    assert dataset.meta["image_size"] == 32 and dataset.meta["generator"] == "fbcompress.data.synth"
    records = {name: dataset.records(name) for name in SPLITS}
    assert all(records[name] for name in SPLITS)
    assert sum(len(r) for r in records.values()) == 80
    products = {name: {r["product_id"] for r in records[name]} for name in SPLITS}
    assert not (products["train"] & products["test"]) and not (products["train"] & products["val"])
    for name in SPLITS:
        for pid in products[name]:
            ids = sorted(r["id"] for r in records[name] if r["product_id"] == pid)
            assert ids == [f"{pid}-0", f"{pid}-1"]
    for kind in ("pairs", "itr", "tir"):
        assert dataset.eval_rows(kind, "test")
    assert (out / records["train"][0]["image"]).is_file()
    sheet = make_contact_sheet(out, tmp_path / "sheet.png", n=4)
    assert sheet.stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"products": 5}, "at least 20 products"),
        ({"image_size": 60}, "multiple of 8"),
        ({"image_size": 24}, "at least 32"),
        ({"poses": 0}, "poses"),
    ],
)
def test_bad_arguments_raise_fberror(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"products": 30, "image_size": 32, "seed": 0, "val_fraction": 0.1, "test_fraction": 0.1,
            "eval_sizes": EVAL, "poses": 1, **kwargs}
    with pytest.raises(FbError, match=message) as info:
        synthesize_dataset(tmp_path / "cat", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cat").exists()
    with pytest.raises(FbError, match=message):
        generate_catalogue(args["products"], args["image_size"], 0, args["poses"])


def test_failure_during_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_render = catalogue_module.render
    calls = {"n": 0}

    def flaky_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("disk on fire")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(catalogue_module, "render", flaky_render)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize_dataset(tmp_path / "cat", products=30, image_size=32, seed=0, val_fraction=0.1,
                           test_fraction=0.1, eval_sizes=EVAL)
    assert list(tmp_path.iterdir()) == []
