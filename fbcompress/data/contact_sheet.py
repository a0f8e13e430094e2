"""A contact sheet of a dataset dir: images with their captions, to see what the model is asked to match.

Images are upscaled with nearest-neighbour so the pixels (and the 8×8 patch grid the model cuts them into)
stay crisp rather than smoothed into something the model never sees. A synthetic dataset is labelled as such.
"""

from __future__ import annotations

import textwrap
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless
from PIL import Image

from fbcompress.core.artifacts import atomic_write_bytes
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir

COLUMNS = 4
WRAP_CHARS = 34
MAX_CAPTION_LINES = 9  # real (Fashion-Gen) descriptions can run to 100+ words


def _caption(text: str) -> str:
    lines = textwrap.wrap(" ".join(text.split()), WRAP_CHARS) or [""]
    if len(lines) > MAX_CAPTION_LINES:
        lines = lines[:MAX_CAPTION_LINES]
        lines[-1] = lines[-1][: WRAP_CHARS - 1] + "…"
    return "\n".join(lines)


def _pick(records: list[dict], n: int) -> list[dict]:
    """n records, one product each, taken round-robin over subcategories so the sheet shows every kind."""
    heads: dict[str, dict] = {}
    for record in records:
        heads.setdefault(record["product_id"], record)
    by_sub: dict[str, list[dict]] = {}
    for record in heads.values():
        by_sub.setdefault(str(record.get("subcategory", "")), []).append(record)
    queues = list(by_sub.values())
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        chosen += [q[depth] for q in queues if depth < len(q)][: n - len(chosen)]
        depth += 1
    if len(chosen) < n:  # fewer products than n: fill with further poses
        chosen += [r for r in records if r not in chosen][: n - len(chosen)]
    return chosen


def make_contact_sheet(dataset_dir: str | Path, out_png: str | Path, n: int = 12, split: str = "train",
                       scale: int = 3) -> Path:
    """Write a PNG grid of `n` images of `split`, each with its wrapped title + description underneath."""
    if n < 1 or scale < 1:
        raise FbError(f"contact sheet needs n >= 1 and scale >= 1 (got n={n}, scale={scale})")
    dataset = DatasetDir.open(dataset_dir)
    records = dataset.records(split)
    if not records:
        raise FbError(f"split '{split}' of {dataset.root} has no records")
    chosen = _pick(records, n)
    images = []
    for record in chosen:
        with Image.open(dataset.root / record["image"]) as img:
            rgb = img.convert("RGB")
            big = rgb.resize((rgb.width * scale, rgb.height * scale), Image.Resampling.NEAREST)
            images.append(np.asarray(big))
    captions = [_caption(str(r["text"])) for r in chosen]
    side = images[0].shape[0]
    cols = min(COLUMNS, len(images))
    rows = -(-len(images) // cols)
    max_lines = max(c.count("\n") + 1 for c in captions)
    # Layout in pixels (dpi 100): header, then per row a label, the image and the caption block.
    dpi = 100
    cell_w = max(side, 250) + 16
    label_px, text_px, header_px = 14, max_lines * 12 + 10, 30
    row_px = label_px + side + text_px
    fig_w, fig_h = cols * cell_w, header_px + rows * row_px
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    synthetic = bool(dataset.meta.get("synthetic")) or dataset.meta.get("source") == "synthetic"
    source = dataset.meta.get("source", "dataset")
    label = "SYNTHETIC catalogue (procedurally drawn)" if synthetic else f"{source} data"
    fig.text(0.5, 1 - 8 / fig_h, f"{label} · split {split} · {len(records)} images · "
             f"fingerprint {dataset.fingerprint or '?'}", ha="center", va="top", fontsize=9,
             color="firebrick" if synthetic else "black")
    for i, (image, caption, record) in enumerate(zip(images, captions, chosen, strict=True)):
        r, c = divmod(i, cols)
        x_px = c * cell_w + (cell_w - side) / 2
        y_top = header_px + r * row_px + label_px  # from the top
        ax = fig.add_axes((x_px / fig_w, 1 - (y_top + side) / fig_h, side / fig_w, side / fig_h))
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{record['id']} · {record.get('subcategory', '')}", fontsize=7, pad=2)
        fig.text((c + 0.5) / cols, 1 - (y_top + side + 4) / fig_h, caption, ha="center", va="top", fontsize=7,
                 linespacing=1.15)
    out = Path(out_png)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(out, buffer.getvalue())
    out.chmod(0o644)  # a picture to share (docs, reports), not a private temp file
    return out
