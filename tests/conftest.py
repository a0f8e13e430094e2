"""Shared fixtures: a tiny dataset dir (hand-made images, built through the real writer) and the smoke recipe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 20),
           "black": (10, 10, 10)}
SUBCATEGORIES = ("shirts", "dresses", "skirts")


def write_tiny_dataset(out: Path, products: int = 120, image_size: int = 32) -> Path:
    from fbcompress.data.dataset_dir import EvalSetSizes, dataset_writer

    with dataset_writer(out, source="test", seed=0, val_fraction=0.15, test_fraction=0.15,
                        eval_sizes=EvalSetSizes(12, 8)) as writer:
        for i in range(products):
            colour = list(COLOURS)[i % len(COLOURS)]
            sub = SUBCATEGORIES[i % len(SUBCATEGORIES)]
            img = np.full((image_size, image_size, 3), 240, np.uint8)
            lo, hi = image_size // 4, 3 * image_size // 4
            img[lo:hi, lo:hi] = COLOURS[colour]
            record = {"id": f"r{i}", "product_id": f"p{i}", "text": f"A {colour} {sub}, style {i % 7}",
                      "category": "clothing", "subcategory": sub}
            writer.add(record, img)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def smoke_recipe():
    from fbcompress.recipes import load_recipe

    return load_recipe("smoke")


@pytest.fixture(scope="session")
def trained_smoke(tmp_path_factory, tiny_data) -> Path:
    """A smoke teacher trained once for the session (seconds)."""
    from click.testing import CliRunner

    from fbcompress.cli import main

    out = tmp_path_factory.mktemp("runs") / "teacher"
    result = CliRunner().invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
