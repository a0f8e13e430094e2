"""The dataset directory: the one format every producer writes and every stage reads.

Layout (docs/formats.md)::

    DIR/dataset.json                 source, counts, seed, fingerprint
    DIR/images/<id>.png              one image per record (a product may have several poses)
    DIR/manifest-{train,val,test}.jsonl
    DIR/eval-pairs.jsonl             fixed ACC/AUC pairs (matched + same-subcategory mismatched), val and test
    DIR/eval-itr.jsonl, eval-tir.jsonl   fixed Rank@K query sets, val and test

A manifest line is a record: ``id``, ``product_id``, ``image`` (path relative to DIR), ``text`` (what the model
reads), ``title``, ``description``, ``category``, ``subcategory``, ``attributes`` (free-form dict), optionally
``features`` (a .npy of per-patch features, relative to DIR). Splits are made by product so the poses of one
product never straddle train and test. Eval sets are drawn once with the seed so every model is scored on the
same candidates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from fbcompress.core.artifacts import atomic_dir
from fbcompress.core.errors import FbError

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("id", "product_id", "image", "text", "category", "subcategory")
FORMAT_VERSION = 1


@dataclass
class EvalSetSizes:
    """How many Rank@K queries and negatives to draw (fewer when the split is small), and how many search queries
    the train split gets (None: `queries`, as val and test; the train split's are a retriever's training data)."""

    queries: int = 1000
    negatives: int = 100
    train_search_queries: int | None = None

    def search_counts(self) -> dict[str, int]:
        """Search queries drawn per split."""
        train = self.queries if self.train_search_queries is None else self.train_search_queries
        return {"train": train, "val": self.queries, "test": self.queries}


def record_text(title: str, description: str) -> str:
    """The text the model reads: title and description joined into one sentence sequence (no "name.. text")."""
    if title and description:
        return f"{title} {description}" if title[-1] in ".!?" else f"{title}. {description}"
    return title or description


SPILL_FILE = "records.spill"  # the writer's records until the split is known (not .jsonl: never fingerprinted)
KEY_FIELDS = ("id", "product_id", "category", "subcategory")  # what the eval-set draw reads of a record


@dataclass
class DatasetWriter:
    """Streams records to a spill file in a temporary dir; `dataset_writer` finalises splits and eval sets.

    Memory holds each record's id and product id (to refuse duplicates and to split by product), not the records:
    an imported catalogue of millions of rows is written in one pass over its shards and read back once."""

    root: Path
    preset_split: dict[str, str] = field(default_factory=dict)
    _ids: set[str] = field(default_factory=set)
    _products: set[str] = field(default_factory=set)
    _spill: IO[str] | None = None

    @property
    def count(self) -> int:
        """How many records were added."""
        return len(self._ids)

    def add(self, record: dict, image: np.ndarray | Image.Image, split: str | None = None) -> None:
        """Add one record and its RGB image; `split` pins its product to a split (else assigned by seed)."""
        rid = self._check(record, split)
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        rel = f"images/{rid}.png"
        pil.convert("RGB").save(self.root / rel, optimize=False, compress_level=1)
        self._keep(record, rid, rel)

    def add_written(self, record: dict, png: Path, name: str) -> None:
        """Add one record whose image is already a PNG of the right size (written by an import worker), linked in
        as images/<name>.png (copied across file systems): the import's own copy stays until the dataset is
        complete, so a kill while writing loses nothing."""
        rid = self._check(record, None)
        rel = f"images/{name}.png"
        try:
            os.link(png, self.root / rel)
        except OSError:
            shutil.copyfile(png, self.root / rel)
        self._keep(record, rid, rel)

    def _check(self, record: dict, split: str | None) -> str:
        missing = [k for k in REQUIRED_KEYS if k not in record and k != "image"]
        if missing:
            raise FbError(f"record {record.get('id', '?')} lacks {', '.join(missing)}")
        if not str(record["text"]).strip():
            raise FbError(f"record {record['id']} has an empty text")
        rid = str(record["id"])
        if rid in self._ids:
            raise FbError(f"duplicate record id {rid}")
        if split is not None:
            if split not in SPLITS:
                raise FbError(f"unknown split {split!r}")
            self.preset_split[str(record["product_id"])] = split
        return rid

    def _keep(self, record: dict, rid: str, rel: str) -> None:
        pid = str(record["product_id"])
        self._ids.add(rid)
        self._products.add(pid)
        if self._spill is None:
            self._spill = open(self.root / SPILL_FILE, "w", encoding="utf-8")  # noqa: SIM115 (closed by _close)
        row = {**record, "id": rid, "product_id": pid, "image": rel}
        self._spill.write(json.dumps(row, ensure_ascii=False) + "\n")

    def _close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _write_manifests(self, where: dict[str, str], keep_split_of: bool) -> _Manifests:
        """Write manifest-{split}.jsonl from the spill, in the order records were added, and delete the spill.
        Keeps what the rest of the dataset needs: see `_Manifests`."""
        self._close()
        done = _Manifests(counts=dict.fromkeys(SPLITS, 0), keys={"val": [], "test": []},
                          split_of={} if keep_split_of else None)
        shared: dict[Any, Any] = {}  # one object per distinct category/subcategory value
        spill = self.root / SPILL_FILE
        with contextlib.ExitStack() as stack:
            manifests = {s: stack.enter_context(open(self.root / f"manifest-{s}.jsonl", "w", encoding="utf-8"))
                         for s in SPLITS}
            for line in stack.enter_context(open(spill, encoding="utf-8")):
                row = json.loads(line)
                split = where[row["product_id"]]
                manifests[split].write(line)
                done.counts[split] += 1
                if split in done.keys:
                    done.keys[split].append({k: shared.setdefault(row[k], row[k]) for k in KEY_FIELDS})
                if done.split_of is not None:
                    done.split_of[row["id"]] = split
        spill.unlink()
        return done


@dataclass
class _Manifests:
    """What finishing a dataset needs of the records once the manifests are written."""

    counts: dict[str, int]  # records per split
    keys: dict[str, list[dict]]  # the eval-set keys (KEY_FIELDS) of the val and test records, in manifest order
    split_of: dict[str, str] | None  # record id -> split, when an on_splits hook needs it


@contextmanager
def dataset_writer(
    out: str | Path,
    *,
    source: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    eval_sizes: EvalSetSizes,
    extra_meta: dict[str, Any] | None = None,
    on_splits: Callable[[Path, dict[str, str]], None] | None = None,
) -> Iterator[DatasetWriter]:
    """Write a dataset dir atomically: nothing appears at `out` unless every file was written. `on_splits(dir,
    split_of)` (record id -> split) writes files that depend on the split (an import's search queries) before the
    fingerprint is taken."""
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        writer = DatasetWriter(tmp)
        try:
            yield writer
        finally:
            writer._close()
        if not writer.count:
            raise FbError("no records were produced; nothing to write")
        where = assign_splits(writer._products, writer.preset_split, seed, val_fraction, test_fraction)
        products = Counter(where.values())
        for name in SPLITS:
            if not products[name]:
                raise FbError(f"split '{name}' would be empty; give more products or other split fractions")
        written = writer._write_manifests(where, keep_split_of=on_splits is not None)
        rng = random.Random(seed + 1)
        pairs, itr, tir = [], [], []
        for name in ("val", "test"):
            pairs += build_pair_set(written.keys[name], name, rng)
            q_itr, q_tir = build_rank_sets(written.keys[name], name, eval_sizes, rng)
            itr += q_itr
            tir += q_tir
        _write_jsonl(tmp / "eval-pairs.jsonl", pairs)
        _write_jsonl(tmp / "eval-itr.jsonl", itr)
        _write_jsonl(tmp / "eval-tir.jsonl", tir)
        if on_splits is not None and written.split_of is not None:
            on_splits(tmp, written.split_of)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "seed": seed,
            "counts": written.counts,
            "products": {name: products[name] for name in SPLITS},
            "eval": {"queries": eval_sizes.queries, "negatives": eval_sizes.negatives},
            **(extra_meta or {}),
        }
        meta["fingerprint"] = fingerprint(tmp)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def assign_splits(
    products: Iterable[str], preset: dict[str, str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Split by product (product id -> split): preset products keep their split, the rest are shuffled with the
    seed."""
    free = [p for p in sorted(products) if p not in preset]
    random.Random(seed).shuffle(free)
    n_test = round(len(free) * test_fraction) if "test" not in preset.values() else 0
    n_val = round(len(free) * val_fraction) if "val" not in preset.values() else 0
    if free and "test" not in preset.values():
        n_test = max(n_test, 1)
    if free and "val" not in preset.values():
        n_val = max(n_val, 1)
    where = dict(preset)
    for i, pid in enumerate(free):
        where[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return where


def _by_product(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        grouped[record["product_id"]].append(record)
    return grouped


LARGE_POOL = 2000  # above this many products a pool is sampled, not shuffled whole (see pick_negative_products)


def pick_negative_products(
    query_pid: str, products: dict[str, dict], by_sub: dict, by_cat: dict, n: int, rng: random.Random,
    everyone: list[str],
) -> list[str]:
    """N other products: same subcategory first, then same category, then anywhere (the FashionBERT protocol).
    `everyone` is the sorted list of all products (computed once by the caller). A pool is only looked at while
    fewer than n products are chosen."""
    query = products[query_pid]
    chosen: list[str] = []
    seen = {query_pid}
    pools = (lambda: by_sub[query["subcategory"]], lambda: by_cat[query["category"]], lambda: everyone)
    for pool_of in pools:
        if len(chosen) >= n:
            break
        take = _draw_new(pool_of(), seen, n - len(chosen), rng)
        chosen += take
        seen.update(take)
    return chosen


def _draw_new(pool: list[str], seen: set[str], n: int, rng: random.Random) -> list[str]:
    """Up to n distinct products of `pool` not in `seen`, uniformly at random.

    A pool of up to LARGE_POOL products is shuffled whole (the eval sets drawn before the sampler existed stay as
    they were). A larger one (an imported catalogue's subcategory of tens of thousands of products) is sampled
    index by index, so that drawing the eval sets of a million-row catalogue costs O(n) per query, not O(pool):
    while the pool holds at least twice n + |seen| products, each draw is new with probability above 1/2, so the
    loop ends after about 2n draws. A pool below that is shuffled too."""
    if len(pool) <= LARGE_POOL or len(pool) < 2 * (n + len(seen)):
        candidates = [p for p in pool if p not in seen]
        rng.shuffle(candidates)
        return candidates[:n]
    taken: list[str] = []
    skip = set(seen)
    while len(taken) < n:
        product = pool[rng.randrange(len(pool))]
        if product not in skip:
            taken.append(product)
            skip.add(product)
    return taken


def _indexes(records: list[dict]) -> tuple[dict[str, list[dict]], dict[str, dict], dict, dict, list[str]]:
    grouped = _by_product(records)
    heads = {pid: recs[0] for pid, recs in grouped.items()}
    everyone = sorted(heads)
    by_sub: dict[str, list[str]] = defaultdict(list)
    by_cat: dict[str, list[str]] = defaultdict(list)
    for pid in everyone:
        by_sub[heads[pid]["subcategory"]].append(pid)
        by_cat[heads[pid]["category"]].append(pid)
    return grouped, heads, by_sub, by_cat, everyone


def build_pair_set(records: list[dict], split: str, rng: random.Random) -> list[dict]:
    """Every record matched with its own text, plus one same-subcategory mismatched text (ACC/AUC)."""
    grouped, heads, by_sub, by_cat, everyone = _indexes(records)
    pairs = []
    for record in records:
        pairs.append({"split": split, "image": record["id"], "text": record["id"], "label": 1})
        neg = pick_negative_products(record["product_id"], heads, by_sub, by_cat, 1, rng, everyone)
        if neg:
            other = rng.choice(grouped[neg[0]])
            pairs.append({"split": split, "image": record["id"], "text": other["id"], "label": 0})
    return pairs


def build_rank_sets(
    records: list[dict], split: str, sizes: EvalSetSizes, rng: random.Random
) -> tuple[list[dict], list[dict]]:
    """ITR (image query → texts) and TIR (text query → images): 1 positive + N negatives per query."""
    grouped, heads, by_sub, by_cat, everyone = _indexes(records)
    pids = sorted(grouped)
    rng.shuffle(pids)
    n_neg = min(sizes.negatives, len(pids) - 1)
    itr, tir = [], []
    for pid in pids[: sizes.queries]:
        query = rng.choice(grouped[pid])
        negatives = [rng.choice(grouped[p])["id"] for p in pick_negative_products(pid, heads, by_sub, by_cat,
                                                                                   n_neg, rng, everyone)]
        itr.append({"split": split, "query": query["id"], "positive": query["id"], "negatives": negatives})
        negatives = [rng.choice(grouped[p])["id"] for p in pick_negative_products(pid, heads, by_sub, by_cat,
                                                                                   n_neg, rng, everyone)]
        tir.append({"split": split, "query": query["id"], "positive": query["id"], "negatives": negatives})
    return itr, tir


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def fingerprint(root: Path, features_index: Path | None = None) -> str:
    """Hash of the manifests and eval sets (and of the feature index, which names the encoder and every shard's
    sha256, where the dataset has features): identifies the data a checkpoint was trained on."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in root.glob("*.jsonl")):
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    if features_index is not None:
        digest.update(features_index.relative_to(root).as_posix().encode())
        digest.update(features_index.read_bytes())
    return digest.hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line. Lines are decoded one by one so that bytes that are not UTF-8, like
    a line that is not a JSON object, are reported with their line instead of escaping as a raw exception."""
    rows = []
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FbError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FbError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise FbError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


# Types of record fields the readers index or join paths with (a list id would be unhashable, a null image path
# cannot be joined); product_id/category/subcategory are only compared and str()-ed, so numbers are fine there.
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("id", "image", "text", "features"), str),
    **dict.fromkeys(("product_id", "category", "subcategory"), (str, int)),
}
# What each eval set's rows must hold (evaluate.py indexes these keys directly).
_EVAL_TYPES: dict[str, dict[str, type]] = {
    "pairs": {"image": str, "text": str, "label": int},
    "itr": {"query": str, "positive": str, "negatives": list},
    "tir": {"query": str, "positive": str, "negatives": list},
}


def _bad_field(row: dict, key: str, kind: type | tuple[type, ...]) -> str | None:
    """Why `row[key]` is unusable, or None when it is fine."""
    if key not in row:
        return f"lacks {key}"
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"has {key} {json.dumps(value)[:40]}, of the wrong type"
    return None


@dataclass
class DatasetDir:
    """A validated dataset directory (read side)."""

    root: Path
    meta: dict

    @classmethod
    def open(cls, root: str | Path) -> DatasetDir:
        root = Path(root)
        if not root.is_dir():
            raise FbError(f"dataset dir not found: {root}")
        meta_path = root / "dataset.json"
        if not meta_path.is_file():
            raise FbError(f"{root} is not a dataset dir (no dataset.json); make one with `fbcompress data ...`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FbError(f"{meta_path} is not valid JSON: {exc.msg}") from None
        except UnicodeDecodeError:
            raise FbError(f"{meta_path} is not UTF-8 text") from None
        if not isinstance(meta, dict):
            raise FbError(f"{meta_path} is not a JSON object")
        for name in [f"manifest-{s}.jsonl" for s in SPLITS] + ["eval-pairs.jsonl", "eval-itr.jsonl",
                                                                "eval-tir.jsonl"]:
            if not (root / name).is_file():
                raise FbError(f"dataset dir {root} lacks {name}")
        return cls(root, meta)

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    def records(self, split: str) -> list[dict]:
        if split not in SPLITS:
            raise FbError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        name = f"manifest-{split}.jsonl"
        rows = read_jsonl_numbered(self.root / name)
        for lineno, row in rows:
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise FbError(f"{name}:{lineno}: record {row.get('id', '?')} lacks {', '.join(missing)}")
            for key, kind in _RECORD_TYPES.items():
                problem = _bad_field(row, key, kind) if key in row else None
                if problem:
                    raise FbError(f"{name}:{lineno}: record {row.get('id', '?')} {problem}")
        return [row for _, row in rows]

    def eval_rows(self, kind: str, split: str) -> list[dict]:
        name = f"eval-{kind}.jsonl"
        rows = read_jsonl_numbered(self.root / name)
        fields = {"split": str, **_EVAL_TYPES.get(kind, {})}
        for lineno, row in rows:
            for key, value_type in fields.items():
                problem = _bad_field(row, key, value_type)
                if problem:
                    raise FbError(f"{name}:{lineno}: eval row {problem}")
            if kind == "pairs" and row["label"] not in (0, 1):
                raise FbError(f"{name}:{lineno}: eval row has label {row['label']}, expected 0 or 1")
            if "negatives" in fields and not all(isinstance(n, str) for n in row["negatives"]):
                raise FbError(f"{name}:{lineno}: eval row has negatives that are not record ids")
        selected = [row for _, row in rows if row["split"] == split]
        if not selected:  # the writer always fills val and test; none left means a cut file, not NaN metrics
            raise FbError(f"{self.root / name} has no rows for split '{split}' (truncated? make the dataset dir again)")
        return selected
