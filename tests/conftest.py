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


def _tiny_text(i: int, colour: str, sub: str) -> str:
    return f"A {colour} {sub}, style {i % 7}"


def write_tiny_dataset(out: Path, products: int = 120, image_size: int = 32, text_of=_tiny_text) -> Path:
    """`products` hand-drawn images (a coloured square) through the real dataset writer; `text_of(i, colour,
    subcategory)` writes product i's text."""
    from fbcompress.data.dataset_dir import EvalSetSizes, dataset_writer

    with dataset_writer(out, source="test", seed=0, val_fraction=0.15, test_fraction=0.15,
                        eval_sizes=EvalSetSizes(12, 8)) as writer:
        for i in range(products):
            colour = list(COLOURS)[i % len(COLOURS)]
            sub = SUBCATEGORIES[i % len(SUBCATEGORIES)]
            img = np.full((image_size, image_size, 3), 240, np.uint8)
            lo, hi = image_size // 4, 3 * image_size // 4
            img[lo:hi, lo:hi] = COLOURS[colour]
            record = {"id": f"r{i}", "product_id": f"p{i}", "text": text_of(i, colour, sub),
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

    from fbcompress.commands.cli import main

    out = tmp_path_factory.mktemp("runs") / "teacher"
    result = CliRunner().invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _cli(*args):
    from cli_helpers import run

    return run(*args)


def _made(*args) -> Path:
    """The `--out` of the command `args`, after the command made it (a failure shows the command's output)."""
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    return Path(args[args.index("--out") + 1])


def _tree_state(root: Path) -> dict[str, str]:
    from fbcompress.core.artifacts import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def smoke_bundle(trained_smoke, tmp_path_factory) -> Path:
    """The smoke teacher exported to ONNX once per session (test_quantize's `bundle`; never written to)."""
    out = tmp_path_factory.mktemp("exported") / "smoke"
    result = _cli("export", "--model", trained_smoke, "--target", "onnx", "--out", out, "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def quantized_smoke(smoke_bundle, tiny_data, tmp_path_factory) -> tuple[Path, dict, dict[str, str]]:
    """A copy of `smoke_bundle` after `fbcompress quantize` (ort-static, the smoke recipe named by the checkpoint),
    the CPU file pinned to static QDQ: (bundle, the --json report, the bundle's file hashes before). Quantized once
    per session for test_quantize.py (`quantized`) and test_int8_trt_fp16.py; tests that change it use a copy."""
    import json
    import shutil

    copy = tmp_path_factory.mktemp("q") / "exported" / smoke_bundle.name
    shutil.copytree(smoke_bundle, copy)
    before = _tree_state(copy)
    report_path = copy.parent / "report.json"
    result = _cli("quantize", "--model", copy / "model.onnx", "--data", tiny_data, "--out", copy, "--json",
                  report_path, "--set", "quantize.cpu_file=static")
    assert result.exit_code == 0, result.output
    return copy, json.loads(report_path.read_text()), before


# The search path: a smoke synthetic catalogue (it has search queries), its smoke teacher, a retriever trained from it
# and the retriever's index, each made once per session through the public commands (seconds).
@pytest.fixture(scope="session")
def search_data(tmp_path_factory) -> Path:
    return _made("data", "synth", "-r", "smoke", "--out", tmp_path_factory.mktemp("search") / "data")


@pytest.fixture(scope="session")
def search_teacher(search_data) -> Path:
    return _made("train-teacher", "-r", "smoke", "--data", search_data, "--out", search_data.parent / "teacher")


@pytest.fixture(scope="session")
def retriever(search_teacher, search_data) -> Path:
    return _made("train-retriever", "-r", "smoke", "--teacher", search_teacher, "--data", search_data,
                 "--out", search_data.parent / "retriever")


@pytest.fixture(scope="session")
def query_encoder(retriever, search_data) -> Path:
    """The smoke retriever's 1-layer query encoder (`distill --retriever`)."""
    return _made("distill", "-r", "smoke", "--retriever", retriever, "--data", search_data,
                 "--out", search_data.parent / "query-encoder")


@pytest.fixture(scope="session")
def search_bundle(query_encoder, search_index, search_data) -> Path:
    """The query encoder exported (ONNX) and quantized against the retriever's index: a search bundle."""
    out = _made("export", "-m", query_encoder, "--target", "onnx", "--latency-runs", "3",
                "--out", search_data.parent / "exported" / "search")
    result = _cli("quantize", "-m", out, "--data", search_data, "--index", search_index)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def search_index(retriever, search_data) -> Path:
    return _made("index", "build", "-m", retriever, "--data", search_data, "--out", search_data.parent / "index")


FILLER = ("soft", "cotton", "blend", "with", "long", "sleeves", "and", "a", "round", "neck", "made", "in", "italy",
          "from", "light", "summer", "fabric", "for", "everyday", "wear", "classic", "fit", "button", "front",
          "pocket", "detail", "slim", "cut", "high", "waist", "zip", "closure")


def _varied_text(i: int, colour: str, sub: str) -> str:
    return " ".join([colour, sub, *(FILLER[(i + k) % len(FILLER)] for k in range((11 * i) % 29))])


def write_varied_dataset(out: Path, products: int = 120, image_size: int = 32) -> Path:
    """Like `write_tiny_dataset` (same writer, same images), but text i has 2 + (11·i mod 29) words: 2 to 30 words,
    4 to 32 tokens with [CLS]/[SEP] (every word is one token of the smoke vocabulary), so padding matters."""
    return write_tiny_dataset(out, products, image_size, text_of=_varied_text)


@pytest.fixture(scope="session")
def varied_data(tmp_path_factory) -> Path:
    """A tiny dataset dir whose texts have really different lengths (2 to 30 words), for VSL padding tests."""
    return write_varied_dataset(tmp_path_factory.mktemp("data") / "varied")


# The fast tier (`make test-fast`, `pytest -m "not slow"`, and mutation testing's test selection) keeps the tests
# of a few seconds at most: the smoke teacher and its ONNX bundle are built once per session (seconds) and stay in
# it. Out of it, marked `slow`: tests that need the 600-step teacher or a quantized bundle (fixtures below), and
# tests that train, export, quantize or fuzz at length themselves (`@pytest.mark.slow` by hand, measured with
# `pytest --durations`: over ~3 s on this 2-core VM).
HEAVY_FIXTURES = frozenset({"good_teacher", "quantized_smoke", "search_bundle"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
