"""`fbcompress data import`: a user's catalogue (JSONL, CSV, Parquet; their own column names) into a dataset dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run
from conftest import COLOURS, SUBCATEGORIES
from PIL import Image

from fbcompress.data.dataset_dir import SPLITS, DatasetDir

# the user's column names for fbcompress's fields
USER_COLUMNS = {"sku": "id", "name": "title", "blurb": "description", "dept": "category", "kind": "subcategory",
                "photo": "image", "model": "group"}
MAPPING_PAIRS = [f"{col}={field}" for col, field in USER_COLUMNS.items()]
MAPPING = [f"--map={pair}" for pair in MAPPING_PAIRS]
BAD_ROWS = {  # row -> the reason its reject must give (its start, for the decoder's own words)
    5: "image missing",
    9: "image undecodable (OSError: Truncated File Read)",
    14: "duplicate id (first at row 3)",
    20: "empty text (no title or description)",
    27: "empty subcategory (column kind)",
}


def _catalogue(root: Path, products: int = 60) -> tuple[list[dict], Path]:
    """Rows in the user's columns with JPEG/PNG images of mixed sizes under root/images; rows of BAD_ROWS are
    broken in the way the table says. Every two products share a `model` (colour variants)."""
    images = root / "images" / "photos"
    images.mkdir(parents=True)
    rows = []
    for i in range(products):
        colour = list(COLOURS)[i % len(COLOURS)]
        size = 40 + (i % 3) * 12
        pixels = np.full((size, size + 8, 3), 240, np.uint8)
        pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = COLOURS[colour]
        name = f"photos/p{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels).save(root / "images" / name)
        rows.append({"sku": f"SKU-{i:03d}", "name": f"{colour} {SUBCATEGORIES[i % 3]}", "blurb": f"style {i % 7}",
                     "dept": "clothing", "kind": SUBCATEGORIES[i % 3], "photo": name, "model": f"M{i // 2}",
                     "brand": "acme"})
    breaks = {
        5: lambda: (root / "images" / rows[5]["photo"]).unlink(),
        9: lambda: (root / "images" / rows[9]["photo"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"),
        14: lambda: rows[14].update(sku=rows[3]["sku"]),
        20: lambda: rows[20].update(name="  ", blurb=""),
        27: lambda: rows[27].update(kind=""),
    }
    for row, breaking in breaks.items():
        if row < products:
            breaking()
    return rows, root / "images"


def _write_table(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    return path


def _import(table: Path, images: Path, out: Path, *extra):
    return run("data", "import", "--products", table, "--images-root", images, "--out", out, "--workers", 1,
               "--set", "data.eval_queries=10", "--set", "data.eval_negatives=5", "--image-size", 32, *MAPPING,
               *extra)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_import_writes_a_valid_dataset_dir_and_lists_the_rejects(tmp_path, suffix):
    rows, images = _catalogue(tmp_path)
    table = _write_table(rows, tmp_path / f"shop{suffix}")
    out = tmp_path / "data"
    result = _import(table, images, out, "--max-reject-rate", 0.2)
    assert result.exit_code == 0, result.output
    assert f"imported 55 of 60 rows into {out}; 5 rejected" in result.output
    dataset = DatasetDir.open(out)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == list(BAD_ROWS)
    assert all(r["reason"].startswith(BAD_ROWS[r["row"]]) for r in rejects), rejects
    assert rejects[2]["id"] == "SKU-003"  # the duplicate row keeps the id it repeated
    splits = {name: dataset.records(name) for name in SPLITS}
    assert sum(len(r) for r in splits.values()) == 55
    groups = {name: {r["product_id"] for r in recs} for name, recs in splits.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    record = next(r for recs in splits.values() for r in recs if r["id"] == "SKU-000")
    assert record["product_id"] == "M0" and record["text"] == "red shirts. style 0"
    assert record["category"] == "clothing" and record["attributes"] == {"brand": "acme"}
    for recs in splits.values():
        for r in recs:
            with Image.open(out / r["image"]) as image:
                assert image.size == (32, 32) and image.mode == "RGB"
    ids = {name: {r["id"] for r in recs} for name, recs in splits.items()}
    for split in ("val", "test"):
        for row in dataset.eval_rows("itr", split):
            assert {row["query"], *row["negatives"]} <= ids[split]
        for row in dataset.eval_rows("pairs", split):
            assert {row["image"], row["text"]} <= ids[split]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"] == "import" and meta["rows"] == 60 and meta["rejected"] == 5
    assert meta["fields"] == {field: col for col, field in USER_COLUMNS.items()}
    assert meta["counts"] == {name: len(recs) for name, recs in splits.items()}
    assert meta["products"] == {name: len(pids) for name, pids in groups.items()}
    for recs in splits.values():  # each manifest keeps the table's order (the ids count up with the rows)
        assert [r["id"] for r in recs] == sorted(r["id"] for r in recs)
    assert sorted(p.name for p in out.iterdir()) == [  # the writer's spill is gone
        "dataset.json", "eval-itr.jsonl", "eval-pairs.jsonl", "eval-tir.jsonl", "images", "manifest-test.jsonl",
        "manifest-train.jsonl", "manifest-val.jsonl", "rejects.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.")]  # work folder gone


def test_text_that_is_not_utf8_is_a_reject_not_a_crash(tmp_path):
    rows, images = _catalogue(tmp_path, products=24)
    csv_path = _write_table(rows, tmp_path / "shop.csv")
    lines = csv_path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"style", b"st\xffyle")  # row 2
    csv_path.write_bytes(b"\n".join(lines))
    jsonl = _write_table(rows, tmp_path / "shop.jsonl")
    lines = jsonl.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"style", b"st\xffyle")
    jsonl.write_bytes(b"\n".join(lines))
    for table in (csv_path, jsonl):
        out = tmp_path / f"data-{table.suffix[1:]}"
        result = _import(table, images, out, "--max-reject-rate", 0.5)
        assert result.exit_code == 0, result.output
        reasons = {json.loads(line)["row"]: json.loads(line)["reason"]
                   for line in (out / "rejects.jsonl").read_text().splitlines()}
        assert "UTF-8" in reasons[2], reasons


def test_a_missing_column_is_one_line_naming_the_field_and_the_columns(tmp_path):
    rows, images = _catalogue(tmp_path, products=4)
    table = _write_table(rows, tmp_path / "shop.csv")
    out = tmp_path / "data"
    result = run("data", "import", "--products", table, "--images-root", images, "--out", out, "--map", "sku=id")
    assert_one_line_error(result, "no column for title, category, subcategory, image", "--map COL=title",
                          "its columns: sku, name, blurb, dept, kind, photo, model, brand")
    result = run("data", "import", "--products", table, "--images-root", images, "--out", out, "--map", "colour=title")
    assert_one_line_error(result, "--map colour=title: ", "has no column 'colour'")
    assert_one_line_error(_import(tmp_path / "nope.csv", images, out), "table not found")
    (tmp_path / "shop.xlsx").write_bytes(b"x")
    assert_one_line_error(_import(tmp_path / "shop.xlsx", images, out), "unknown table format .xlsx")
    assert not out.exists() and not (tmp_path / ".data.import").exists()
    with open(table, "a") as handle:
        handle.write("x,y,z,too,many,fields,here,now,and,more\n")
    assert_one_line_error(_import(table, images, out), "not a well-formed CSV table")
    assert not out.exists() and not (tmp_path / ".data.import").exists()


def test_over_the_reject_threshold_fails_with_the_summary_and_writes_nothing(tmp_path):
    rows, images = _catalogue(tmp_path)
    table = _write_table(rows, tmp_path / "shop.jsonl")
    out = tmp_path / "data"
    result = _import(table, images, out)  # 5 of 60 rejected: 8.3% > the default 5%
    assert_one_line_error(result, "5 of 60 rows rejected (8.3% > --max-reject-rate 5.0%)", "1 image missing",
                          "1 duplicate id", "1 empty text", "nothing written")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]


def test_a_killed_import_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    """Killed in its third shard (of 10 rows), run again: the first two shards are reused, not redone, and the
    dataset dir is byte for byte the one an uninterrupted import writes, down to a duplicate of an id whose row was
    rejected before the kill. Breaks caught: seen ids reloaded from the kept records only."""
    from fbcompress.data.dataset_dir import EvalSetSizes
    from fbcompress.data.importing import importer

    rows, images = _catalogue(tmp_path)
    rows[45]["sku"] = "SKU-009"  # the id of row 9, whose image fails in a shard done before the kill
    table = _write_table(rows, tmp_path / "shop.parquet")

    def options(out: Path, said: list[str] | None = None) -> importer.ImportOptions:
        return importer.ImportOptions(table, images, out, MAPPING_PAIRS, image_size=32, eval_sizes=EvalSetSizes(10, 5),
                                      max_reject_rate=0.2, workers=1, shard_rows=10,
                                      log=said.append if said is not None else None)

    whole = tmp_path / "whole"
    importer.import_catalogue(options(whole))
    real, calls = importer.prepare_images, []

    def killed(jobs, pool):
        calls.append(len(jobs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(jobs, pool)

    monkeypatch.setattr(importer, "prepare_images", killed)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        importer.import_catalogue(options(out))
    assert not out.exists() and (tmp_path / ".resumed.import" / "shard-000001.records.jsonl").is_file()
    said: list[str] = []
    summary = importer.import_catalogue(options(out, said))
    assert summary.resumed_shards == 2 and any("resuming: 2 shard(s) already imported" in line for line in said)
    assert len(calls) == 3 + 4  # then shards 2..5 only
    assert _tree(out) == _tree(whole)
    assert not (tmp_path / ".resumed.import").exists()
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {"row": 45, "id": "SKU-009", "reason": "duplicate id (first at row 9)"} in rejects


def test_worker_processes_write_the_same_dataset(tmp_path):
    rows, images = _catalogue(tmp_path, products=30)
    table = _write_table(rows, tmp_path / "shop.csv")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _import(table, images, one, "--max-reject-rate", 0.5).exit_code == 0
    assert _import(table, images, two, "--max-reject-rate", 0.5, "--workers", 2).exit_code == 0
    assert _tree(one) == _tree(two)


def test_an_image_path_outside_the_root_is_refused(tmp_path):
    rows, images = _catalogue(tmp_path, products=24)
    (tmp_path / "secret.png").write_bytes((images / rows[0]["photo"]).read_bytes())
    rows[1]["photo"] = "../secret.png"
    out = tmp_path / "data"
    result = _import(_write_table(rows, tmp_path / "shop.jsonl"), images, out, "--max-reject-rate", 0.5)
    assert result.exit_code == 0, result.output
    reasons = {json.loads(line)["row"]: json.loads(line)["reason"]
               for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert reasons[1] == "image path leaves --images-root (../secret.png)"


@pytest.mark.slow
def test_an_imported_catalogue_trains_exports_and_evaluates(tmp_path):
    """The dataset dir of `data import` goes through the pipeline as a synthetic one does."""
    rows, images = _catalogue(tmp_path, products=120)
    data = tmp_path / "data"
    assert _import(_write_table(rows, tmp_path / "shop.csv"), images, data, "--max-reject-rate", 0.1).exit_code == 0
    teacher = tmp_path / "teacher"
    result = run("train-teacher", "-r", "smoke", "--data", data, "--out", teacher, "--set", "data.image_size=32")
    assert result.exit_code == 0, result.output
    student = tmp_path / "student"
    result = run("distill", "-r", "smoke", "--teacher", teacher, "--data", data, "--out", student)
    assert result.exit_code == 0, result.output
    result = run("export", "--model", student, "--target", "onnx", "--out", tmp_path / "bundle", "--latency-runs", 0)
    assert result.exit_code == 0, result.output
    result = run("eval", "--model", tmp_path / "bundle" / "model.onnx", "--data", data, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= scores["auc"] <= 1.0 and scores["n_pairs"] > 0


def test_search_logs_go_to_the_split_of_their_product(tmp_path):
    """Each log row lands in its product's split; unknown products, products the import rejected, empty queries and
    weights that are not positive numbers are query rejects; a log column that is missing is one line."""
    rows, images = _catalogue(tmp_path)
    table = _write_table(rows, tmp_path / "shop.parquet")
    log = [{"q": f"{r['name']} {k}", "sku": r["sku"], "clicks": 1 + k} for r in rows[:40] for k in range(3)]
    log += [{"q": "ghost", "sku": "SKU-999", "clicks": 1}, {"q": "broken", "sku": "SKU-009", "clicks": 2},
            {"q": " ", "sku": "SKU-000", "clicks": 1}, {"q": "zero", "sku": "SKU-001", "clicks": 0},
            {"q": "text", "sku": "SKU-001", "clicks": "many"}]
    queries = _write_table(log, tmp_path / "clicks.csv")
    out = tmp_path / "data"
    qmap = ["--query-map", "q=query", "--query-map", "sku=product", "--query-map", "clicks=weight"]
    result = _import(table, images, out, "--max-reject-rate", 0.2, "--queries", queries, *qmap)
    assert result.exit_code == 0, result.output
    split_of = {r["id"]: name for name in SPLITS for r in DatasetDir.open(out).records(name)}
    kept = {name: [json.loads(x) for x in (out / f"queries-{name}.jsonl").read_text().splitlines()] for name in SPLITS}
    assert all(split_of[q["id"]] == name for name, qs in kept.items() for q in qs)
    assert kept["test"] and kept["train"]
    first = next(q for q in kept[split_of["SKU-002"]] if q["id"] == "SKU-002")
    assert first == {"query": "green skirts 0", "id": "SKU-002", "weight": 1}
    # the 3 rows of each product the import rejected (rows 5, 9, 20, 27; row 14's SKU-003 was kept from row 3) and
    # the 5 bad rows are the rejects
    reasons = [json.loads(x)["reason"] for x in (out / "query-rejects.jsonl").read_text().splitlines()]
    assert len(reasons) == 4 * 3 + 5 and sum(len(qs) for qs in kept.values()) == 125 - 17
    assert "unknown product (SKU-999)" in reasons and "product rejected by the import (SKU-009)" in reasons
    assert "empty query" in reasons and "weight is not a positive number (0.0)" in reasons
    assert "weight is not a number (many)" in reasons
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["queries"]["rows"] == 125 and meta["queries"]["rejected"] == len(reasons)
    assert "queries: " in result.output
    missing = _import(table, images, tmp_path / "other", "--queries", queries, "--query-map", "q=query")
    assert_one_line_error(missing, "no column for product", "--query-map COL=product", "its columns: q, sku, clicks")


def test_eval_sets_of_a_large_catalogue_are_sampled_not_shuffled_whole():
    """A subcategory of more than LARGE_POOL products (an imported catalogue) is sampled: the negatives are still
    distinct, never the query's product, same subcategory first, and the same seed draws the same sets; a pool just
    above the limit, where redraws would collide, is shuffled and fills up too. Breaks caught: the pool shuffled
    whole (O(pool) per query: a million-row catalogue's eval sets took hours), a sampled negative that repeats or
    is the query."""
    import random

    from fbcompress.data.dataset_dir import LARGE_POOL, EvalSetSizes, build_pair_set, build_rank_sets

    shuffled: list[int] = []

    class Spy(random.Random):  # the same draws as random.Random, and the length of every list it shuffles
        def shuffle(self, x):
            shuffled.append(len(x))
            super().shuffle(x)

    records = [{"id": f"r{i}", "product_id": f"p{i}", "category": "c", "subcategory": "big" if i % 10 else "small"}
               for i in range(3 * LARGE_POOL)]
    itr, tir = build_rank_sets(records, "test", EvalSetSizes(queries=200, negatives=50), Spy(1))
    pairs = build_pair_set(records[:1000], "test", Spy(1))
    assert shuffled[0] == 3 * LARGE_POOL  # the query order: the one shuffle of the whole split
    assert shuffled[1:] and max(shuffled[1:]) <= LARGE_POOL  # the 5400-product pool was never shuffled whole
    sub = {r["id"]: r["subcategory"] for r in records}
    for row in itr + tir:
        assert len(row["negatives"]) == 50 == len(set(row["negatives"])) and row["query"] not in row["negatives"]
        assert all(sub[n] == sub[row["query"]] for n in row["negatives"])
    assert sum(p["label"] == 0 for p in pairs) == 1000
    assert build_rank_sets(records, "test", EvalSetSizes(200, 50), random.Random(1)) == (itr, tir)
    near = records[: LARGE_POOL + 2]  # one subcategory of LARGE_POOL + 2 products: asking for all of the others
    for row in build_rank_sets([{**r, "subcategory": "s"} for r in near], "test", EvalSetSizes(3, LARGE_POOL + 1),
                               random.Random(0))[0]:
        assert sorted(row["negatives"]) == sorted(r["id"] for r in near if r["id"] != row["query"])
