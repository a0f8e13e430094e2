"""Fashion-Gen HDF5 → dataset dir, on tiny files written in exactly the public layout.

The real files are tens of GB and cannot be downloaded here, so the fixture mimics their layout byte for byte
where it matters: (N, 1) fixed-length byte-string columns holding latin-1 text, (N, 256, 256, 3) uint8 images,
and (N, 1) integer product ids shared by 2–3 poses.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from fbcompress.core.errors import FbError
from fbcompress.data import fashiongen
from fbcompress.data.dataset_dir import SPLITS, DatasetDir, EvalSetSizes
from fbcompress.data.fashiongen import OPTIONAL_KEYS, REQUIRED_KEYS, convert_fashiongen, is_held_out_file

EVAL = EvalSetSizes(queries=10, negatives=3)
SUBCATEGORIES = [
    ("TOPS", "SWEATERS"),
    ("TOPS", "SHIRTS"),
    ("PANTS", "JEANS"),
    ("PANTS", "TROUSERS"),
    ("DRESSES", "DRESSES"),
]

# (product id, name, description): the first products carry latin-1 text and messy whitespace on purpose.
TRAIN_PRODUCTS = [
    (100, "Café au lait sweater", "  Long sleeve   knit in crêpe wool.\nRib-knit cuffs. "),
    (101, "Naïve print shirt", "Cotton poplin shirt with a spread collar."),
] + [(102 + i, f"Product {i}", f"Description of product {i}.") for i in range(10)]
VALIDATION_PRODUCTS = [(900 + i, f"Held out {i}", f"Validation description {i}.") for i in range(6)]


def _poses(index: int) -> int:
    return 2 if index % 2 == 0 else 3


def _column(values: list[str]) -> np.ndarray:
    """An (N, 1) fixed-length byte-string column, latin-1 encoded as in the public files."""
    encoded = [v.encode("latin-1") for v in values]
    width = max(1, *(len(b) for b in encoded))
    return np.array([[b] for b in encoded], dtype=f"S{width}")


def row_color(file_tag: int, row: int) -> tuple[int, int, int]:
    """A colour unique to each row, so a test can tell which row an output image came from."""
    return (file_tag * 100 + row) % 256, (row * 7) % 256, 255 - row % 256


def write_fashiongen(
    path: Path,
    products: list[tuple[int, str, str]],
    *,
    file_tag: int = 0,
    image_shape: tuple[int, ...] | None = None,
    drop: tuple[str, ...] = (),
    empty_row: bool = False,
) -> int:
    """Write one Fashion-Gen-layout file and return its row count."""
    rows: dict[str, list] = {k: [] for k in ("name", "desc", "cat", "sub", "pid", "pose", "brand", "price")}
    for index, (pid, name, desc) in enumerate(products):
        category, sub = SUBCATEGORIES[index % len(SUBCATEGORIES)]
        for pose in range(_poses(index)):
            values = (name, desc, category, sub, pid, f"id_gridfs_{pose + 1}", "Maison Crème", 120.3 + index)
            for key, value in zip(rows, values, strict=True):
                rows[key].append(value)
    if empty_row:
        for key, value in zip(rows, ("", "   ", "TOPS", "SHIRTS", 999, "id_gridfs_1", "", 1.0), strict=True):
            rows[key].append(value)
    n = len(rows["name"])
    if image_shape is None:
        images = np.empty((n, 256, 256, 3), dtype=np.uint8)
        for row in range(n):
            images[row] = row_color(file_tag, row)
    else:
        images = np.zeros(image_shape, dtype=np.uint8)
    data = {
        "input_image": images,
        "input_name": _column(rows["name"]),
        "input_description": _column(rows["desc"]),
        "input_category": _column(rows["cat"]),
        "input_subcategory": _column(rows["sub"]),
        "input_productID": np.array(rows["pid"], dtype=np.int32).reshape(n, 1),
        "input_pose": _column(rows["pose"]),
        "input_brand": _column(rows["brand"]),
        "input_msrpUSD": np.array(rows["price"], dtype=np.float32).reshape(n, 1),
        "input_gender": _column(["WOMEN"] * n),
        "index": np.arange(n).reshape(n, 1),
    }
    with h5py.File(path, "w") as handle:
        for key, value in data.items():
            if key not in drop:
                handle.create_dataset(key, data=value)
    return n


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fashiongen-h5")
    train = root / "fashiongen_256_256_train.h5"
    validation = root / "fashiongen_256_256_validation.h5"
    return {
        "train": train,
        "validation": validation,
        "train_rows": write_fashiongen(train, TRAIN_PRODUCTS, file_tag=0),
        "validation_rows": write_fashiongen(validation, VALIDATION_PRODUCTS, file_tag=1),
    }


def convert(paths: list[Path], out: Path, **kwargs) -> Path:
    options = {"seed": 7, "val_fraction": 0.2, "test_fraction": 0.2, "eval_sizes": EVAL, "image_size": 32}
    return convert_fashiongen(paths, out, **{**options, **kwargs})


@pytest.fixture(scope="module")
def converted(h5_files: dict, tmp_path_factory: pytest.TempPathFactory) -> DatasetDir:
    out = tmp_path_factory.mktemp("fashiongen-out") / "data"
    return DatasetDir.open(convert([h5_files["train"], h5_files["validation"]], out))


def all_records(data: DatasetDir) -> dict[str, list[dict]]:
    return {split: data.records(split) for split in SPLITS}


def test_keys_cover_the_public_layout() -> None:
    assert "input_image" in REQUIRED_KEYS and "input_productID" in REQUIRED_KEYS
    assert {"input_pose", "input_brand", "input_gender"} <= set(OPTIONAL_KEYS)


def test_conversion_writes_a_valid_dataset_dir(converted: DatasetDir, h5_files: dict) -> None:
    meta = converted.meta
    assert meta["source"] == "fashiongen"
    assert meta["source_files"] == ["fashiongen_256_256_train.h5", "fashiongen_256_256_validation.h5"]
    assert meta["skipped_rows"] == 0
    assert meta["image_size"] == 32
    assert converted.fingerprint
    records = all_records(converted)
    assert all(records[split] for split in SPLITS)
    for record in (r for rows in records.values() for r in rows):
        assert (converted.root / record["image"]).is_file()


def test_every_pose_is_kept_as_a_record(converted: DatasetDir, h5_files: dict) -> None:
    records = [r for rows in all_records(converted).values() for r in rows]
    assert len(records) == h5_files["train_rows"] + h5_files["validation_rows"]
    ids = {r["id"] for r in records}
    assert {f"fg0-{row}" for row in range(h5_files["train_rows"])} <= ids
    assert {f"fg1-{row}" for row in range(h5_files["validation_rows"])} <= ids
    poses = [r for r in records if r["product_id"] == "101"]
    assert len(poses) == 3 and len({r["id"] for r in poses}) == 3


def test_latin1_text_is_decoded_and_normalised(converted: DatasetDir) -> None:
    records = {r["id"]: r for rows in all_records(converted).values() for r in rows}
    first = records["fg0-0"]
    assert first["title"] == "Café au lait sweater"
    assert first["description"] == "Long sleeve knit in crêpe wool. Rib-knit cuffs."
    assert first["text"] == "Café au lait sweater. Long sleeve knit in crêpe wool. Rib-knit cuffs."
    assert first["product_id"] == "100"
    assert (first["category"], first["subcategory"]) == ("TOPS", "SWEATERS")
    assert records["fg0-2"]["title"] == "Naïve print shirt"
    assert first["attributes"]["brand"] == "Maison Crème"
    assert first["attributes"]["pose"] == "id_gridfs_1"
    assert first["attributes"]["gender"] == "WOMEN"
    # Stored as float32 like the public prices; read back without float32 noise.
    assert records["fg0-5"]["attributes"]["msrpUSD"] == 122.3
    assert records["fg0-7"]["attributes"]["msrpUSD"] == 123.3
    # The manifest is UTF-8 on disk, so the accents survive a plain read too.
    assert "Café" in (converted.root / "manifest-train.jsonl").read_text(encoding="utf-8") + (
        converted.root / "manifest-val.jsonl"
    ).read_text(encoding="utf-8")


def test_validation_file_becomes_the_test_split(converted: DatasetDir) -> None:
    records = all_records(converted)
    assert {r["id"].split("-")[0] for r in records["test"]} == {"fg1"}
    assert {r["product_id"] for r in records["test"]} == {str(pid) for pid, _, _ in VALIDATION_PRODUCTS}
    assert {r["id"].split("-")[0] for r in records["train"] + records["val"]} == {"fg0"}
    assert converted.meta["test_files"] == ["fashiongen_256_256_validation.h5"]


def test_no_product_straddles_splits(converted: DatasetDir) -> None:
    products = {split: {r["product_id"] for r in rows} for split, rows in all_records(converted).items()}
    assert not products["train"] & products["val"]
    assert not products["train"] & products["test"]
    assert not products["val"] & products["test"]


def test_product_in_both_files_goes_to_test(h5_files: dict, tmp_path: Path) -> None:
    validation = tmp_path / "fashiongen_256_256_validation.h5"
    write_fashiongen(validation, [TRAIN_PRODUCTS[0]] + VALIDATION_PRODUCTS[:3], file_tag=1)
    data = DatasetDir.open(convert([h5_files["train"], validation], tmp_path / "data"))
    shared = {split: [r["id"] for r in data.records(split) if r["product_id"] == "100"] for split in SPLITS}
    assert sorted(shared["test"]) == ["fg0-0", "fg0-1", "fg1-0", "fg1-1"]
    assert not shared["train"] and not shared["val"]


def test_eval_sets_exist(converted: DatasetDir) -> None:
    for split in ("val", "test"):
        pairs = converted.eval_rows("pairs", split)
        assert {p["label"] for p in pairs} == {0, 1}
        assert converted.eval_rows("itr", split)
        assert converted.eval_rows("tir", split)


def test_resized_images_keep_their_row(converted: DatasetDir) -> None:
    records = {r["id"]: r for rows in all_records(converted).values() for r in rows}
    for rid, (tag, row) in {"fg0-4": (0, 4), "fg1-3": (1, 3)}.items():
        with Image.open(converted.root / records[rid]["image"]) as image:
            assert image.size == (32, 32)
            assert image.convert("RGB").getpixel((16, 16)) == row_color(tag, row)


def test_default_keeps_native_size(h5_files: dict, tmp_path: Path) -> None:
    out = convert([h5_files["train"]], tmp_path / "data", image_size=None, limit=7)
    data = DatasetDir.open(out)
    assert data.meta["image_size"] == 256
    record = next(r for split in SPLITS for r in data.records(split) if r["id"] == "fg0-5")
    with Image.open(out / record["image"]) as image:
        assert image.size == (256, 256)
        expected = np.full((256, 256, 3), row_color(0, 5), np.uint8)
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def test_single_file_is_split_by_fractions(h5_files: dict, tmp_path: Path) -> None:
    data = DatasetDir.open(convert([h5_files["train"]], tmp_path / "data"))
    records = all_records(data)
    assert sum(len(rows) for rows in records.values()) == h5_files["train_rows"]
    products = {split: {r["product_id"] for r in rows} for split, rows in records.items()}
    assert all(products.values())
    assert sum(len(p) for p in products.values()) == len(TRAIN_PRODUCTS)
    assert data.meta["test_files"] == []


def test_limit_reads_only_the_first_rows(h5_files: dict, tmp_path: Path) -> None:
    out = convert([h5_files["train"], h5_files["validation"]], tmp_path / "data", limit=7)
    data = DatasetDir.open(out)
    ids = sorted(r["id"] for split in SPLITS for r in data.records(split))
    assert ids == sorted([f"fg0-{i}" for i in range(7)] + [f"fg1-{i}" for i in range(7)])
    assert data.meta["limit"] == 7


def test_rows_across_chunk_boundaries(
    h5_files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real files are read 256 rows at a time; small chunks check that rows and images stay aligned."""
    monkeypatch.setattr(fashiongen, "CHUNK_ROWS", 4)
    data = DatasetDir.open(convert([h5_files["train"]], tmp_path / "data"))
    records = {r["id"]: r for split in SPLITS for r in data.records(split)}
    assert set(records) == {f"fg0-{row}" for row in range(h5_files["train_rows"])}
    for row in (3, 4, 9, h5_files["train_rows"] - 1):
        with Image.open(data.root / records[f"fg0-{row}"]["image"]) as image:
            assert image.convert("RGB").getpixel((5, 5)) == row_color(0, row)
    assert records["fg0-5"]["product_id"] == "102"  # rows 0-1: 100, rows 2-4: 101, rows 5-6: 102


def test_same_seed_same_dataset(h5_files: dict, tmp_path: Path) -> None:
    paths = [h5_files["train"], h5_files["validation"]]
    first = DatasetDir.open(convert(paths, tmp_path / "a", limit=10))
    second = DatasetDir.open(convert(paths, tmp_path / "b", limit=10))
    assert first.fingerprint == second.fingerprint


def test_empty_text_row_is_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "fashiongen_256_256_train.h5"
    rows = write_fashiongen(train, TRAIN_PRODUCTS[:6], empty_row=True)
    out = convert([train], tmp_path / "data")
    data = DatasetDir.open(out)
    records = [r for split in SPLITS for r in data.records(split)]
    assert len(records) == rows - 1
    assert f"fg0-{rows - 1}" not in {r["id"] for r in records}
    assert data.meta["skipped_rows"] == 1
    assert json.loads((out / "dataset.json").read_text())["skipped_rows"] == 1
    assert "skipped 1 row" in capsys.readouterr().err


def test_name_only_row_uses_the_name(tmp_path: Path) -> None:
    train = tmp_path / "train.h5"
    write_fashiongen(train, [(1, "Plain tee", "   ")] + TRAIN_PRODUCTS[2:6])
    data = DatasetDir.open(convert([train], tmp_path / "data"))
    record = next(r for split in SPLITS for r in data.records(split) if r["id"] == "fg0-0")
    assert record["text"] == "Plain tee"
    assert record["description"] == ""


def test_held_out_file_names() -> None:
    assert is_held_out_file(Path("fashiongen_256_256_validation.h5"))
    assert is_held_out_file(Path("fg_valid.h5"))
    assert is_held_out_file(Path("fg-test.h5"))
    assert not is_held_out_file(Path("fashiongen_256_256_train.h5"))
    assert not is_held_out_file(Path("latest_train.h5"))


def assert_fails(paths: list[Path], out: Path, *fragments: str) -> None:
    """The conversion raises FbError naming the problem, and leaves nothing behind at or beside `out`."""
    before = set(out.parent.iterdir()) if out.parent.exists() else set()
    with pytest.raises(FbError) as info:
        convert(paths, out)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()
    assert set(out.parent.iterdir()) == before


def test_missing_file(h5_files: dict, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.h5"
    assert_fails([h5_files["train"], missing], tmp_path / "data", "not found", str(missing))


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    bogus = tmp_path / "fashiongen_256_256_train.h5"
    bogus.write_text("this is not HDF5\n")
    assert_fails([bogus], tmp_path / "data", str(bogus), "is not an HDF5 file")


def test_hdf5_without_the_expected_keys(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("pixels", data=np.zeros((2, 4, 4, 3), np.uint8))
    assert_fails([other], tmp_path / "data", str(other), "input_image", "input_productID", "input_name")


def test_missing_one_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    write_fashiongen(path, TRAIN_PRODUCTS[:4], drop=("input_subcategory",))
    assert_fails([path], tmp_path / "data", "lacks input_subcategory")


@pytest.mark.parametrize("shape", [(4, 256, 128, 3), (4, 256, 256), (4, 256, 256, 1)])
def test_wrong_image_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "train.h5"
    write_fashiongen(path, TRAIN_PRODUCTS[:2], image_shape=shape)  # 2 + 3 = 5 rows, images say 4
    with h5py.File(path, "a") as handle:  # make the row counts agree so only the shape is wrong
        for key in [k for k in handle if k != "input_image"]:
            data = handle[key][:4]
            del handle[key]
            handle.create_dataset(key, data=data)
    assert_fails([path], tmp_path / "data", "input_image", str(shape))


def test_row_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    write_fashiongen(path, TRAIN_PRODUCTS[:2], image_shape=(4, 256, 256, 3))
    assert_fails([path], tmp_path / "data", "different numbers of rows", "input_image 4", "input_name 5")


def test_bad_second_file_writes_nothing(h5_files: dict, tmp_path: Path) -> None:
    bogus = tmp_path / "fashiongen_256_256_validation.h5"
    bogus.write_bytes(b"\x89HDF-not-really")
    assert_fails([h5_files["train"], bogus], tmp_path / "data", "is not an HDF5 file")


def test_bad_arguments(h5_files: dict, tmp_path: Path) -> None:
    out = tmp_path / "data"
    with pytest.raises(FbError, match="at least one"):
        convert([], out)
    with pytest.raises(FbError, match="given twice"):
        convert([h5_files["train"], h5_files["train"]], out)
    with pytest.raises(FbError, match="image size"):
        convert([h5_files["train"]], out, image_size=0)
    with pytest.raises(FbError, match="limit"):
        convert([h5_files["train"]], out, limit=0)
    with pytest.raises(FbError, match="below 1"):
        convert([h5_files["train"]], out, val_fraction=0.6, test_fraction=0.5)
    assert not out.exists()


def test_product_names_stand_in_for_search_queries(converted: DatasetDir) -> None:
    """Fashion-Gen has no queries: eval-search.jsonl holds product names as a labelled proxy, each relevant to
    the products of that name across the whole catalogue."""
    import json

    from fbcompress.data.search_sets import SEARCH_FILE

    assert "proxy" in converted.meta["search_queries"]
    rows = [json.loads(line) for line in (converted.root / SEARCH_FILE).read_text().splitlines()]
    names: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for record in converted.records(split):
            names.setdefault(" ".join(record["title"].lower().split()), set()).add(record["product_id"])
    assert rows and all(row["proxy"] is True for row in rows)
    for row in rows:
        assert set(row["relevant"]) == names[row["query"]] and set(row["relevant"].values()) == {2}
