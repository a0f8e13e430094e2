"""Convert the public Fashion-Gen HDF5 files into a dataset dir.

Fashion-Gen ships as ``fashiongen_256_256_{train,validation}.h5``: ``input_image`` (N, 256, 256, 3) uint8 plus
(N, 1) byte-string columns (name, description, category, ...) that the public loaders decode as latin-1, and
``input_productID`` shared by the several poses of one product. The train file holds ~260k images (~50 GB
decoded), so rows are read lazily in chunks and never all at once.

Every pose becomes its own record (FashionBERT scores image–text pairs, and each pose is a distinct image of
the same text). Splits are made by product, so poses never straddle splits; the official validation file
becomes our test split because the paper reports on it; the train file is split into train/val by the seed.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import EvalSetSizes, dataset_writer, record_text
from fbcompress.data.search_sets import SEARCH_FILE, build_name_queries, write_search_set

SOURCE = "fashiongen"
IMAGE_KEY = "input_image"
REQUIRED_KEYS = (
    IMAGE_KEY,
    "input_name",
    "input_description",
    "input_category",
    "input_subcategory",
    "input_productID",
)
# Kept as record attributes when a file has them, named without the "input_" prefix.
# `input_concat_description` is left out on purpose: it repeats name + description and would double the
# manifest size for nothing.
OPTIONAL_KEYS = (
    "input_pose",
    "input_brand",
    "input_gender",
    "input_composition",
    "input_season",
    "input_department",
    "input_msrpUSD",
)
CHUNK_ROWS = 256
# A file whose name mentions validation/test holds the held-out products; "valid" also covers "validation".
# The look-behind keeps words like "contest" or "latest" from matching.
_HELD_OUT_NAME = re.compile(r"(?<![a-z])(valid|test)")


@dataclass
class _Source:
    """One validated input file, kept open from validation to conversion so it cannot change in between."""

    index: int
    path: Path
    handle: h5py.File
    rows: int
    image_size: int
    optional: tuple[str, ...]
    held_out: bool


def is_held_out_file(path: Path) -> bool:
    """True for the official validation (or a test) file, whose products form our test split."""
    return bool(_HELD_OUT_NAME.search(path.name.lower()))


def convert_fashiongen(
    h5_paths: list[Path],
    out: Path,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    eval_sizes: EvalSetSizes,
    image_size: int | None = None,
    limit: int | None = None,
) -> Path:
    """Convert Fashion-Gen HDF5 files into the dataset dir `out` and return it.

    Every file is validated before anything is written, and the dataset dir is written atomically, so a bad
    input never leaves a half-converted `out`. With a validation/test-named file next to a train file, the
    held-out file's products are pinned to the test split (`test_fraction` is then unused) and the other
    products are split into train/val; with only one kind of file, all products are split by the fractions.
    """
    paths = [Path(p) for p in h5_paths]
    _check_arguments(paths, val_fraction, test_fraction, image_size, limit)
    with contextlib.ExitStack() as stack:
        sources = [_open_source(i, path, stack) for i, path in enumerate(paths)]
        native = {s.image_size for s in sources}
        if image_size is None and len(native) > 1:
            sizes = ", ".join(f"{s.path.name}: {s.image_size}px" for s in sources)
            raise FbError(f"the HDF5 files have different image sizes ({sizes}); choose one image size")
        final_size = image_size if image_size is not None else sources[0].image_size
        # Pinning only makes sense when some other file supplies the train products; a lone validation file
        # (or only held-out files) is split by the fractions like any single source.
        pin_test = any(s.held_out for s in sources) and not all(s.held_out for s in sources)
        total = sum(_rows_to_read(s, limit) for s in sources)
        skipped = 0
        extra_meta: dict[str, Any] = {
            "source_files": [s.path.name for s in sources],
            "test_files": [s.path.name for s in sources if pin_test and s.held_out],
            "image_size": final_size,
            "limit": limit,
            "search_queries": "proxy: product names as queries (Fashion-Gen has no search queries)",
        }
        names: dict[str, str] = {}  # product id -> its name, for the proxy search queries
        product_of: dict[str, str] = {}  # record id -> product id

        def search_set(root: Path, split_of: dict[str, str]) -> None:
            product_split = {product_of[record_id]: split for record_id, split in split_of.items()}
            write_search_set(root / SEARCH_FILE, build_name_queries(names, product_split,
                                                                        eval_sizes.search_counts(), seed))

        with dataset_writer(
            out,
            source=SOURCE,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            eval_sizes=eval_sizes,
            extra_meta=extra_meta,
            on_splits=search_set,
        ) as writer, tqdm(total=total, unit="img", desc="fashiongen", mininterval=1.0) as bar:
            for source in sources:
                split = "test" if pin_test and source.held_out else None
                for record, pixels in _iter_rows(source, limit, bar):
                    if record is None:
                        skipped += 1
                        continue
                    image = pixels if final_size == pixels.shape[0] else _resize(pixels, final_size)
                    writer.add(record, image, split=split)
                    product_of[record["id"]] = record["product_id"]
                    names.setdefault(record["product_id"], record["title"])
            if not writer.count:  # say which files, rather than the writer's generic "no records"
                names = ", ".join(s.path.name for s in sources)
                raise FbError(f"no row of {names} has a name or a description; nothing to write")
            # extra_meta is written on exit of the writer, so the final count can still go in.
            extra_meta["skipped_rows"] = skipped
    if skipped:
        print(f"fashiongen: skipped {skipped} row(s) with neither a name nor a description", file=sys.stderr)
    return Path(out)


def _check_arguments(
    paths: list[Path], val_fraction: float, test_fraction: float, image_size: int | None, limit: int | None
) -> None:
    """Reject bad arguments up front with a message the user can act on, before any file is opened."""
    if not paths:
        raise FbError("give at least one Fashion-Gen HDF5 file")
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise FbError(f"{path} is given twice")
        seen[key] = path
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise FbError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise FbError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if image_size is not None and image_size < 1:
        raise FbError(f"image size must be a positive number of pixels, got {image_size}")
    if limit is not None and limit < 1:
        raise FbError(f"limit must be at least 1 row, got {limit}")


def _open_source(index: int, path: Path, stack: contextlib.ExitStack) -> _Source:
    """Open and validate one file: HDF5, required keys, one row count, square RGB uint8 images."""
    if not path.exists():
        raise FbError(f"Fashion-Gen file not found: {path}")
    if not path.is_file():
        raise FbError(f"{path} is not a file")
    try:
        handle = stack.enter_context(h5py.File(path, "r"))
    except OSError:
        raise FbError(f"{path} is not an HDF5 file (expected e.g. fashiongen_256_256_train.h5)") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(handle.get(key), h5py.Dataset)]
    if missing:
        raise FbError(f"{path} is not a Fashion-Gen file: it lacks {', '.join(missing)}")
    lengths = {key: _length(handle[key]) for key in REQUIRED_KEYS}
    rows = lengths[IMAGE_KEY]
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise FbError(f"{path}: datasets have different numbers of rows ({listed})")
    if rows == 0:
        raise FbError(f"{path}: {IMAGE_KEY} has no rows")
    image = handle[IMAGE_KEY]
    shape = tuple(image.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 1:
        raise FbError(f"{path}: {IMAGE_KEY} has shape {shape}; expected (N, H, W, 3) RGB images with H == W")
    if image.dtype != np.uint8:
        raise FbError(f"{path}: {IMAGE_KEY} has dtype {image.dtype}; expected uint8 pixels 0-255")
    optional = []
    for key in OPTIONAL_KEYS:
        data = handle.get(key)
        if not isinstance(data, h5py.Dataset):
            continue
        if _length(data) != rows:
            raise FbError(f"{path}: {key} has {_length(data)} rows but {IMAGE_KEY} has {rows}")
        optional.append(key)
    return _Source(index, path, handle, rows, shape[1], tuple(optional), is_held_out_file(path))


def _length(data: h5py.Dataset) -> int:
    """Row count of a dataset; a scalar dataset has none, which the length comparison then reports."""
    return int(data.shape[0]) if data.shape else -1


def _rows_to_read(source: _Source, limit: int | None) -> int:
    return source.rows if limit is None else min(source.rows, limit)


def _iter_rows(source: _Source, limit: int | None, bar: tqdm) -> Iterator[tuple[dict | None, np.ndarray]]:
    """Yield (record, or None when the row has no text; its pixels), reading CHUNK_ROWS rows at a time.

    Slicing h5py datasets reads only those rows from disk, so memory stays at one chunk (~50 MB at 256 px).
    """
    handle = source.handle
    keys = REQUIRED_KEYS[1:] + source.optional
    stop_all = _rows_to_read(source, limit)
    for start in range(0, stop_all, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, stop_all)
        try:
            images = handle[IMAGE_KEY][start:stop]
            columns = {key: handle[key][start:stop] for key in keys}
        except OSError as exc:
            where = f"{source.path}: cannot read rows {start}-{stop - 1}"
            raise FbError(f"{where} ({exc}); is the file complete?") from None
        for offset in range(stop - start):
            row = start + offset
            values = {key: _cell(columns[key][offset]) for key in keys}
            yield _record(source.index, row, values, source.optional), images[offset]
        bar.update(stop - start)


def _cell(value: Any) -> Any:
    """A (1,)-shaped cell as a JSON-safe Python value: bytes decoded as latin-1 (as public loaders do), numbers kept.

    Anything else a malformed file may hold (bool, complex, compound, infinite floats) becomes a string or None:
    the value ends up in a manifest line, which must stay strict JSON.
    """
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("latin-1")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        # Via str: a float32 price of 120.3 stays 120.3 instead of becoming 120.30000305175781.
        number = float(str(value))
        return number if math.isfinite(number) else None
    return value if isinstance(value, str) else str(value)


def _text(value: Any) -> str:
    """Whitespace-normalised string: the source has stray newlines, tabs and double spaces."""
    return " ".join(str(value).split()) if value is not None else ""


def _product_id(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _text(value)


def _record(file_index: int, row: int, values: dict[str, Any], optional: tuple[str, ...]) -> dict | None:
    """The manifest record of one row (pose), or None when it has neither a name nor a description."""
    name = _text(values["input_name"])
    description = _text(values["input_description"])
    if not name and not description:
        return None
    text = record_text(name, description)
    attributes = {
        key.removeprefix("input_"): (_text(values[key]) if isinstance(values[key], str) else values[key])
        for key in optional
    }
    return {
        "id": f"fg{file_index}-{row}",
        "product_id": _product_id(values["input_productID"]),
        "text": text,
        "title": name,
        "description": description,
        "category": _text(values["input_category"]),
        "subcategory": _text(values["input_subcategory"]),
        "attributes": attributes,
    }


def _resize(image: np.ndarray, size: int) -> Image.Image:
    """Square resize; LANCZOS keeps fine detail (stitching, prints) that the patch model is meant to see."""
    return Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.LANCZOS)
