"""The bundle manifest's schema (`export/manifest.py`) and how a model file finds its bundle (`find_bundle`,
`verify_bundle_file`), tested key by key so that a one-line break fails: every typed part refused with its key
path when wrong, the boundaries (0 vs 1, a bool is not a number), the one-line message, and the lookup's limits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from records import DELETE, mutated

from fbcompress.bundle import store as B
from fbcompress.bundle.manifest import FORMAT_VERSION, parse_manifest, parse_patch_spec
from fbcompress.core.errors import FbError, validation_error_line

VALID = {
    "format": "fbcompress-bundle",
    "format_version": 1,
    "files": {"model.onnx": {"sha256": "ab" * 32, "role": "onnx"}},
    "models": {"model.onnx": {"role": "onnx", "latency": {"machine": {"cpu": "x"},
                                                          "cases": [{"batch": 1, "text": 16, "p50_ms": 0.5}]}}},
    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "text"]}],
    "shape_profiles": [{"name": "online", "batch": [1, 1, 8], "text": [1, 16, 48]}],
    "triton": {"model_name": "fashionbert", "platform": "onnxruntime_onnx", "max_batch_size": 8},
    "recipe": {"export": {"workspace_mib": 512}},
    "max_text_positions": 48,
    "quantization": {"anything": ["a stage's own key"]},
}


def _edited(path: tuple, value: object) -> dict:
    return mutated(VALID, path, value)


def test_a_valid_manifest_is_read_with_its_extra_keys_kept():
    typed = parse_manifest(copy.deepcopy(VALID), "m.json")
    assert typed.files["model.onnx"].sha256 == "ab" * 32 and typed.max_text_positions == 48
    assert typed.models["model.onnx"].latency.cases[0].p50_ms == 0.5
    assert typed.shape_profiles[0].text == [1, 16, 48] and typed.triton.max_batch_size == 8
    assert typed.model_extra["quantization"] == {"anything": ["a stage's own key"]}
    minimal = parse_manifest({"format": "fbcompress-bundle", "files": {}}, "m.json")
    assert minimal.format_version == 0 and minimal.max_text_positions is None and minimal.triton is None


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("files",), DELETE, "m.json: files: Field required"),
        (("files",), [], "m.json: files: Input should be a valid dictionary"),
        (("files", "model.onnx", "sha256"), 7, "files['model.onnx'].sha256: Input should be a valid string (got 7)"),
        (("files", "model.onnx"), {"role": "onnx"}, "m.json: files['model.onnx'].sha256: Field required"),
        (("format_version",), "1", "m.json: format_version: Input should be a valid integer (got '1')"),
        (("format_version",), True, "m.json: format_version: Input should be a valid integer (got True)"),
        (("models",), [], "m.json: models: Input should be a valid dictionary"),
        (("models", "model.onnx", "parity"), None, "m.json: models['model.onnx'].parity: Input should be a valid "
                                                   "dictionary (got None)"),
        (("models", "model.onnx", "latency", "machine"), "cpu", "models['model.onnx'].latency.machine: Input "
                                                                 "should be a valid dictionary (got 'cpu')"),
        (("models", "model.onnx", "latency", "cases", 0, "p50_ms"), True, "latency.cases[0].p50_ms: Input should be"
                                                                          " a valid number (got True)"),
        (("models", "model.onnx", "latency", "cases", 0, "batch"), DELETE, "latency.cases[0].batch: Field required"),
        (("max_text_positions",), 0, "m.json: max_text_positions: Input should be greater than or equal to 1 (got 0)"),
        (("max_text_positions",), 4.0, "m.json: max_text_positions: Input should be a valid integer (got 4.0)"),
        (("inputs", 0, "shape"), "batch", "m.json: inputs[0].shape: Input should be a valid list (got 'batch')"),
        (("inputs", 0, "dtype"), DELETE, "m.json: inputs[0].dtype: Field required"),
        (("shape_profiles", 0, "batch"), [1, 8], "m.json: shape_profiles[0].batch: List should have at least 3 items"),
        (("shape_profiles", 0, "text"), [1, 2, 3, 4], "shape_profiles[0].text: List should have at most 3 items"),
        (("shape_profiles", 0, "text", 1), 1.5, "shape_profiles[0].text[1]: Input should be a valid integer (got 1.5)"),
        (("shape_profiles", 0, "name"), DELETE, "shape_profiles[0].name: Field required"),
        (("triton", "platform"), DELETE, "m.json: triton.platform: Field required"),
        (("triton",), "x", "m.json: triton: Input should be a valid dictionary"),
        (("recipe", "export"), 3, "m.json: recipe.export: Input should be a valid dictionary (got 3)"),
        (("history",), {}, "m.json: history: Input should be a valid list"),
        (("source",), "a", "m.json: source: Input should be a valid dictionary (got 'a')"),
    ],
)
def test_each_typed_part_is_refused_naming_its_key(path, value, message):
    """Breaks caught: any part's type loosened or dropped from the schema, a bool taken for a number, the
    positions' lower bound moved (0 must fail, 1 pass: see below), the profiles' length not three."""
    with pytest.raises(FbError) as caught:
        parse_manifest(_edited(path, value), "m.json")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_lower_bounds_and_numbers_that_pass():
    assert parse_manifest(_edited(("max_text_positions",), 1), "m.json").max_text_positions == 1
    case = parse_manifest(_edited(("models", "model.onnx", "latency", "cases", 0, "text"), 7), "m.json")
    assert case.models["model.onnx"].latency.cases[0].text == 7
    assert parse_manifest(_edited(("triton",), None), "m.json").triton is None


def test_other_formats_and_newer_versions_are_named():
    """Breaks caught: the format marker not checked, a newer format read as if it were this one (or the version
    bound off by one: this version must pass)."""
    for raw in ([], "x", {"files": {}}, {"format": "other", "files": {}}):
        with pytest.raises(FbError, match=r"^m.json is not an fbcompress bundle manifest \(format is not "
                                          r"'fbcompress-bundle'\)$"):
            parse_manifest(raw, "m.json")
    with pytest.raises(FbError, match=rf"^m.json has bundle format {FORMAT_VERSION + 1}; this fbcompress reads up to "
                                      rf"{FORMAT_VERSION} \(upgrade fbcompress\)$"):
        parse_manifest(_edited(("format_version",), FORMAT_VERSION + 1), "m.json")
    assert parse_manifest(_edited(("format_version",), FORMAT_VERSION), "m.json").format_version == FORMAT_VERSION


PIXELS = {"patch_encoder": "pixels", "patch_dim": 48, "num_patches": 64, "image_size": 32, "grid": 8,
          "max_text_len": 16}


def test_a_consistent_patch_spec_is_the_models_own():
    spec = parse_patch_spec({"patch_spec": dict(PIXELS)}, "m.json")
    assert spec.to_dict() == PIXELS
    features = {**PIXELS, "patch_encoder": "features", "patch_dim": 2048, "image_size": 256}
    assert parse_patch_spec({"patch_spec": features}, "m.json").patch_dim == 2048  # any feature size, any image size


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (None, "m.json has no valid patch_spec (missing or not an object)"),
        ([1], "m.json has no valid patch_spec (missing or not an object)"),
        ({"patch_encoder": "pixel"}, "m.json: patch_spec.patch_encoder: Input should be 'pixels' or 'features' "
                                     "(got 'pixel')"),
        ({"grid": True}, "m.json: patch_spec.grid: Input should be a valid integer (got True)"),
        ({"max_text_len": 0}, "m.json: patch_spec.max_text_len: Input should be greater than or equal to 1 (got 0)"),
        ({"extra": 1}, "m.json: patch_spec.extra: Extra inputs are not permitted (got 1)"),
        ({"num_patches": 63}, "m.json: patch_spec: inconsistent: num_patches 63, grid 8, image_size 32, patch_dim 48"),
        ({"patch_dim": 47}, "m.json: patch_spec: inconsistent: num_patches 64, grid 8, image_size 32, patch_dim 47"),
        ({"image_size": 33, "patch_dim": 48}, "patch_spec: inconsistent: num_patches 64, grid 8, image_size 33"),
        ({"patch_encoder": "features", "num_patches": 4}, "patch_spec: inconsistent: num_patches 4, grid 8"),
    ],
)
def test_a_broken_patch_spec_is_refused_in_one_line(edit, message):
    """Breaks caught: the encoder names, the positive-integer rule (bool, 0), the grid rule for both encoders,
    the pixel rules (image size divisible by the grid, patch_dim 3*p*p) applied to pixels only, `or` -> `and`
    between the rules, the messages."""
    if edit is None:
        manifest: dict = {}
    elif isinstance(edit, list):
        manifest = {"patch_spec": edit}
    else:
        manifest = {"patch_spec": {**PIXELS, **edit}}
    with pytest.raises(FbError) as caught:
        parse_patch_spec(manifest, "m.json")
    assert message in str(caught.value)


class _FakeValidation:
    def __init__(self, loc, msg, kind="value_error", value=None):
        self.error = {"loc": loc, "msg": msg, "type": kind, "input": value}

    def errors(self):
        return [self.error]


def test_validation_error_line_names_the_key_as_a_reader_indexes_it():
    """Breaks caught: dict keys that are not identifiers shown bare (a file name with dots) or identifiers with
    capitals bracketed, list indexes as `.0`, the value or the prefix dropped, values of more than 40 characters
    not cut (or of 40 cut), pydantic's "Value error, " kept."""
    line = validation_error_line("m.json", _FakeValidation(("models", "a b.onnx", "cases", 0, "x"), "Bad\n value",
                                                             "float_type", "z" * 60))
    assert line == f"m.json: models['a b.onnx'].cases[0].x: Bad value (got '{'z' * 36}...)"
    assert validation_error_line("w", _FakeValidation(("grid",), "Value error, inconsistent", value=3),
                                 prefix="patch_spec") == "w: patch_spec.grid: inconsistent (got 3)"
    assert validation_error_line("w", _FakeValidation((), "Field required", "missing", {"a": 1})) == \
        "w: the top level: Field required"
    assert validation_error_line("w", _FakeValidation((0,), "x", value=[1])) == "w: [0]: x"
    assert validation_error_line("w", _FakeValidation(("Models", "Z9"), "x", value=1)) == "w: Models.Z9: x (got 1)"
    fits, over = "a" * 38, "a" * 39  # reprs of 40 and 41 characters: 40 is shown whole
    assert validation_error_line("w", _FakeValidation(("k",), "x", value=fits)) == f"w: k: x (got '{fits}')"
    assert validation_error_line("w", _FakeValidation(("k",), "x", value=over)) == f"w: k: x (got '{'a' * 36}...)"


# ------------------------------------------------------------------------------------------------- find_bundle


def _bundle_at(root: Path, files: dict[str, bytes]) -> Path:
    with B.update_bundle(root, {"weights_sha256": "a" * 64}) as w:
        for rel, data in files.items():
            w.path(rel, B.ROLE_ONNX).write_bytes(data)
        w.finalize()
    return root


def test_a_file_finds_the_bundle_that_lists_it_up_to_four_folders_up(tmp_path):
    """triton/<model>/1/model.onnx is three folders below its bundle; four is the limit. Breaks caught: the
    search range off by one either way, a file the bundle does not list taken as its."""
    root = _bundle_at(tmp_path / "b", {"a/b/c/d/m.onnx": b"deep", "a/b/c/m.onnx": b"three", "top.onnx": b"t"})
    assert B.find_bundle(root / "a/b/c/m.onnx")[1] == "a/b/c/m.onnx"
    assert B.find_bundle(root / "a/b/c/d/m.onnx")[1] == "a/b/c/d/m.onnx"  # four folders up: still found
    assert B.find_bundle(root / "a/b/c/d/m.onnx", max_up=3) is None
    five = _bundle_at(tmp_path / "b5", {"a/b/c/d/e/m.onnx": b"five"})
    assert B.find_bundle(five / "a/b/c/d/e/m.onnx") is None  # five folders up: beyond the default
    assert B.find_bundle(root / "top.onnx", max_up=0)[1] == "top.onnx"
    (root / "a/stray.onnx").write_bytes(b"not listed")
    assert B.find_bundle(root / "a/stray.onnx") is None  # a bundle further up that does not list it is not its


def test_a_manifest_beside_the_file_is_its_bundle_even_when_it_does_not_list_it(tmp_path):
    """Breaks caught: the beside-the-file rule dropped (verify_bundle_file would then say "no manifest" instead
    of "not listed"), or a broken manifest beside the file skipped instead of reported."""
    root = _bundle_at(tmp_path / "b", {"m.onnx": b"graph"})
    (root / "other.onnx").write_bytes(b"not listed")
    bundle, rel = B.find_bundle(root / "other.onnx")
    assert rel == "other.onnx" and bundle.root == root
    with pytest.raises(FbError, match="is not listed in .*manifest.json: not part of this export bundle"):
        B.verify_bundle_file(root / "other.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    (broken / "m.onnx").write_bytes(b"graph")
    with pytest.raises(FbError, match="is not an fbcompress bundle manifest"):
        B.find_bundle(broken / "m.onnx")


def test_another_projects_manifest_further_up_is_skipped(tmp_path):
    """Breaks caught: an unreadable manifest above the file's folder raised, or taken as the bundle."""
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "some web app"}))
    root = _bundle_at(tmp_path / "b", {"triton/m/1/model.onnx": b"graph"})
    assert B.find_bundle(root / "triton/m/1/model.onnx")[1] == "triton/m/1/model.onnx"
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "m.onnx").write_bytes(b"graph")
    assert B.find_bundle(tmp_path / "x" / "y" / "m.onnx") is None


def test_verify_bundle_file_names_what_is_missing(tmp_path):
    """Breaks caught: the messages of verify_bundle_file and Bundle.open/verify/verify_tokenizer dropped."""
    with pytest.raises(FbError, match=rf"^model not found: {tmp_path}/none.onnx$"):
        B.verify_bundle_file(tmp_path / "none.onnx")
    (tmp_path / "loose.onnx").write_bytes(b"graph")
    with pytest.raises(FbError, match=r"has no manifest.json beside it: not part of an fbcompress export bundle "
                                      r"\(the manifest carries its preprocessing, tokenizer and hashes; export it "
                                      r"with `fbcompress export`\)$"):
        B.verify_bundle_file(tmp_path / "loose.onnx")
    with pytest.raises(FbError, match=rf"^{tmp_path} is not an fbcompress export bundle \(no manifest.json\)$"):
        B.Bundle.open(tmp_path)
    root = _bundle_at(tmp_path / "b", {"m.onnx": b"graph"})
    (root / "m.onnx").chmod(0o644)
    (root / "m.onnx").write_bytes(b"edited")
    with pytest.raises(FbError, match=r"does not match its sha256 in manifest.json \(modified or corrupted after "
                                      r"export\): refusing to load it; re-export the bundle$"):
        B.verify_bundle_file(root / "m.onnx")
    with pytest.raises(FbError, match=rf"^bundle {root} has no tokenizer files$"):
        B.Bundle.open(root).verify_tokenizer()
