"""The catalogue itself (products, variants, poses) and its dataset dir, written by the shared writer."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import EvalSetSizes, dataset_writer
from fbcompress.data.search_sets import SEARCH_FILE, write_search_set
from fbcompress.data.synth.attributes import mutate, sample_attributes, signature
from fbcompress.data.synth.drawing import Scene, render, sample_scene
from fbcompress.data.synth.queries import CatalogueProduct, build_search_set
from fbcompress.data.synth.text import describe
from fbcompress.data.synth.vocabulary import (
    GENERATOR,
    MIN_IMAGE_SIZE,
    MIN_PRODUCTS,
    SOURCE,
    SUBCATEGORIES,
    VARIANT_SHARE,
    Subcategory,
)


@dataclass
class _Product:
    pid: str
    sub: Subcategory
    attrs: dict[str, Any]
    scene: Scene


def _check_arguments(n_products: int, image_size: int, poses: int) -> None:
    if n_products < MIN_PRODUCTS:
        raise FbError(f"the synthetic catalogue needs at least {MIN_PRODUCTS} products (got {n_products})")
    if image_size < MIN_IMAGE_SIZE or image_size % 8:
        raise FbError(f"image size must be a multiple of 8 and at least {MIN_IMAGE_SIZE} px "
                      f"(got {image_size})")
    if poses < 1:
        raise FbError(f"poses must be at least 1 (got {poses})")


def _products(n_products: int, seed: int) -> Iterator[_Product]:
    """The catalogue's products in order; a variant always follows its parent."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    by_sub: dict[str, list[_Product]] = {s.name: [] for s in SUBCATEGORIES}
    for index in range(n_products):
        sub = rng.choice(SUBCATEGORIES)
        earlier = by_sub[sub.name]
        parent = rng.choice(earlier) if earlier and rng.random() < VARIANT_SHARE * 1.05 else None
        attrs: dict[str, Any] = {}
        for _ in range(30):  # resample (rarely) so two products never share every described attribute
            if parent is not None:
                attrs = mutate(sub, parent.attrs, 1 if rng.random() < 0.6 else 2, rng)
            else:
                attrs = sample_attributes(sub, rng)
            if signature(sub, attrs) not in seen:
                break
        seen.add(signature(sub, attrs))
        if parent is not None:
            attrs["variant_of"] = parent.pid
            scene = parent.scene
        else:
            scene = sample_scene(rng)
        product = _Product(f"s{index:06d}", sub, attrs, scene)
        earlier.append(product)
        yield product


def generate_catalogue(n_products: int, image_size: int, seed: int, poses: int = 1
                       ) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (record, HxWx3 uint8 image) for every pose of every product, deterministically for `seed`.

    The texts and attributes depend only on `seed` and the product index (not on `image_size` or `poses`), so
    a catalogue rendered at another size or with more poses describes the same products.
    """
    _check_arguments(n_products, image_size, poses)  # here, not on the first next(): bad input fails at once
    return _generate(n_products, image_size, seed, poses)


def _generate(n_products: int, image_size: int, seed: int, poses: int) -> Iterator[tuple[dict, np.ndarray]]:
    text_rng = random.Random(f"text/{seed}")
    for product in _products(n_products, seed):
        title, description = describe(product.sub, product.attrs, text_rng)
        for pose in range(poses):
            attributes = {**product.attrs, "scene": product.scene.to_json()}  # a fresh dict per record
            record = {
                "id": f"{product.pid}-{pose}",
                "product_id": product.pid,
                "text": f"{title}. {description}",
                "title": title,
                "description": description,
                "category": product.sub.category,
                "subcategory": product.sub.name,
                "attributes": attributes,
                "synthetic": True,
            }
            pose_rng = random.Random(f"pose/{seed}/{product.pid}/{pose}")
            yield record, render(product.sub, product.attrs, product.scene, image_size, pose_rng)


def synthesize_dataset(
    out: str | Path,
    *,
    products: int,
    image_size: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    eval_sizes: EvalSetSizes,
    poses: int = 1,
) -> Path:
    """Write the synthetic catalogue as a dataset dir at `out` (atomically: nothing there on failure), with its
    search queries (`eval-search.jsonl`, `queries.py`): `eval_sizes.search_counts()` per split."""
    _check_arguments(products, image_size, poses)
    extra_meta = {"synthetic": True, "image_size": image_size, "generator": GENERATOR, "poses": poses,
                  "search_queries": "synthetic shopper queries, graded relevance from the attributes they name"}
    catalogue: dict[str, CatalogueProduct] = {}
    product_of: dict[str, str] = {}  # record id -> product id

    def search_set(root: Path, split_of: dict[str, str]) -> None:
        product_split = {product_of[record_id]: split for record_id, split in split_of.items()}
        rows = build_search_set(list(catalogue.values()), product_split, eval_sizes.search_counts(), seed)
        write_search_set(root / SEARCH_FILE, rows)

    with dataset_writer(
        out,
        source=SOURCE,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        eval_sizes=eval_sizes,
        extra_meta=extra_meta,
        on_splits=search_set,
    ) as writer, tqdm(total=products * poses, unit="img", desc="synthesising", mininterval=1.0,
                      disable=not sys.stderr.isatty()) as bar:
        for record, image in generate_catalogue(products, image_size, seed, poses):
            writer.add(record, image)
            product_of[record["id"]] = record["product_id"]
            catalogue.setdefault(record["product_id"], CatalogueProduct(
                record["product_id"], record["subcategory"], record["attributes"]))
            bar.update(1)
    return Path(out)
