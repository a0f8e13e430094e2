"""Import a product table and its images into a dataset dir, in resumable shards.

The table is read in shards of `shard_rows` rows. Each shard's rows are mapped to records (`fields.FieldMap`), its
images decoded, checked and resized by worker processes (`images.prepare_image`) into a work folder next to `out`,
and its kept records and rejects written there; the records file is written last, so a shard whose records file
exists is complete. A killed import run again with the same inputs skips the complete shards and goes on from the
first incomplete one, and ends with the same dataset dir as an uninterrupted run. Only when every shard is done is
the dataset dir written, through the one dataset writer (splits by product or group, fixed eval sets, fingerprint),
atomically; the work folder is then removed. A reject rate above `max_reject_rate` fails the import with its summary
and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fbcompress.core.artifacts import atomic_write_bytes, open_work_dir
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import EvalSetSizes, dataset_writer
from fbcompress.data.importing.fields import FieldMap, reason_kind
from fbcompress.data.importing.images import image_source, prepare_images
from fbcompress.data.importing.queries import REJECTS_FILE as QUERY_REJECTS_FILE
from fbcompress.data.importing.queries import QuerySummary, query_columns, write_query_splits
from fbcompress.data.importing.table import Table, open_table

SOURCE = "import"
SHARD_ROWS = 10_000
WORK_VERSION = 1
REJECTS_FILE = "rejects.jsonl"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")


@dataclass
class ImportOptions:
    products: Path
    images_root: Path
    out: Path
    mapping: list[str] = field(default_factory=list)
    image_size: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    eval_sizes: EvalSetSizes = field(default_factory=EvalSetSizes)
    max_reject_rate: float = 0.05
    queries: Path | None = None  # a search log: query text, product id, weight (`queries.py`)
    query_mapping: list[str] = field(default_factory=list)
    workers: int | None = None  # None: one per usable core; 1: no worker processes
    shard_rows: int = SHARD_ROWS
    progress: bool = False
    log: Callable[[str], None] | None = None


@dataclass
class ImportSummary:
    out: Path
    rows: int
    used: int
    rejected: int
    reasons: dict[str, int]
    resumed_shards: int
    queries: QuerySummary | None = None

    def reasons_text(self) -> str:
        return _reasons_text(self.reasons)

    def line(self) -> str:
        why = f" ({self.reasons_text()}; listed in {self.out / REJECTS_FILE})" if self.rejected else ""
        line = f"imported {self.used} of {self.rows} rows into {self.out}; {self.rejected} rejected{why}"
        if self.queries is not None:
            q = self.queries
            used = ", ".join(f"{n} {split}" for split, n in q.used.items())
            why = f" ({_reasons_text(q.reasons)}; listed in {self.out / QUERY_REJECTS_FILE})" if q.rejected else ""
            line += f"\nqueries: {sum(q.used.values())} of {q.rows} log rows kept ({used}); {q.rejected} rejected{why}"
        return line


def _reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))


def import_catalogue(opts: ImportOptions) -> ImportSummary:
    """Run the import (see the module doc); returns the summary, or raises FbError with nothing written."""
    _check_options(opts)
    table = open_table(opts.products)
    fields = FieldMap.resolve(table.columns, opts.mapping, str(opts.products))
    log_table = open_table(opts.queries) if opts.queries is not None else None
    log_columns = query_columns(log_table, opts.query_mapping) if log_table is not None else None
    out = Path(opts.out)
    work = out.parent / f".{out.name}.import"
    resumed = _open_work(work, _work_state(opts, fields), opts.log)
    shards = _Shards(work)
    try:
        total = _import_shards(table, fields, opts, shards)
    except FbError:  # bad input (a malformed table): nothing to resume; a kill keeps the work for the next run
        shutil.rmtree(work, ignore_errors=True)
        raise
    tally = shards.tally(total, keep_ids=log_table is not None)
    summary = ImportSummary(out, tally.used + tally.rejected, tally.used, tally.rejected, tally.reasons, resumed)
    if summary.rows == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise FbError(f"{opts.products} has no rows; nothing to write")
    if summary.rejected > opts.max_reject_rate * summary.rows:
        shutil.rmtree(work, ignore_errors=True)
        raise FbError(
            f"{summary.rejected} of {summary.rows} rows rejected ({summary.rejected / summary.rows:.1%} > "
            f"--max-reject-rate {opts.max_reject_rate:.1%}): {summary.reasons_text()}; nothing written"
        )
    queries = (_QueryStage(log_table, log_columns, tally.rejected_ids, opts.max_reject_rate, work)
               if log_table is not None and log_columns is not None else None)
    _write_dataset(opts, fields, shards, total, summary, queries)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _import_shards(table: Table, fields: FieldMap, opts: ImportOptions, shards: _Shards) -> int:
    """Import every shard not yet complete; returns how many shards the table made."""
    done = shards.complete()
    workers = opts.workers or len(os.sched_getaffinity(0))
    pool_context = ProcessPoolExecutor(workers) if workers > 1 else nullcontext(None)
    with pool_context as pool, tqdm(unit="row", desc="import", disable=not opts.progress, mininterval=1.0) as bar:
        seen = shards.seen_ids(len(done))
        bar.update(sum(shards.rows(k) for k in done))
        start = len(done) * opts.shard_rows
        for index, rows in enumerate(table.batches(opts.shard_rows, start=start), start=len(done)):
            shards.write(index, *_shard(rows, index * opts.shard_rows, fields, opts, shards.work, seen, pool))
            bar.update(len(rows))
    return len(shards.complete())


def _check_options(opts: ImportOptions) -> None:
    if not Path(opts.images_root).is_dir():
        raise FbError(f"--images-root {opts.images_root} is not a folder")
    if not 0.0 <= opts.max_reject_rate <= 1.0:
        raise FbError(f"--max-reject-rate must be between 0 and 1, got {opts.max_reject_rate}")
    if opts.workers is not None and opts.workers < 1:
        raise FbError(f"--workers must be at least 1, got {opts.workers}")
    if opts.shard_rows < 1:
        raise FbError(f"shard_rows must be at least 1, got {opts.shard_rows}")
    if opts.image_size < 1:
        raise FbError(f"image size must be a positive number of pixels, got {opts.image_size}")
    if Path(opts.out).resolve() in (Path(opts.images_root).resolve(), *Path(opts.images_root).resolve().parents):
        raise FbError(f"--out {opts.out} would replace the folder that holds the images")


# ------------------------------------------------------------------------------------------------------ the work


def _work_state(opts: ImportOptions, fields: FieldMap) -> dict[str, Any]:
    """What a resumed import must share with the interrupted one for its shards to be reusable."""
    stat = Path(opts.products).stat()
    return {
        "version": WORK_VERSION,
        "products": str(Path(opts.products).resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "images_root": str(Path(opts.images_root).resolve()),
        "fields": fields.columns,
        "image_size": opts.image_size,
        "shard_rows": opts.shard_rows,
    }


def _open_work(work: Path, state: dict[str, Any], log: Callable[[str], None] | None) -> int:
    """Make the work folder, or reuse an interrupted import's; returns how many complete shards it holds."""
    if not open_work_dir(work, state, log):
        (work / "images").mkdir()
        return 0
    complete = len(_Shards(work).complete())
    if log and complete:
        log(f"resuming: {complete} shard(s) already imported in {work}")
    return complete


class _Shards:
    """The shard files of one import: shard-NNNNNN.rejects.jsonl, then shard-NNNNNN.records.jsonl (the marker).
    They are read one shard at a time, so that memory holds one shard's rows, not the import's."""

    def __init__(self, work: Path):
        self.work = work

    def _path(self, index: int, kind: str) -> Path:
        return self.work / f"shard-{index:06d}.{kind}.jsonl"

    def complete(self) -> list[int]:
        """The complete shards, 0..n-1 without a gap (a shard after a gap is redone)."""
        done = []
        while self._path(len(done), "records").is_file():
            done.append(len(done))
        return done

    def write(self, index: int, records: list[dict], rejects: list[dict]) -> None:
        atomic_write_bytes(self._path(index, "rejects"), _jsonl(rejects))
        atomic_write_bytes(self._path(index, "records"), _jsonl(records))

    def _read(self, index: int, kind: str) -> list[dict]:
        with open(self._path(index, kind), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def each(self, count: int, kind: str) -> Iterator[dict]:
        """The rows of one kind ("records" or "rejects") of shards 0..count-1, in table order."""
        for index in range(count):
            yield from self._read(index, kind)

    def rows(self, index: int) -> int:
        return len(self._read(index, "records")) + len(self._read(index, "rejects"))

    def seen_ids(self, count: int) -> dict[str, int]:
        """id -> the row that claimed it, over shards 0..count-1: kept rows and rows whose image failed (an id is
        taken by its first row with a usable record, image or not; later rows with it are duplicates, which claim
        nothing), so a resumed import refuses the same duplicates as an uninterrupted one."""
        seen: dict[str, int] = {}
        for kind in ("records", "rejects"):
            for row in self.each(count, kind):
                if kind == "records" or row.get("claims_id"):
                    seen[row["id"]] = row["row"]
        return seen

    def tally(self, count: int, keep_ids: bool) -> _Tally:
        """Counts over shards 0..count-1 (and the rejected ids, for the search log's reasons, when asked)."""
        used = sum(1 for _ in self.each(count, "records"))
        rejected, reasons, ids = 0, Counter[str](), set[str]()
        for reject in self.each(count, "rejects"):
            rejected += 1
            reasons[reason_kind(reject["reason"])] += 1
            if keep_ids and reject["id"] is not None:
                ids.add(str(reject["id"]))
        return _Tally(used, rejected, dict(reasons), ids)


@dataclass
class _Tally:
    used: int
    rejected: int
    reasons: dict[str, int]
    rejected_ids: set[str]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def image_name(record_id: str) -> str:
    """The image file name of a record: its id where that is a safe file name, else a hash of it."""
    if _SAFE_NAME.fullmatch(record_id):
        return record_id
    return "id-" + hashlib.sha256(record_id.encode()).hexdigest()[:24]


def _shard(
    rows: list[dict],
    first_row: int,
    fields: FieldMap,
    opts: ImportOptions,
    work: Path,
    seen: dict[str, int],
    pool: Executor | None,
) -> tuple[list[dict], list[dict]]:
    """Map, check and prepare the images of one shard: (kept records, rejects), each with its table row."""
    kept: list[dict] = []
    rejects: list[dict] = []
    jobs: list[tuple[str, str, int]] = []
    root = Path(opts.images_root).resolve()
    for offset, row in enumerate(rows):
        number = first_row + offset
        record, why = fields.record(row)
        if record is not None and record["id"] in seen:
            record, why = None, f"duplicate id (first at row {seen[record['id']]})"
        source = image_source(root, record.pop("source_image")) if record is not None else None
        if record is not None and source is None:
            record, why = None, f"image path leaves --images-root ({row.get(fields.columns['image'])})"
        if record is None:
            rejects.append({"row": number, "id": _row_id(row, fields), "reason": why})
            continue
        seen[record["id"]] = number
        name = image_name(record["id"])
        jobs.append((str(source), str(work / "images" / f"{name}.png"), opts.image_size))
        kept.append({"row": number, "image_name": name, **record})
    records = []
    for record, problem in zip(kept, prepare_images(jobs, pool), strict=True):
        if problem is None:
            records.append(record)
        else:
            rejects.append({"row": record["row"], "id": record["id"], "reason": problem, "claims_id": True})
    rejects.sort(key=lambda r: r["row"])
    return records, rejects


def _row_id(row: dict, fields: FieldMap) -> Any:
    value = row.get(fields.columns["id"])
    return value if isinstance(value, (str, int, float)) else None


@dataclass
class _QueryStage:
    """Writes the search log into per-split files once the splits are known (`dataset_writer`'s on_splits)."""

    table: Table
    columns: dict[str, str]
    rejected_ids: set[str]
    max_reject_rate: float
    work: Path  # the product import's work folder, kept when the log fails so that a rerun reuses it

    def write(self, root: Path, split_of: dict[str, str], summary: ImportSummary, meta: dict) -> None:
        result = write_query_splits(self.table, self.columns, split_of, self.rejected_ids, root)
        kept = f"nothing written (the imported products are kept in {self.work}: a rerun reuses them)"
        if result.rows == 0:
            raise FbError(f"{self.table.path} has no rows; {kept}")
        if result.rejected > self.max_reject_rate * result.rows:
            raise FbError(
                f"{result.rejected} of {result.rows} query log rows rejected ({result.rejected / result.rows:.1%} > "
                f"--max-reject-rate {self.max_reject_rate:.1%}): {_reasons_text(result.reasons)}; {kept}"
            )
        summary.queries = result
        meta["queries"] = {"file": self.table.path.name, "fields": self.columns, "rows": result.rows,
                           "used": result.used, "rejected": result.rejected, "reject_reasons": result.reasons}


def _write_dataset(opts: ImportOptions, fields: FieldMap, shards: _Shards, count: int, summary: ImportSummary,
                   queries: _QueryStage | None) -> None:
    meta = {
        "products_file": Path(opts.products).name,
        "fields": fields.columns,
        "image_size": opts.image_size,
        "rows": summary.rows,
        "rejected": summary.rejected,
        "reject_reasons": summary.reasons,
    }
    on_splits = (lambda root, split_of: queries.write(root, split_of, summary, meta)) if queries is not None else None
    with dataset_writer(opts.out, source=SOURCE, seed=opts.seed, val_fraction=opts.val_fraction,
                        test_fraction=opts.test_fraction, eval_sizes=opts.eval_sizes, extra_meta=meta,
                        on_splits=on_splits) as writer:
        for record in shards.each(count, "records"):
            name = record.pop("image_name")
            record.pop("row")
            writer.add_written(record, shards.work / "images" / f"{name}.png", name)
        with open(writer.root / REJECTS_FILE, "w", encoding="utf-8") as handle:
            for reject in shards.each(count, "rejects"):
                reject.pop("claims_id", None)
                handle.write(json.dumps(reject, ensure_ascii=False) + "\n")
