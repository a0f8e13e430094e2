"""One product image: find it under the images root, decode and check it, resize it, write it as the dataset's PNG.

Runs in worker processes (`prepare_images`), so it takes and returns plain values. Images are resized to a square
of the recipe's side with LANCZOS, as the Fashion-Gen converter does (`data.fashiongen._resize`).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fbcompress.data.patches import square_rgb

Image.MAX_IMAGE_PIXELS = 10_000 * 10_000  # a product photo above this is a decompression bomb, not a photo


def image_source(root: Path, name: str) -> Path | None:
    """The file `name` names under the (resolved) images root, or None when it would leave it (`../`, an absolute
    path, a link out)."""
    path = (root / name).resolve()
    return path if path.is_relative_to(root) else None


def prepare_image(job: tuple[str, str, int]) -> str | None:
    """(source file, target PNG, side) -> None when written, else why the image cannot be used."""
    source, target, size = job
    if not os.path.isfile(source):
        return "image missing"
    try:
        with Image.open(source) as image:
            image.load()  # a truncated or corrupt file fails here, not at Image.open
            if image.width < 1 or image.height < 1:
                return "image has no pixels"
            rgb = square_rgb(image, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"image undecodable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})".replace(
            ": )", ")")
    tmp = f"{target}.tmp"
    rgb.save(tmp, format="PNG", optimize=False, compress_level=1)
    os.replace(tmp, target)
    return None


def prepare_images(jobs: list[tuple[str, str, int]], pool: Executor | None) -> list[str | None]:
    """`prepare_image` over `jobs`, in the pool's workers when there is one, in order."""
    if pool is None:
        return [prepare_image(job) for job in jobs]
    return list(pool.map(prepare_image, jobs, chunksize=max(1, len(jobs) // 64)))
