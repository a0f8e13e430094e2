"""The bundle's writer and its stated preprocessing, on hand-made bundles (no model: files of a few bytes written
through `update_bundle`, the writer every stage uses).

* `preprocessing(spec)` is what a serving team implements from the manifest: its numpy recipe and normalisation,
  run here on an image, must give exactly what `fbcompress.data.patches` feeds the model.
* `replace_tree` (Triton's subtree), `has_verified` (may a later stage reuse a carried file), `set_role` and
  `link_or_copy` (carried files are hard links, a copy where links fail).

Each test names the one-line breaks of fbcompress/bundle/store.py it was seen to fail on (mutation testing).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fbcompress.bundle import store as B
from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError
from fbcompress.data.patches import PIXEL_MEAN, PIXEL_STD, image_to_patches
from fbcompress.modeling.model import PatchSpec

PIXELS = PatchSpec(patch_encoder="pixels", patch_dim=48, num_patches=16, image_size=16, grid=4, max_text_len=24)
FEATURES = PatchSpec(patch_encoder="features", patch_dim=2048, num_patches=64, image_size=256, grid=8,
                     max_text_len=64)


def test_the_stated_pixel_recipe_reproduces_the_model_inputs():
    """Run the manifest's own words on an image: its numpy reshape, its scale and its normalisation must give the
    patches the model was trained on. Breaks caught: any number in the `numpy` recipe (grid, patch size, patch
    count, values per patch) or the mean/std changed."""
    pre = B.preprocessing(PIXELS)["image"]
    img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    norm = pre["normalize"]
    scaled = (img.astype(np.float32) / 255.0 - norm["mean"]) / norm["std"]
    stated = eval(pre["numpy"], {"img": scaled})  # noqa: S307 - the manifest's recipe, written by us
    np.testing.assert_array_equal(stated, image_to_patches(img, PIXELS.grid))
    assert (norm["mean"], norm["std"]) == (PIXEL_MEAN, PIXEL_STD)


def test_pixel_preprocessing_is_stated_exactly():
    """The serving contract, word for word. Breaks caught: every key and text of the pixel branch, the `pixels`
    branch test, the patch size `image_size // grid`, the text section's keys and its numbers."""
    assert B.preprocessing(PIXELS) == {
        "image": {
            "patch_encoder": "pixels",
            "num_patches": 16,
            "patch_dim": 48,
            "image_size": 16,
            "channels": "RGB",
            "resize": "none: images must already be 16x16 px (no crop, no resize)",
            "grid": 4,
            "patch_size": 4,
            "scale": "x / 255",
            "normalize": {"mean": 0.5, "std": 0.5, "formula": "(x / 255 - 0.5) / 0.5, in [-1, 1]"},
            "patch_order": "row-major over the 4x4 grid: patch r*4+c covers pixel rows r*4..(r+1)*4-1 and columns "
                           "c*4..(c+1)*4-1",
            "patch_flatten": "each patch flattened in (row, column, channel) order: 4*4*3 = 48 values",
            "numpy": "img.reshape(4, 4, 4, 4, 3).transpose(0, 2, 1, 3, 4).reshape(16, 48)",
        },
        "text": {
            "tokenizer": "BERT WordPiece (tokenizer/vocab.txt, tokenizer.json)",
            "format": "[CLS] text [SEP]",
            "max_text_len": 24,
            "truncation": "truncate to 24 wordpieces, [CLS]/[SEP] included",
            "padding": "right-pad with [PAD] (id 0) to the longest text of the batch only (no global maximum)",
            "token_type_ids": 0,
        },
        "output": {"score": "softmax(logits, axis=1)[:, 1] = probability that text and image match"},
    }


def test_feature_preprocessing_states_the_feature_shape_only():
    """Breaks caught: the features branch taking the pixel keys, its text changed."""
    image = B.preprocessing(FEATURES)["image"]
    assert image == {"patch_encoder": "features", "num_patches": 64, "patch_dim": 2048,
                     "features": "64 x 2048 float32 per image: precomputed, as in training"}
    made = B.preprocessing(replace(FEATURES, feature_encoder="e" * 64, feature_mode="grid", feature_input_size=256))
    assert made["image"]["features"] == ("64 x 2048 float32 per image: the output of image_encoder.onnx "
                                         "(preprocessing.image_encoder), computed offline per catalogue image")
    assert B.preprocessing(PatchSpec("features", 8, 4, 0, 0, 16))["image"]["num_patches"] == 4  # grid 0: no crash


SOURCE = {"weights_sha256": "a" * 64}


def _bundle(root: Path) -> Path:
    """A bundle with a model file, a Triton tree (two files, one model entry) and an extra file."""
    with B.update_bundle(root, SOURCE) as w:
        w.path("model.onnx", B.ROLE_ONNX).write_bytes(b"graph")
        w.add_model("model.onnx", {"role": B.ROLE_ONNX})
        tree = w.replace_tree("triton", B.ROLE_TRITON)
        (tree / "fashionbert" / "1").mkdir(parents=True)
        (tree / "fashionbert" / "1" / "model.onnx").write_bytes(b"graph")
        (tree / "fashionbert" / "config.pbtxt").write_text("name: 'fashionbert'")
        w.add_model("triton/fashionbert/1/model.onnx", {"role": B.ROLE_TRITON})
        w.path("notes.txt").write_text("kept")
        w.finalize()
    return root


def test_replace_tree_drops_the_old_subtree_its_files_and_model_entries(tmp_path):
    """A Triton re-export: the old tree and its model entries go, the rest is carried, the new files take the
    tree's role. Breaks caught: the old tree not removed, the prefix built wrongly (`rstrip` -> `lstrip`, no `/`:
    `triton2/` would match too), carried files under it kept, its model entries kept, the role not recorded."""
    root = _bundle(tmp_path / "b")
    with B.update_bundle(root, SOURCE) as w:
        (w.dir / "triton2").mkdir()
        (w.dir / "triton2" / "keep.txt").write_text("not under triton/")
        tree = w.replace_tree("triton/", B.ROLE_TRITON)  # a trailing slash names the same tree
        assert tree == w.dir / "triton" and tree.is_dir() and not any(tree.iterdir())
        assert not w.has_verified("triton/fashionbert/config.pbtxt")
        assert "triton/fashionbert/1/model.onnx" not in w.manifest["models"]
        assert "model.onnx" in w.manifest["models"] and w.has_verified("model.onnx")
        (tree / "config.pbtxt").write_text("name: 'new'")
        w.finalize()
    manifest = B.Bundle.open(root).manifest
    files = manifest["files"]
    assert files["triton/config.pbtxt"]["role"] == B.ROLE_TRITON
    assert not any(rel.startswith("triton/fashionbert") for rel in files)
    assert files["triton2/keep.txt"]["role"] == B.ROLE_EXTRA and files["notes.txt"]["role"] == B.ROLE_EXTRA
    assert list(manifest["models"]) == ["model.onnx"]


def test_replace_tree_makes_a_nested_tree(tmp_path):
    """Breaks caught: `mkdir(parents=True)` -> False/None (a nested tree in a new bundle fails)."""
    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        assert w.replace_tree("serving/triton", B.ROLE_TRITON).is_dir()
        w.finalize()


def test_has_verified_only_for_carried_unchanged_recorded_files(tmp_path):
    """Breaks caught: `old is None or rel not in carried` -> `and` / negations, the early `return False` ->
    True, the recorded entry not looked up (or by another key), `entry is not None` -> `is None`, the hash
    compared with another field."""
    with B.update_bundle(tmp_path / "new", SOURCE) as w:  # no old bundle: nothing is verified
        w.path("model.onnx").write_bytes(b"graph")
        assert not w.has_verified("model.onnx")
        w.finalize()
    root = _bundle(tmp_path / "b")
    (root / "hand-placed.txt").write_text("put there by hand, not in manifest.json")
    with B.update_bundle(root, SOURCE) as w:
        assert w.has_verified("model.onnx") and w.has_verified("notes.txt")
        assert not w.has_verified("missing.onnx")
        assert not w.has_verified("hand-placed.txt")  # carried, but the old manifest never recorded it
        w.path("notes.txt").write_text("rewritten")  # written anew: no longer the carried file
        assert not w.has_verified("notes.txt")
        w.finalize()


def test_set_role_names_a_file_written_without_one(tmp_path):
    """Breaks caught: `set_role` storing None instead of the role."""
    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        w.path("timing.cache").write_bytes(b"cache")
        w.set_role("timing.cache", B.ROLE_TIMING_CACHE)
        w.finalize()
    assert B.Bundle.open(tmp_path / "b").files["timing.cache"]["role"] == B.ROLE_TIMING_CACHE


def test_link_or_copy_links_and_falls_back_to_a_copy(tmp_path, monkeypatch):
    """Carried files are hard links (no copy of a 400 MB engine per update); where the file system refuses links
    (another device, some network mounts) a copy with the same bytes and times. Breaks caught: the parent dirs
    not made (`parents=True` -> False/None), the copy's arguments dropped or swapped."""
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights")
    linked = tmp_path / "a" / "b" / "linked.bin"
    B.link_or_copy(src, linked)
    assert os.stat(linked).st_ino == os.stat(src).st_ino

    def no_links(*_):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copied = tmp_path / "c" / "d" / "copied.bin"
    B.link_or_copy(src, copied)
    assert os.stat(copied).st_ino != os.stat(src).st_ino
    assert copied.read_bytes() == b"weights" and sha256_file(copied) == sha256_file(src)
    assert os.stat(copied).st_mtime_ns == os.stat(src).st_mtime_ns


def test_a_bundle_of_another_checkpoint_is_refused_unless_replaced(tmp_path):
    root = _bundle(tmp_path / "b")
    other = {"weights_sha256": "b" * 64}
    with pytest.raises(FbError, match="exported from another checkpoint"), B.update_bundle(root, other):
        pass
    with B.update_bundle(root, other, replace=True) as w:
        assert not w.has_verified("model.onnx") and not (w.dir / "model.onnx").exists()
        w.path("model.onnx").write_bytes(b"other graph")
        w.finalize()
    assert set(B.Bundle.open(root).files) == {"model.onnx"}


def test_runtime_caches_are_recognised_by_their_top_folder():
    """Files under ort-trt-cache/ (any depth) are the runtime's, never hashed. Breaks caught: `split("/", 1)` ->
    `rsplit` (a nested cache file counted as a bundle file), a wrong separator."""
    cache = B.ORT_TRT_CACHE_DIR
    assert B.is_runtime_cache(f"{cache}/a.engine") and B.is_runtime_cache(f"{cache}/sub/dir/b.profile")
    assert not B.is_runtime_cache("model.onnx") and not B.is_runtime_cache(f"triton/{cache}/x")


def test_timestamps_are_utc_to_the_second(tmp_path):
    """Breaks caught: `now(timezone.utc)` -> local naive time, `microsecond=0` changed."""
    import datetime as dt

    stamp = B.now_iso()
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0) and parsed.microsecond == 0 and stamp.endswith("+00:00")


def test_primary_model_is_the_portable_onnx_else_the_first_model(tmp_path):
    """`--model exported/NAME` means the portable ONNX even when another model is listed first. Breaks caught:
    the role looked up under another key, the fall-back to the first model, the no-model message."""
    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        for rel, role in (("model.fp16.onnx", B.ROLE_ONNX_FP16), ("model.onnx", B.ROLE_ONNX)):
            w.path(rel, role).write_bytes(rel.encode())
            w.add_model(rel, {"role": role})
        w.finalize()
    assert B.Bundle.open(tmp_path / "b").primary_model() == "model.onnx"
    with B.update_bundle(tmp_path / "c", SOURCE) as w:
        for rel in ("model.fp16.onnx", "model.int8.onnx"):
            w.path(rel).write_bytes(rel.encode())
            w.add_model(rel, {"role": B.ROLE_ONNX_FP16})
        w.finalize()
    assert B.Bundle.open(tmp_path / "c").primary_model() == "model.fp16.onnx"
    with B.update_bundle(tmp_path / "d", SOURCE) as w:
        w.path("notes.txt").write_text("no model")
        w.finalize()
    with pytest.raises(FbError, match=f"bundle {tmp_path / 'd'} holds no model file"):
        B.Bundle.open(tmp_path / "d").primary_model()


def test_a_model_entry_names_its_file_role_and_when_it_was_described(tmp_path):
    """`add_model` gives the file its role when `path()` did not, and stamps the entry. Breaks caught: the role
    default `setdefault(rel, ...)` dropped or read from another key (the file recorded as `extra`), the entry's
    `updated_at` under another key."""
    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        w.path("model.int8.onnx").write_bytes(b"int8")
        w.add_model("model.int8.onnx", {"role": B.ROLE_ONNX_INT8})
        w.path("model.extra.onnx").write_bytes(b"x")
        w.add_model("model.extra.onnx", {})
        w.finalize()
    bundle = B.Bundle.open(tmp_path / "b")
    assert bundle.files["model.int8.onnx"]["role"] == B.ROLE_ONNX_INT8
    assert bundle.files["model.extra.onnx"]["role"] == B.ROLE_EXTRA
    assert bundle.models["model.int8.onnx"]["updated_at"].endswith("+00:00")


def test_an_update_keeps_the_history_and_nested_files_named_like_the_manifest(tmp_path):
    """A later stage's update keeps the bundle's history list and every file but the top manifest.json (a
    Triton model folder may hold a file of that name). Breaks caught: the `history` default under another key,
    carry_over skipping a nested manifest.json instead of the top one."""
    root = _bundle(tmp_path / "b")
    with B.update_bundle(root, SOURCE) as w:
        nested = w.path("triton/fashionbert/manifest.json")
        nested.write_text('{"a": "serving-side file"}')
        w.finalize()
    assert B.Bundle.open(root).manifest["history"] == []
    with B.update_bundle(root, SOURCE) as w:
        assert (w.dir / "triton/fashionbert/manifest.json").is_file()
        w.finalize()
    assert "triton/fashionbert/manifest.json" in B.Bundle.open(root).files


def test_a_finished_bundle_is_readable_as_the_umask_allows(tmp_path):
    """Staged files are private (0600/0700) until the commit; a served bundle must be readable by the serving
    user. Breaks caught: `& ~umask` -> `| ~umask` / `& umask`, the dir/file modes swapped or changed."""
    previous = os.umask(0o022)
    try:
        root = _bundle(tmp_path / "b")
    finally:
        os.umask(previous)
    assert oct(os.stat(root / "manifest.json").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(root / "notes.txt").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(root / "triton").st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(root).st_mode & 0o777) == oct(0o755)


def test_runtime_caches_are_copied_not_linked_and_not_recorded(tmp_path):
    """ONNX Runtime rewrites its TensorRT cache files in place, so an update copies them (a hard link would let
    the runtime change the live bundle's copy mid-update) and never hashes them. Breaks caught: the cache's parent
    dirs not made (`parents=True`/`exist_ok=True` changed: nested or second files fail), the copy's arguments."""
    root = _bundle(tmp_path / "b")
    cache = root / B.ORT_TRT_CACHE_DIR / "sm90"
    cache.mkdir(parents=True)
    (cache / "a.engine").write_bytes(b"engine a")
    (cache / "a.profile").write_bytes(b"profile a")
    with B.update_bundle(root, SOURCE) as w:
        staged = w.dir / B.ORT_TRT_CACHE_DIR / "sm90"
        assert (staged / "a.engine").read_bytes() == b"engine a" and (staged / "a.profile").is_file()
        assert os.stat(staged / "a.engine").st_ino != os.stat(cache / "a.engine").st_ino
        w.finalize()
    files = B.Bundle.open(root).files
    assert not any(rel.startswith(B.ORT_TRT_CACHE_DIR) for rel in files)
    assert {"model.onnx", "notes.txt", "triton/fashionbert/config.pbtxt"} <= set(files)  # listed past the cache
    assert (root / B.ORT_TRT_CACHE_DIR / "sm90" / "a.engine").read_bytes() == b"engine a"


def test_path_gives_a_fresh_nested_path_over_files_and_dirs(tmp_path):
    """Breaks caught: `path()`'s parent dirs not made (`parents=True` changed), a directory in the way not
    removed (`rmtree(target)` changed)."""
    root = _bundle(tmp_path / "b")
    with B.update_bundle(root, SOURCE) as w:
        w.path("engines/sm90/model.fp16.plan").write_bytes(b"plan")
        w.path("triton", B.ROLE_EXTRA).write_text("a file where a directory was")
        w.finalize()
    bundle = B.Bundle.open(root)
    assert (root / "engines/sm90/model.fp16.plan").read_bytes() == b"plan"
    assert (root / "triton").is_file() and "triton/fashionbert/config.pbtxt" not in bundle.files
    assert list(bundle.models) == ["model.onnx"]  # the Triton model's file is gone, so is its entry


def test_replace_tree_of_a_name_ending_in_x(tmp_path):
    """The trailing-slash strip removes only slashes. Break caught: `rstrip("/")` given other characters (a tree
    named INDEX/ would become INDE/)."""
    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        (w.replace_tree("INDEX/", B.ROLE_TRITON) / "shard-0.bin").write_bytes(b"0")
        w.finalize()
    assert B.Bundle.open(tmp_path / "b").files["INDEX/shard-0.bin"]["role"] == B.ROLE_TRITON


def test_file_roles_external_data_and_carried_files(tmp_path):
    """A model's external-data file (ONNX files over 2 GiB keep their weights beside them) takes the model's
    role; a carried file keeps the role the old manifest gave it; an unknown `.data` file is `extra`. Breaks
    caught: the `.data` test (`and` -> `or`, the suffix, the slice sign, `in` -> `not in`), the old role read
    under another key or without its default."""
    root = _bundle(tmp_path / "b")
    with B.update_bundle(root, SOURCE) as w:
        w.path("big.onnx", B.ROLE_ONNX_FP16).write_bytes(b"graph")
        w.path("big.onnx.data").write_bytes(b"weights")
        w.path("stray.data").write_bytes(b"?")
        w.finalize()
    files = B.Bundle.open(root).files
    assert files["big.onnx.data"]["role"] == f"{B.ROLE_ONNX_FP16}-external-data"
    assert files["stray.data"]["role"] == B.ROLE_EXTRA
    assert files["model.onnx"]["role"] == B.ROLE_ONNX  # carried twice now, role kept from the first manifest
    assert files["triton/fashionbert/config.pbtxt"]["role"] == B.ROLE_TRITON


def test_the_manifest_names_its_writer_and_is_readable(tmp_path):
    """Breaks caught: `fbcompress_version` / `updated_at` under other keys, the README's role not `readme`, the
    manifest not indented for the person reading it."""
    import json

    from fbcompress import __version__

    with B.update_bundle(tmp_path / "b", SOURCE) as w:
        w.path("model.onnx", B.ROLE_ONNX).write_bytes(b"graph")
        w.finalize(render_readme=lambda manifest: f"# {len(manifest['models'])} models")
    text = (tmp_path / "b" / B.MANIFEST).read_text()
    manifest = json.loads(text)
    assert manifest["fbcompress_version"] == __version__ and manifest["updated_at"].endswith("+00:00")
    assert manifest["files"][B.README]["role"] == B.ROLE_README
    assert text == json.dumps(manifest, indent=2) + "\n"


def test_a_carried_file_changed_after_it_was_written_is_refused(tmp_path):
    """A later stage must not re-record a hand-edited file as genuine. Breaks caught: the refusal's advice."""
    root = _bundle(tmp_path / "b")
    (root / "notes.txt").write_text("edited by hand")
    with pytest.raises(FbError) as caught, B.update_bundle(root, SOURCE) as w:
        w.finalize()
    assert str(caught.value) == (f"{root / 'notes.txt'} no longer matches its sha256 in manifest.json (modified after "
                                 "it was written): remove it or re-run the stage that made it, then export again")


def test_a_carried_file_recorded_without_a_role_is_extra(tmp_path):
    """A manifest written by hand (or by an older version) may record a file without its role; carried on, the
    file is `extra`. Breaks caught: the old role's default `ROLE_EXTRA` dropped ("None" recorded)."""
    import json

    root = _bundle(tmp_path / "b")
    manifest = json.loads((root / B.MANIFEST).read_text())
    del manifest["files"]["notes.txt"]["role"]
    (root / B.MANIFEST).write_text(json.dumps(manifest))
    with B.update_bundle(root, SOURCE) as w:
        w.finalize()
    assert B.Bundle.open(root).files["notes.txt"]["role"] == B.ROLE_EXTRA
