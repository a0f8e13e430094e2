"""Throughput of `fbcompress data import` on a generated catalogue: rows/s, images/s and peak memory.

    python bench/import_throughput.py --rows 100000 --distinct-images 100000 --work /tmp/imp-100k
    python bench/import_throughput.py --rows 1000000 --distinct-images 10000 --work /tmp/imp-1m

The table is Parquet; row i shows image i % distinct-images (JPEG, 48x40 to 80x72 px, decoded, checked and resized
to 32 px by the import, each row's PNG written). The import runs as `python -m fbcompress data import` under
`/usr/bin/time -v` (peak RSS: the largest single process, main or image worker). Generation is not timed. Prints one
JSON line: rows, images (distinct files), seconds, rows/s, peak RSS MiB, the summary line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SUBCATEGORIES = ["shirts", "dresses", "skirts", "jackets", "jeans", "sweaters", "coats", "shorts"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "grey", "navy"]


def generate(work: Path, rows: int, distinct: int) -> Path:
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(distinct):
        path = images / f"{i:07d}.jpg"
        if path.exists():
            continue
        h, w = 40 + (i % 5) * 8, 48 + (i % 5) * 8
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (i * 37) % 256
        Image.fromarray(pixels).save(path, quality=85)
    table = work / "products.parquet"
    writer = None
    for start in range(0, rows, 100_000):
        idx = np.arange(start, min(rows, start + 100_000))
        batch = pa.table({
            "sku": [f"S{i:08d}" for i in idx],
            "name": [f"{COLOURS[i % 8]} {SUBCATEGORIES[(i // 8) % 8]} style {i % 101}" for i in idx],
            "blurb": [f"a {COLOURS[(i // 3) % 8]} trim, size {i % 7}" for i in idx],
            "dept": ["women" if i % 2 else "men" for i in idx],
            "kind": [SUBCATEGORIES[(i // 8) % 8] for i in idx],
            "photo": [f"{i % distinct:07d}.jpg" for i in idx],
        })
        writer = writer or pq.ParquetWriter(table, batch.schema)
        writer.write_table(batch)
    writer.close()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--distinct-images", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    table = generate(args.work, args.rows, args.distinct_images)
    out = args.work / "dataset"
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "fbcompress", "data", "import", "--products", str(table),
               "--images-root", str(args.work / "images"), "--out", str(out), "--image-size", "32",
               "--map", "sku=id", "--map", "name=title", "--map", "blurb=description", "--map", "dept=category",
               "--map", "kind=subcategory", "--map", "photo=image"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    print(json.dumps({
        "rows": args.rows,
        "distinct_images": args.distinct_images,
        "seconds": round(seconds, 1),
        "rows_per_s": round(args.rows / seconds, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "summary": done.stdout.strip(),
    }))


if __name__ == "__main__":
    main()
