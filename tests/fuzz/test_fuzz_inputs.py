"""Fuzzing the loaders with malformed inputs (hypothesis): recipes, bundle manifests, Fashion-Gen HDF5, dataset dirs.

The contract everywhere: a malformed input either loads (when the damage happens to be harmless) or raises `FbError`
with a one-line message that says what is wrong and where; any other exception escaping is a bug. A converter that
fails leaves nothing behind: no output dir, no temporary sibling.

Every example writes into its own `tempfile.TemporaryDirectory()` (hypothesis and function-scoped `tmp_path` do not
mix); the expensive inputs (a small export bundle, a tiny dataset dir, a tokenizer) are built once per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from conftest import write_tiny_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import DELETE, mutated

from fbcompress.core.errors import FbError
from fbcompress.recipes import RECIPES_DIR, Recipe, load_recipe, merged_overrides, parse_recipe

# No example database: a failure is reported with its example, never replayed from (or saved to) .hypothesis/.
FUZZ: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def expect_clean(call: Callable[[], Any], *where: str, one_line: bool = True) -> Any:
    """Run a loader: its result, or the FbError it raised (non-empty, one line, naming each of `where`)."""
    try:
        return call()
    except FbError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} with an empty message"
        assert not one_line or "\n" not in message.strip(), f"multi-line error: {message!r}"
        assert "Traceback" not in message
        for fragment in where:
            assert fragment in message, f"{fragment!r} not named in {message!r}"
        return exc


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fbfuzz-") as tmp:
        yield Path(tmp)


def leftovers(parent: Path, expected: set[str]) -> set[str]:
    """Names in `parent` besides `expected`: a half-written output or a temporary sibling left by a failed write."""
    return {p.name for p in parent.iterdir()} - expected


# ------------------------------------------------------------------------------------------------- value strategies

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)


def json_values(keys: st.SearchStrategy[str] = st.text(max_size=8), max_leaves: int = 12) -> st.SearchStrategy:
    return st.recursive(
        JSON_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=max_leaves,
    )


def tree_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of dict keys / list indices) into a JSON-like tree, containers included."""
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += tree_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += tree_paths(value, (*prefix, index))
    return paths




@st.composite
def one_value_mutated(draw: st.DrawFn, tree: Any, values: st.SearchStrategy) -> Any:
    path = draw(st.sampled_from(tree_paths(tree)))
    return mutated(tree, path, draw(st.just(DELETE) | values))


# ---------------------------------------------------------------------------------------------------------- recipes

REAL_RECIPES = {name: yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()) for name in ("smoke", "quickstart")}
SECTIONS = sorted(Recipe.model_fields)
RECIPE_KEYS = sorted(
    {key for section in SECTIONS for key in getattr(Recipe.model_fields[section].annotation, "model_fields", {})}
)
recipe_keys = st.sampled_from(SECTIONS + RECIPE_KEYS) | st.text(max_size=8)
recipe_values = json_values(recipe_keys)


# Recipe errors quote the offending key or --set text verbatim, so a key holding a newline gives a two-line message
# (recipes.py, owned elsewhere, would need `{key!r}`); the recipe tests check everything but that.
RECIPE_ONE_LINE = True


def check_recipe_result(result: Any) -> None:
    assert isinstance(result, (Recipe, FbError)), type(result)


@settings(max_examples=100, **FUZZ)
@given(
    payload=recipe_values
    | st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(recipe_keys, recipe_values, max_size=4), max_size=4)
)
@pytest.mark.slow
def test_recipe_payload_fuzz(payload: Any) -> None:
    """Random nested payloads, real section/key names mixed with random ones: a Recipe or one clean line."""
    check_recipe_result(expect_clean(lambda: parse_recipe(payload, "fuzz.yaml"), "fuzz.yaml", one_line=RECIPE_ONE_LINE))


@settings(max_examples=100, **FUZZ)
@given(data=st.data(), name=st.sampled_from(sorted(REAL_RECIPES)))
def test_real_recipe_one_value_mutated(data: st.DataObject, name: str) -> None:
    """smoke.yaml / quickstart.yaml with one value replaced by anything (or removed)."""
    payload = data.draw(one_value_mutated(REAL_RECIPES[name], recipe_values))
    check_recipe_result(
        expect_clean(lambda: parse_recipe(payload, f"{name}.yaml"), f"{name}.yaml", one_line=RECIPE_ONE_LINE)
    )


recipe_files = (
    st.binary(max_size=200)
    | st.text(max_size=200)
    | recipe_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))
    | st.sampled_from(
        [
            "",
            "   \n",
            "- train\n- data\n",
            "train: [",
            "train:\n\tsteps: 1\n",
            "\ufeff",
            "!!binary ZZZ",
            "a: &x [*x]\n",
            "? [a, b]\n: c\n",
            "train: !!python/object:os.system {}\n",
            "--- 1\n--- 2\n",
        ]
    )
    | st.sampled_from(sorted(REAL_RECIPES))
    .map(lambda n: (RECIPES_DIR / f"{n}.yaml").read_bytes())
    .flatmap(lambda raw: st.integers(0, len(raw) - 1).map(lambda cut: raw[:cut]))
)


@pytest.mark.slow
@settings(max_examples=100, **FUZZ)
@given(content=recipe_files)
def test_recipe_file_fuzz(content: bytes | str) -> None:
    """Random bytes or text in a .yaml file: invalid YAML, non-UTF-8, empty, a list at top level, truncated."""
    with scratch() as tmp:
        path = tmp / "fuzz-recipe.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        check_recipe_result(expect_clean(lambda: load_recipe(path), str(path), one_line=RECIPE_ONE_LINE))


override_keys = st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in RECIPE_KEYS[:6]] + SECTIONS + ["", ".", "a..b"])
override_values = st.sampled_from(
    [
        "10",
        "-1",
        "null",
        "[",
        "{a: 1",
        "'x",
        "[1, 2, 3]",
        "{steps: 1}",
        "1e400",
        ": :",
        "\t",
        "!!python/object:os.system",
        "a\n---\nb",
        ".nan",
    ]
) | st.text(max_size=10)
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values) | st.text(max_size=20), min_size=1, max_size=4
)


@pytest.mark.slow
@settings(max_examples=100, **FUZZ)
@given(texts=overrides)
def test_override_fuzz(texts: list[str]) -> None:
    """Random `--set KEY=VALUE` strings: folded into a dict and validated, or one clean line."""
    merged = expect_clean(lambda: merged_overrides(texts), one_line=RECIPE_ONE_LINE)
    if not isinstance(merged, FbError):
        assert isinstance(merged, dict)
        check_recipe_result(
            expect_clean(lambda: parse_recipe({}, "defaults", merged), "defaults", one_line=RECIPE_ONE_LINE)
        )


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("train: [unclosed\n", "not valid YAML"),
        (b"\xff\xfe\x00\x81 not utf-8", "not valid YAML"),
        ("- train\n- data\n", "YAML mapping"),
        ("train:\n  steps: many\n", "train.steps"),
        ("data:\n  grid: 7\n", "data"),
    ],
)
def test_cli_bad_recipe_writes_nothing(tmp_path: Path, content: str | bytes, fragment: str) -> None:
    recipe = tmp_path / "BAD.yaml"
    recipe.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out" / "synth"
    result = run("data", "synth", "--recipe", recipe, "--out", out, "--products", 20)
    assert_one_line_error(result, str(recipe), fragment)
    assert not out.parent.exists() or not leftovers(out.parent, set())


@pytest.mark.parametrize("override", ["train.steps=[", "train.steps=a\n---\nb", "nokeyvalue"])
def test_cli_bad_override_writes_nothing(tmp_path: Path, override: str) -> None:
    out = tmp_path / "synth"
    result = run("data", "synth", "--recipe", "smoke", "--out", out, "--set", override)
    assert_one_line_error(result)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ bundle manifests


@pytest.fixture(scope="module")
def bundle_dir(trained_smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke teacher exported to ONNX once (no latency runs, no AUC: seconds)."""
    out = tmp_path_factory.mktemp("fuzz-bundle") / "smoke"
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", out, "--latency-runs", 0)
    assert result.exit_code == 0, result.output
    return out


@contextlib.contextmanager
def bundle_with_manifest(bundle: Path, manifest: bytes) -> Iterator[Path]:
    """A fresh copy of the bundle (model files hard-linked: they are never written) with `manifest` in place."""
    with scratch() as tmp:
        root = tmp / "exported" / bundle.name
        shutil.copytree(bundle, root, copy_function=os.link)
        (root / "manifest.json").unlink()
        (root / "manifest.json").write_bytes(manifest)
        yield root


class _Abort(Exception):
    pass


def tree_state(root: Path) -> dict[str, str]:
    from fbcompress.core.artifacts import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def real_source(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["source"]


def load_bundle_every_way(root: Path, source: dict, full: bool = True) -> None:
    """Each way a stage reads a bundle, each held to the contract on its own (`source`: the real bundle's, so that
    an update is not refused as coming from another checkpoint before it reads anything)."""
    from fbcompress.bundle.store import Bundle, find_bundle, update_bundle, verify_bundle_file
    from fbcompress.export.readme import render_readme
    from fbcompress.recipes import resolve_section
    from fbcompress.runtime.scoring import open_scorer

    def use_bundle() -> None:
        bundle = Bundle.open(root)
        expect_clean(lambda: bundle.spec, str(root))
        expect_clean(bundle.primary_model, str(root))
        expect_clean(bundle.verify_all, str(root))
        expect_clean(bundle.verify_tokenizer, str(root))

    def update() -> None:
        """What `fbcompress quantize` does to a bundle: carry its files over, re-render README.md, (here) give up."""
        with update_bundle(root, source=source) as writer:
            if "patch_spec" in writer.manifest:  # else the stage describes the bundle anew (describe_bundle)
                writer.finalize(render_readme)
            raise _Abort

    before = tree_state(root)
    expect_clean(use_bundle, str(root))
    expect_clean(lambda: verify_bundle_file(root / "model.onnx"), str(root))
    expect_clean(lambda: find_bundle(root / "model.ort.onnx"), str(root))
    with contextlib.suppress(_Abort):
        expect_clean(update, str(root))
    assert tree_state(root) == before, "a failed bundle update changed the bundle"
    assert not leftovers(root.parent, {root.name, f".{root.name}.lock"})
    expect_clean(lambda: resolve_section("quantize", None, (), [root / "model.onnx"]))
    if full:
        expect_clean(lambda: open_scorer(root))
        expect_clean(lambda: open_scorer(root / "model.ort.onnx"))


def test_fuzz_bundle_is_sound(bundle_dir: Path) -> None:
    """The unmodified copy loads every way (so the fuzz tests start from a working bundle)."""
    from fbcompress.bundle.store import Bundle
    from fbcompress.runtime.scoring import open_scorer

    with bundle_with_manifest(bundle_dir, (bundle_dir / "manifest.json").read_bytes()) as root:
        load_bundle_every_way(root, real_source(bundle_dir))
        assert Bundle.open(root).verify_all()
        assert open_scorer(root).backend == "onnxruntime-cpu"


MANIFEST_KEYS = [
    "format",
    "format_version",
    "files",
    "models",
    "patch_spec",
    "source",
    "max_text_positions",
    "history",
    "shape_profiles",
    "preprocessing",
    "tokenizer",
    "sha256",
    "role",
    "image_size",
    "grid",
]
manifest_values = json_values(st.sampled_from(MANIFEST_KEYS) | st.text(max_size=8))


@st.composite
def garbage_manifests(draw: st.DrawFn) -> Any:
    """Random JSON, mostly shaped like a manifest (right format marker) so the checks past it are reached."""
    if draw(st.booleans()):
        return draw(manifest_values)
    body = draw(st.dictionaries(st.sampled_from(MANIFEST_KEYS) | st.text(max_size=8), manifest_values, max_size=6))
    return {"format": "fbcompress-bundle", "format_version": 1, **body}


@pytest.mark.slow
@settings(max_examples=60, **FUZZ)
@given(manifest=garbage_manifests())
def test_manifest_random_json(bundle_dir: Path, manifest: Any) -> None:
    """manifest.json replaced by random JSON: wrong types, missing and extra keys, nested garbage."""
    with bundle_with_manifest(bundle_dir, json.dumps(manifest).encode()) as root:
        load_bundle_every_way(root, real_source(bundle_dir), full=False)


@pytest.mark.slow
@settings(max_examples=40, **FUZZ)
@given(data=st.data())
def test_manifest_random_bytes_and_truncation(bundle_dir: Path, data: st.DataObject) -> None:
    """manifest.json replaced by random bytes, cut short, or with a few bytes overwritten."""
    real = (bundle_dir / "manifest.json").read_bytes()
    raw = data.draw(
        st.binary(max_size=300)
        | st.integers(0, len(real) - 1).map(lambda cut: real[:cut])
        | st.tuples(st.integers(0, len(real) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda hit: real[: hit[0]] + hit[1] + real[hit[0] + len(hit[1]) :]
        )
    )
    with bundle_with_manifest(bundle_dir, raw) as root:
        load_bundle_every_way(root, real_source(bundle_dir), full=False)


@pytest.mark.slow
@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_manifest_one_value_mutated(bundle_dir: Path, data: st.DataObject) -> None:
    """The real manifest with one value (anywhere: patch_spec, files, models, source...) replaced or removed."""
    real = json.loads((bundle_dir / "manifest.json").read_text())
    manifest = data.draw(one_value_mutated(real, manifest_values))
    with bundle_with_manifest(bundle_dir, json.dumps(manifest).encode()) as root:
        load_bundle_every_way(root, real_source(bundle_dir))


# ------------------------------------------------------------------------------------------------ Fashion-Gen HDF5

FG_ROWS = 8  # 4 products x 2 poses: enough for train/val/test when nothing is broken
FG_SIDE = 4


def fashiongen_layout() -> dict[str, np.ndarray]:
    """A tiny valid file in the public layout: (N, 1) byte-string columns, (N, S, S, 3) uint8 images."""

    def column(values: list[str]) -> np.ndarray:
        return np.array([[v.encode("latin-1")] for v in values], dtype="S24")

    n = FG_ROWS
    return {
        "input_image": np.arange(n * FG_SIDE * FG_SIDE * 3, dtype=np.uint8).reshape(n, FG_SIDE, FG_SIDE, 3),
        "input_name": column([f"Naïve shirt {i // 2}" for i in range(n)]),
        "input_description": column([f"Crêpe cotton, {i // 2}." for i in range(n)]),
        "input_category": column(["TOPS"] * n),
        "input_subcategory": column(["SHIRTS", "SWEATERS"] * (n // 2)),
        "input_productID": (np.arange(n, dtype=np.int32) // 2).reshape(n, 1),
        "input_pose": column([f"id_gridfs_{i % 2 + 1}" for i in range(n)]),
        "input_brand": column(["Maison Crème"] * n),
        "input_msrpUSD": np.full((n, 1), 120.3, dtype=np.float32),
    }


FG_KEYS = list(fashiongen_layout())
DTYPES = ["uint8", "int32", "int64", "float32", "float64", "bool", "complex64", "S8", "vlen-bytes", "vlen-str"]


@st.composite
def arrays(
    draw: st.DrawFn, rows: int | None = None, shape: tuple[int, ...] | None = None, dtype: str | None = None
) -> np.ndarray:
    """A random small array of a random dtype and rank (0-4), strings with arbitrary (non-UTF-8) bytes."""
    if shape is None:
        rank = draw(st.integers(0, 4))
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank)))
    if rows is not None and shape:
        shape = (rows, *shape[1:])
    dtype = dtype or draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape))
    if dtype in ("S8", "vlen-bytes", "vlen-str"):
        cells = draw(st.lists(st.binary(max_size=8), min_size=size, max_size=size))
        if dtype == "S8":
            return np.array(cells, dtype="S8").reshape(shape)
        cells = [c.replace(b"\x00", b"") for c in cells]  # HDF5 variable-length strings cannot hold NUL
        if dtype == "vlen-str":
            cells = [c.decode("latin-1") for c in cells]
        out = np.empty(size, dtype=h5py.string_dtype("utf-8" if dtype == "vlen-str" else "ascii"))
        out[:] = cells
        return out.reshape(shape)
    if dtype.startswith(("float", "complex")):
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=size, max_size=size))
        return np.array(values, dtype=dtype).reshape(shape)
    values = draw(st.lists(st.integers(0, 255), min_size=size, max_size=size))
    return np.array(values).astype(dtype).reshape(shape)


@st.composite
def broken_fashiongen(draw: st.DrawFn) -> dict[str, Any]:
    """The valid layout with 1-3 damages: a key dropped or made a group, a column replaced by a random array (of the
    right or a wrong length, or of the right shape and another dtype), rows cut off, NaN prices/ids, byte soup in the
    texts, an empty file."""
    layout: dict[str, Any] = fashiongen_layout()
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(FG_KEYS))
        damage = draw(
            st.sampled_from(
                ["drop", "group", "random", "random-rows", "retype", "retype", "cut", "nan", "bytes", "empty"]
            )
        )
        if damage == "drop":
            layout.pop(key, None)
        elif damage == "group":
            layout[key] = "group"
        elif damage == "random":
            layout[key] = draw(arrays())
        elif damage == "random-rows":
            layout[key] = draw(arrays(rows=FG_ROWS))
        elif damage == "retype" and isinstance(layout.get(key), np.ndarray):
            layout[key] = draw(arrays(shape=layout[key].shape))
        elif damage == "cut" and isinstance(layout.get(key), np.ndarray) and layout[key].shape:
            layout[key] = layout[key][: draw(st.integers(0, FG_ROWS - 1))]
        elif damage == "nan":
            layout[key] = np.full((FG_ROWS, 1), np.nan, dtype=draw(st.sampled_from(["float32", "float64"])))
        elif damage == "bytes":
            cells = draw(st.lists(st.binary(max_size=24), min_size=FG_ROWS, max_size=FG_ROWS))
            layout[key] = np.array([[c] for c in cells], dtype="S24")
        elif damage == "empty":
            layout = {k: v[:0] if isinstance(v, np.ndarray) and v.shape else v for k, v in layout.items()}
    return layout


def write_h5(path: Path, layout: dict[str, Any]) -> None:
    with h5py.File(path, "w") as handle:
        for key, value in layout.items():
            if isinstance(value, str):
                handle.create_group(key)
            else:
                handle.create_dataset(key, data=value)


def convert_and_check(sources: list[Path], out: Path, image_size: int | None) -> None:
    """Convert: a readable dataset dir, or FbError and nothing at `out` (nor any temporary sibling)."""
    from fbcompress.data.dataset_dir import SPLITS, DatasetDir, EvalSetSizes
    from fbcompress.data.fashiongen import convert_fashiongen

    before = {p.name for p in out.parent.iterdir()}
    result = expect_clean(
        lambda: convert_fashiongen(
            sources,
            out,
            seed=0,
            val_fraction=0.25,
            test_fraction=0.25,
            eval_sizes=EvalSetSizes(4, 2),
            image_size=image_size,
        )
    )
    if isinstance(result, FbError):
        assert not out.exists(), f"{out} written although conversion failed: {result}"
        assert not leftovers(out.parent, before), "temporary files left beside the output"
    else:
        data = DatasetDir.open(out)
        for split in SPLITS:
            for record in data.records(split):
                assert (out / record["image"]).is_file()
                json.dumps(record, allow_nan=False)


@pytest.mark.slow
@settings(max_examples=80, **FUZZ)
@given(layout=broken_fashiongen(), image_size=st.none() | st.sampled_from([2, 8]))
def test_fashiongen_malformed_hdf5(layout: dict[str, Any], image_size: int | None) -> None:
    with scratch() as tmp:
        path = tmp / "fashiongen_256_256_train.h5"
        write_h5(path, layout)
        convert_and_check([path], tmp / "data", image_size)


@settings(max_examples=50, **FUZZ)
@given(
    data=st.data(),
    retyped=st.dictionaries(st.sampled_from(FG_KEYS[1:]), st.sampled_from(DTYPES), min_size=1, max_size=3),
)
@pytest.mark.slow
def test_fashiongen_wrong_column_dtypes(data: st.DataObject, retyped: dict[str, str]) -> None:
    """A well-formed file whose text/id/attribute columns hold another dtype: numbers, bools, complex, NaN/inf
    floats, non-UTF-8 bytes. Converted with the odd values as text (or null), or refused; never a half-written dir or
    a manifest that is not strict JSON."""
    layout = fashiongen_layout()
    for key, dtype in retyped.items():
        layout[key] = data.draw(arrays(shape=(FG_ROWS, 1), dtype=dtype))
    with scratch() as tmp:
        path = tmp / "fashiongen_256_256_train.h5"
        write_h5(path, layout)
        convert_and_check([path], tmp / "data", None)


@settings(max_examples=30, **FUZZ)
@given(data=st.data())
def test_fashiongen_not_hdf5_or_truncated(data: st.DataObject) -> None:
    """Random bytes, the HDF5 signature followed by junk, a real file cut short or with bytes overwritten."""
    with scratch() as tmp:
        real_path = tmp / "real.h5"
        write_h5(real_path, fashiongen_layout())
        real = real_path.read_bytes()
        raw = data.draw(
            st.binary(max_size=200)
            | st.binary(max_size=200).map(lambda junk: b"\x89HDF\r\n\x1a\n" + junk)
            | st.integers(0, len(real) - 1).map(lambda cut: real[:cut])
            | st.tuples(st.integers(0, len(real) - 1), st.binary(min_size=1, max_size=16)).map(
                lambda hit: real[: hit[0]] + hit[1] + real[hit[0] + len(hit[1]) :]
            )
        )
        path = tmp / "fashiongen_256_256_validation.h5"
        path.write_bytes(raw)
        real_path.unlink()
        convert_and_check([path], tmp / "data", None)


def test_cli_fashiongen_bad_file_writes_nothing(tmp_path: Path) -> None:
    layout = fashiongen_layout()
    layout["input_image"] = layout["input_image"].astype(np.float32)
    path = tmp_path / "fashiongen_256_256_train.h5"
    write_h5(path, layout)
    result = run("data", "fashiongen", "--h5", path, "--out", tmp_path / "out")
    assert_one_line_error(result, str(path), "input_image")
    assert not leftovers(tmp_path, {path.name})


# ------------------------------------------------------------------------------------------------- dataset dirs

DATA_FILES = [
    "manifest-train.jsonl",
    "manifest-val.jsonl",
    "manifest-test.jsonl",
    "eval-pairs.jsonl",
    "eval-itr.jsonl",
    "eval-tir.jsonl",
    "dataset.json",
]
RECORD_KEYS = [
    "id",
    "product_id",
    "image",
    "text",
    "title",
    "category",
    "subcategory",
    "attributes",
    "features",
    "split",
    "label",
    "query",
    "positive",
    "negatives",
]
record_values = json_values(st.sampled_from(RECORD_KEYS) | st.text(max_size=6), max_leaves=6)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("fuzz-data") / "tiny", products=30, image_size=32)


@pytest.fixture(scope="module")
def tokenizer():
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir

    return load_tokenizer(packaged_minilm_dir())


class ZeroScorer:
    """Stands in for a model: evaluation walks every eval row and builds every batch, without a network."""

    name = "zero"
    backend = "none"

    def logits(self, batch: dict) -> np.ndarray:
        return np.zeros((len(batch["input_ids"]), 2), dtype=np.float32)


@st.composite
def damaged_json_file(draw: st.DrawFn, original: str) -> bytes:
    """dataset.json: one value changed or removed, replaced by random JSON, random bytes, cut short."""
    damage = draw(st.sampled_from(["one-key", "json", "bytes", "cut"]))
    if damage == "one-key":
        return json.dumps(draw(one_value_mutated(json.loads(original), record_values))).encode()
    if damage == "json":
        return json.dumps(draw(record_values)).encode()
    if damage == "bytes":
        return draw(st.binary(max_size=60))
    return original.encode()[: draw(st.integers(0, len(original) - 1))]


@st.composite
def damaged_jsonl_file(draw: st.DrawFn, original: str) -> bytes:
    """A manifest or eval set: one line replaced by random JSON / text / bytes, one value of one row changed or
    removed, the file cut short or emptied."""
    lines = original.splitlines()
    damage = draw(st.sampled_from(["line-json", "line-text", "line-bytes", "one-key", "cut", "empty"]))
    index = draw(st.integers(0, max(len(lines) - 1, 0)))
    if damage == "line-json":
        lines[index] = json.dumps(draw(record_values))
    elif damage == "line-text":
        lines[index] = draw(st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t))
    elif damage == "line-bytes":
        return ("\n".join(lines[:index]) + "\n").encode() + draw(st.binary(min_size=1, max_size=30))
    elif damage == "one-key":
        lines[index] = json.dumps(draw(one_value_mutated(json.loads(lines[index]), record_values)))
    elif damage == "cut":
        raw = original.encode()
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    else:
        return b""
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. metrics averaged over nothing: NaN instead of an error
@settings(max_examples=80, **FUZZ)
@given(data=st.data(), name=st.sampled_from(DATA_FILES))
def test_dataset_dir_malformed_manifests(dataset_dir: Path, tokenizer, data: st.DataObject, name: str) -> None:
    """One manifest / eval set / dataset.json damaged: opening, reading every split and evaluating on it give
    results or one clean line."""
    from fbcompress.data.dataset_dir import SPLITS, DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.evaluation.metrics import evaluate
    from fbcompress.modeling.model import PatchSpec

    spec = PatchSpec(patch_encoder="pixels", patch_dim=48, num_patches=64, image_size=32, grid=8, max_text_len=32)
    original = (dataset_dir / name).read_text(encoding="utf-8")
    raw = data.draw(damaged_json_file(original) if name == "dataset.json" else damaged_jsonl_file(original))
    with scratch() as tmp:
        root = tmp / "data"
        root.mkdir()
        (root / "images").symlink_to(dataset_dir / "images")
        for other in DATA_FILES:
            shutil.copyfile(dataset_dir / other, root / other)
        (root / name).write_bytes(raw)

        def read_all() -> None:
            dataset = DatasetDir.open(root)
            assert isinstance(dataset.fingerprint, str)
            for split in SPLITS:
                split_data = SplitData(dataset, split, tokenizer, spec)
                if split == "train":
                    split_data.batch(range(len(split_data)), range(len(split_data)))
                else:
                    evaluate(ZeroScorer(), dataset, split_data, split, progress=False)

        expect_clean(read_all)


def test_cli_eval_on_bundle_with_broken_manifest(bundle_dir: Path, dataset_dir: Path) -> None:
    """Through the CLI: a model file whose manifest lists files in the wrong shape gives one line, exit 2."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = ["not", "an", "entry"]
    with bundle_with_manifest(bundle_dir, json.dumps(manifest).encode()) as root:
        result = run("eval", "--model", root / "model.onnx", "--data", dataset_dir, "--max-queries", 2)
        assert_one_line_error(result, str(root / "manifest.json"), "'model.onnx'")
