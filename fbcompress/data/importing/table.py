"""Read a product (or query) table as batches of rows, whatever its format, in bounded memory.

Parquet is read one record batch at a time (`ParquetFile.iter_batches`), CSV with pyarrow's streaming reader
(`pyarrow.csv.open_csv`), JSONL one line at a time. Cells come back as Python values; text cells of CSV and JSONL
are read as bytes and decoded here, so a row whose text is not UTF-8 becomes that row's reject (`BadText`) instead
of failing the whole file, as it would inside pyarrow's string conversion.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SNIFF_LINES = 100  # JSONL has no header: its columns are the keys of the first rows


class BadText:
    """A cell whose bytes are not UTF-8 (kept as a marker, so the row is rejected with the column named)."""

    __slots__ = ("column",)

    def __init__(self, column: str):
        self.column = column

    def __repr__(self) -> str:
        return f"BadText({self.column!r})"


@dataclass
class Table:
    """One input table: where it is, its format and its columns."""

    path: Path
    format: str
    columns: list[str]

    def batches(self, rows: int, start: int = 0) -> Iterator[list[dict[str, Any]]]:
        """Batches of up to `rows` rows from row `start` on (the rows before it are read and dropped, so a resumed
        import sees exactly the rows it would have seen)."""
        reader = {"parquet": _parquet_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}[self.format]
        batch: list[dict[str, Any]] = []
        for index, row in enumerate(reader(self.path, self.columns)):
            if index < start:
                continue
            batch.append(row)
            if len(batch) == rows:
                yield batch
                batch = []
        if batch:
            yield batch


def open_table(path: Path) -> Table:
    """Check that `path` is a table this reads and find its columns; one FbError line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FbError(f"table not found: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise FbError(f"{path}: unknown table format {path.suffix or '(no suffix)'} (give .jsonl, .csv or .parquet)")
    columns = {"parquet": _parquet_columns, "csv": _csv_columns, "jsonl": _jsonl_columns}[kind](path)
    if not columns:
        raise FbError(f"{path} has no columns (is it empty?)")
    return Table(path, kind, columns)


def _decode(value: Any, column: str) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return BadText(column)
    return value


# ------------------------------------------------------------------------------------------------------ parquet


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants for a file that is not Parquet
        raise FbError(f"{path} is not a Parquet file ({str(exc).splitlines()[0]})") from None


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns):
        yield from batch.to_pylist()


# ---------------------------------------------------------------------------------------------------------- csv


def _csv_columns(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        header = handle.readline()
    try:
        line = header.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FbError(f"{path}: its header line is not UTF-8 text") from None
    names = next(csv.reader([line]), [])
    if len(set(names)) != len(names):
        raise FbError(f"{path}: the header names a column twice ({', '.join(names)})")
    return [n for n in names if n]


def _csv_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(column_types={name: pa.binary() for name in columns}, strings_can_be_null=False)
    try:
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22), convert_options=convert)
        for batch in reader:
            for row in batch.to_pylist():
                yield {key: _decode(value, key) for key, value in row.items()}
    except pa.ArrowInvalid as exc:
        raise FbError(f"{path}: not a well-formed CSV table ({str(exc).splitlines()[0]})") from None


# -------------------------------------------------------------------------------------------------------- jsonl


def _jsonl_columns(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    for row in itertools.islice(_jsonl_rows(path, []), SNIFF_LINES):
        seen.update(dict.fromkeys(k for k in row if not k.startswith("__")))
    return list(seen)


def _jsonl_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """One dict per non-blank line; a line that is not UTF-8 or not a JSON object is a row with one `__error__`
    (the importer rejects it with that reason and goes on)."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield {"__error__": f"line {lineno} is not UTF-8 text"}
                continue
            except json.JSONDecodeError as exc:
                yield {"__error__": f"line {lineno} is not valid JSON ({exc.msg})"}
                continue
            if not isinstance(row, dict):
                yield {"__error__": f"line {lineno} is not a JSON object"}
                continue
            yield row
