"""The user's columns → fbcompress's product fields, and one table row → a manifest record or a reject reason.

A column named like a field maps to it unless `--map COL=FIELD` says otherwise. Required: id, title, category,
subcategory, image; optional: description (title and description together make the text the model reads, as the
Fashion-Gen converter joins name and description) and group (products that must stay in one split, e.g. the colour
variants of one model: the split is by group, else by product). Columns that map to no field are kept as the
record's attributes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import record_text
from fbcompress.data.importing.table import BadText

REQUIRED = ("id", "title", "category", "subcategory", "image")
OPTIONAL = ("description", "group")
FIELDS = (*REQUIRED, *OPTIONAL)


@dataclass(frozen=True)
class FieldMap:
    """field -> the table column that holds it."""

    columns: dict[str, str]

    @classmethod
    def resolve(cls, table_columns: list[str], pairs: list[str], where: str) -> FieldMap:
        """From `--map COL=FIELD` pairs and the table's columns; a missing required column is one FbError line
        naming the field and listing the columns the table has."""
        chosen: dict[str, str] = {}
        for pair in pairs:
            column, sep, field = pair.partition("=")
            column, field = column.strip(), field.strip()
            if not sep or not column or not field:
                raise FbError(f"--map {pair!r}: expected COL=FIELD, e.g. --map product_name=title")
            if field not in FIELDS:
                raise FbError(f"--map {pair}: {field!r} is not a field (choose from {', '.join(FIELDS)})")
            if field in chosen:
                raise FbError(f"--map: {field} is mapped twice ({chosen[field]} and {column})")
            if column not in table_columns:
                raise FbError(f"--map {pair}: {where} has no column {column!r} (its columns: "
                              f"{', '.join(table_columns)})")
            chosen[field] = column
        for field in FIELDS:
            if field not in chosen and field in table_columns and field not in chosen.values():
                chosen[field] = field
        missing = [f for f in REQUIRED if f not in chosen]
        if missing:
            raise FbError(
                f"{where} has no column for {', '.join(missing)} (map one with --map COL={missing[0]}); "
                f"its columns: {', '.join(table_columns)}"
            )
        return cls(chosen)

    def record(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(the manifest record less its image file, None) or (None, why the row cannot be used)."""
        if "__error__" in row:
            return None, row["__error__"]
        bad = [v.column for v in row.values() if isinstance(v, BadText)]
        if bad:
            return None, f"not UTF-8 text in {', '.join(bad)}"
        values = {field: _text(row.get(column)) for field, column in self.columns.items()}
        for field in ("id", "category", "subcategory", "image"):
            if not values[field]:
                return None, f"empty {field} (column {self.columns[field]})"
        description = values.get("description", "")  # the column is optional
        text = record_text(values["title"], description)
        if not text:
            return None, "empty text (no title or description)"
        mapped = set(self.columns.values())
        attributes = {k: v for k, v in row.items() if k not in mapped and _scalar(v)}
        return {
            "id": values["id"],
            "product_id": values.get("group") or values["id"],
            "text": text,
            "title": values["title"],
            "description": description,
            "category": values["category"],
            "subcategory": values["subcategory"],
            "attributes": attributes,
            "source_image": values["image"],
        }, None


def _text(value: Any) -> str:
    """A cell as whitespace-normalised text; numbers (an integer id read from Parquet) keep their digits."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).split())


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def reason_kind(reason: str) -> str:
    """A reject reason without its details: `image undecodable (OSError: ...)` is of kind `image undecodable`."""
    return str(reason).split(" (")[0]


def reason_counts(rejects: list[dict]) -> dict[str, int]:
    """How many rejects of each kind of reason."""
    return dict(Counter(reason_kind(r["reason"]) for r in rejects))
