"""Damage that MUST be refused: "loaded without error" is a failure here.

tests/fuzz/test_fuzz_inputs.py holds the loaders to "loads, or one clean FbError line", so a loader whose hash check was
switched off still passes it (the damaged file simply loads). Every input below is one the product promises to
refuse: a checkpoint whose weights changed after they were saved (any byte flipped, cut short, swapped for other
valid weights), a checkpoint or bundle whose recorded sha256 was edited, a bundle file changed after export (model,
tokenizer, README), a file the manifest does not list, a cut-short manifest, a tampered training state. Each is
refused with FbError, one line, naming the file; through the CLI, exit 2 with one `error:` line.

Each example works on its own full copy (never hard links: the bytes are changed in place) of the session's smoke
checkpoint and bundle (tests/conftest.py), in a `tempfile.TemporaryDirectory()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fbcompress.core.errors import FbError

FUZZ: dict[str, Any] = {
    "max_examples": 20,
    "deadline": None,
    "database": None,  # a failure is reported with its example, never replayed from or saved to .hypothesis/
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
WEIGHTS, META = "model.safetensors", "fbcompress.json"


def refused(call: Callable[[], Any], *where: str) -> FbError:
    """`call` must raise FbError: a non-empty one-line message naming each of `where`. Returning is a failure."""
    try:
        result = call()
    except FbError as exc:
        message = str(exc).strip()
        assert message and "\n" not in message, f"not one line: {message!r}"
        for fragment in where:
            assert fragment in message, f"{fragment!r} not named in {message!r}"
        return exc
    pytest.fail(f"damaged input accepted: {getattr(call, '__name__', call)} returned {result!r}")


@contextlib.contextmanager
def copy_of(source: Path, name: str | None = None) -> Iterator[Path]:
    """A full copy of `source` (a checkpoint or bundle dir) in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="fbstrength-") as tmp:
        root = Path(tmp) / (name or source.name)
        shutil.copytree(source, root)
        yield root


def flip(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def offsets(size: int, head: int = 4096) -> st.SearchStrategy[int]:
    """Anywhere in a file of `size` bytes, with the header region (format, JSON header) drawn as often."""
    return st.integers(0, min(head, size) - 1) | st.integers(0, size - 1)


MASKS = st.integers(1, 255)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------ checkpoints


@settings(**FUZZ)
@given(data=st.data())
def test_checkpoint_with_any_weights_byte_flipped_is_refused(trained_smoke: Path, data: st.DataObject) -> None:
    """One byte anywhere in model.safetensors (header or tensor data) XOR-ed: `open_checkpoint` and `load_model`
    refuse, naming the file. Break caught: the sha256 comparison in `open_checkpoint` skipped (e.g.
    `if sha256_file(...) != expected` -> `if False`): flips in tensor data then load as silently different weights."""
    from fbcompress.modeling.checkpoint import load_model, open_checkpoint

    size = (trained_smoke / WEIGHTS).stat().st_size
    offset, mask = data.draw(offsets(size), label="offset"), data.draw(MASKS, label="mask")
    with copy_of(trained_smoke) as ckpt:
        flip(ckpt / WEIGHTS, offset, mask)
        refused(lambda: open_checkpoint(ckpt), str(ckpt / WEIGHTS), META)
        refused(lambda: load_model(ckpt), str(ckpt / WEIGHTS))


@settings(**FUZZ)
@given(data=st.data())
def test_checkpoint_with_truncated_weights_is_refused_as_truncated(trained_smoke: Path, data: st.DataObject) -> None:
    """model.safetensors cut short anywhere (to 0 bytes included): refused as "truncated or corrupt".
    Breaks caught: the sha256 comparison skipped (a cut that keeps the header opens fine); `_why_mismatch` calling
    every mismatch "replaced?" (e.g. its `except` tuple narrowed, or the safe_open probe removed)."""
    from fbcompress.modeling.checkpoint import open_checkpoint

    size = (trained_smoke / WEIGHTS).stat().st_size
    cut = data.draw(st.integers(0, 64) | st.integers(0, size - 1), label="cut")
    with copy_of(trained_smoke) as ckpt:
        raw = (ckpt / WEIGHTS).read_bytes()
        (ckpt / WEIGHTS).write_bytes(raw[:cut])
        refused(lambda: open_checkpoint(ckpt), str(ckpt / WEIGHTS), "truncated or corrupt")


def test_checkpoint_with_other_valid_weights_is_refused_as_replaced(trained_smoke: Path) -> None:
    """A well-formed model.safetensors holding other values (one weight nudged, saved properly): refused as
    "replaced?", by `open_checkpoint` and by `load_model`. Breaks caught: the sha256 comparison skipped (such a file
    loads and is scored as if it were the trained model); `_why_mismatch` calling a readable file "truncated"."""
    from safetensors.torch import load_file, save_file

    from fbcompress.modeling.checkpoint import load_model, open_checkpoint

    with copy_of(trained_smoke) as ckpt:
        state = load_file(str(ckpt / WEIGHTS))
        name = sorted(state)[0]
        state[name] = state[name].clone()
        state[name].view(-1)[0] += 1.0
        save_file(state, str(ckpt / WEIGHTS), metadata={"format": "pt"})
        refused(lambda: open_checkpoint(ckpt), str(ckpt / WEIGHTS), "replaced?")
        refused(lambda: load_model(ckpt), str(ckpt / WEIGHTS))


@settings(**FUZZ)
@given(digest=st.text("0123456789abcdef", min_size=64, max_size=64) | st.text(min_size=1, max_size=70))
def test_checkpoint_whose_recorded_sha256_was_edited_is_refused(trained_smoke: Path, digest: str) -> None:
    """fbcompress.json's sha256 of model.safetensors replaced by another digest (or any other text): refused.
    Break caught: the sha256 comparison in `open_checkpoint` skipped (or comparing the recorded value with itself)."""
    from fbcompress.modeling.checkpoint import open_checkpoint

    real = json.loads((trained_smoke / META).read_text())["sha256"][WEIGHTS]
    if digest == real:
        return
    with copy_of(trained_smoke) as ckpt:
        meta = json.loads((ckpt / META).read_text())
        meta["sha256"][WEIGHTS] = digest
        (ckpt / META).write_text(json.dumps(meta))
        refused(lambda: open_checkpoint(ckpt), str(ckpt / WEIGHTS))


@pytest.mark.parametrize("edit", ["drop-entry", "empty", "null", "drop-sha256"])
def test_checkpoint_without_a_recorded_sha256_is_refused(trained_smoke: Path, edit: str) -> None:
    """No sha256 for the weights in fbcompress.json (entry removed, empty, null, the whole map removed): refused
    as recording none, never loaded unchecked. Break caught: the `if not expected` refusal dropped (then the weights
    are compared against None/"" and the message blames the weights file instead of the meta)."""
    from fbcompress.modeling.checkpoint import open_checkpoint

    with copy_of(trained_smoke) as ckpt:
        meta = json.loads((ckpt / META).read_text())
        if edit == "drop-entry":
            del meta["sha256"][WEIGHTS]
        elif edit == "drop-sha256":
            del meta["sha256"]
        else:
            meta["sha256"][WEIGHTS] = "" if edit == "empty" else None
        (ckpt / META).write_text(json.dumps(meta))
        refused(lambda: open_checkpoint(ckpt), str(ckpt / META), "records no sha256")


def test_cli_eval_refuses_a_checkpoint_with_flipped_weights(trained_smoke: Path, tiny_data: Path) -> None:
    """Through the CLI: `fbcompress eval` on a checkpoint whose weights changed after saving exits 2 with one
    `error:` line naming the file, instead of scoring it. Break caught: the sha256 comparison skipped."""
    with copy_of(trained_smoke) as ckpt:
        size = (ckpt / WEIGHTS).stat().st_size
        flip(ckpt / WEIGHTS, size - 5, 0x40)  # inside the last tensor's data: still a readable file
        assert_one_line_error(run("eval", "--model", ckpt, "--data", tiny_data, "--max-queries", 1),
                              str(ckpt / WEIGHTS))


@pytest.fixture(scope="module")
def interrupted_smoke(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke teacher stopped after 3 of its 6 steps: a checkpoint with a training_state.pt to resume from."""
    out = tmp_path_factory.mktemp("strength") / "teacher"
    result = run("train-teacher", "-r", "smoke", "--data", tiny_data, "--out", out, "--stop-after", 3)
    assert result.exit_code == 0, result.output
    assert (out / "training_state.pt").is_file()
    return out


@settings(**{**FUZZ, "max_examples": 10})
@given(data=st.data())
def test_tampered_training_state_is_refused(interrupted_smoke: Path, data: st.DataObject) -> None:
    """training_state.pt (optimizer, scheduler, step) with one byte flipped: `load_training_state` refuses, naming
    it. Break caught: its sha256 comparison skipped (torch.load then resumes from a corrupted optimizer state, or
    fails with a non-FbError)."""
    from fbcompress.modeling.checkpoint import load_training_state

    state = interrupted_smoke / "training_state.pt"
    offset = data.draw(offsets(state.stat().st_size), label="offset")
    mask = data.draw(MASKS, label="mask")
    with copy_of(interrupted_smoke) as ckpt:
        flip(ckpt / "training_state.pt", offset, mask)
        refused(lambda: load_training_state(ckpt), str(ckpt / "training_state.pt"))


def test_resume_refuses_a_tampered_training_state(interrupted_smoke: Path, tiny_data: Path) -> None:
    """Through the CLI: `train-teacher --resume` from a checkpoint whose training state changed exits 2, one
    line. Break caught: the sha256 comparison in `load_training_state` skipped."""
    with copy_of(interrupted_smoke) as ckpt:
        path = ckpt / "training_state.pt"
        flip(path, path.stat().st_size // 2, 0x01)
        result = run("train-teacher", "-r", "smoke", "--data", tiny_data, "--out", ckpt, "--resume")
        assert_one_line_error(result, str(path))


# ---------------------------------------------------------------------------------------------------------- bundles


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def bundle_files(bundle: Path) -> list[str]:
    return sorted(manifest_of(bundle)["files"])


def tokenizer_files(bundle: Path) -> list[str]:
    return [rel for rel, entry in sorted(manifest_of(bundle)["files"].items()) if entry.get("role") == "tokenizer"]


def test_bundle_under_test_is_sound(smoke_bundle: Path) -> None:
    """The undamaged copy loads every way the tests below expect to be refused (else they would prove nothing)."""
    from fbcompress.bundle.store import Bundle, verify_bundle_file
    from fbcompress.quantize.pipeline import resolve_source
    from fbcompress.runtime.scoring import open_scorer

    with copy_of(smoke_bundle) as root:
        assert Bundle.open(root).verify_all() == bundle_files(smoke_bundle)
        assert verify_bundle_file(root / "model.onnx")[1] == "model.onnx"
        assert open_scorer(root / "model.onnx").backend == "onnxruntime-cpu"
        assert resolve_source(root / "model.onnx")[1] == "model.onnx"
        assert "model.ort.onnx" in bundle_files(smoke_bundle) and tokenizer_files(smoke_bundle)


@settings(**FUZZ)
@given(data=st.data())
def test_bundle_model_with_any_byte_flipped_is_refused(smoke_bundle: Path, data: st.DataObject) -> None:
    """One byte of model.onnx or model.ort.onnx XOR-ed: `verify_bundle_file`, `Bundle.verify_all`, `open_scorer`
    (the file, and the bundle dir for model.onnx) and quantize's `resolve_source` all refuse, naming the file and
    the sha256 mismatch. Break caught: the sha256 comparison in `Bundle.verify` skipped - a flip in an initializer
    then loads and serves other weights than were measured."""
    from fbcompress.bundle.store import Bundle, verify_bundle_file
    from fbcompress.quantize.pipeline import resolve_source
    from fbcompress.runtime.scoring import open_scorer

    rel = data.draw(st.sampled_from(["model.onnx", "model.ort.onnx"]), label="file")
    offset = data.draw(offsets((smoke_bundle / rel).stat().st_size), label="offset")
    mask = data.draw(MASKS, label="mask")
    with copy_of(smoke_bundle) as root:
        path = root / rel
        flip(path, offset, mask)
        refused(lambda: verify_bundle_file(path), str(path), "sha256")
        refused(lambda: Bundle.open(root).verify_all(), str(path), "sha256")
        refused(lambda: open_scorer(path), str(path), "sha256")
        if rel == "model.onnx":
            refused(lambda: open_scorer(root), str(path), "sha256")
            refused(lambda: resolve_source(path), str(path), "sha256")


@settings(**FUZZ)
@given(data=st.data())
def test_bundle_tokenizer_with_any_byte_flipped_is_refused(smoke_bundle: Path, data: st.DataObject) -> None:
    """One byte of a tokenizer file (vocab, tokenizer.json, config) XOR-ed: opening a model of the bundle refuses,
    the tokenizer check refuses. Breaks caught: `OrtScorer.open` not calling `verify_tokenizer` (a model served with a
    different vocabulary); `verify_tokenizer` not verifying each file; the sha256 comparison in `Bundle.verify`."""
    from fbcompress.bundle.store import Bundle
    from fbcompress.runtime.scoring import open_scorer

    rel = data.draw(st.sampled_from(tokenizer_files(smoke_bundle)), label="file")
    offset = data.draw(offsets((smoke_bundle / rel).stat().st_size), label="offset")
    mask = data.draw(MASKS, label="mask")
    with copy_of(smoke_bundle) as root:
        path = root / rel
        flip(path, offset, mask)
        refused(lambda: Bundle.open(root).verify_tokenizer(), str(path), "sha256")
        refused(lambda: open_scorer(root / "model.onnx"), str(path), "sha256")
        refused(lambda: open_scorer(root / "model.ort.onnx"), str(path), "sha256")


def test_quantize_refuses_a_bundle_whose_tokenizer_changed(smoke_bundle: Path, tiny_data: Path) -> None:
    """`fbcompress quantize` from a bundle whose vocab.txt changed after export: exit 2, one line, nothing
    written, and refused before any work. Break caught: quantize's up-front `bundle.verify_tokenizer()` dropped: it
    then calibrates and scores the FP32 and INT8 files with the changed vocabulary (seconds to minutes of work on
    the wrong tokens) and only the bundle update's carried-file check refuses at the very end."""
    with copy_of(smoke_bundle) as root:
        vocab = root / "tokenizer" / "vocab.txt"
        assert "tokenizer/vocab.txt" in tokenizer_files(smoke_bundle)
        vocab.write_bytes(vocab.read_bytes().replace(b"[MASK]", b"[MASQ]", 1))
        before = sorted(p.name for p in root.iterdir())
        result = run("quantize", "--model", root / "model.onnx", "--data", tiny_data, "--out", root,
                     "--set", "quantize.cpu_file=static")
        assert_one_line_error(result, str(vocab), "sha256")
        assert "calibrat" not in result.output and "scoring" not in result.output, result.output
        assert sorted(p.name for p in root.iterdir()) == before


@settings(**FUZZ)
@given(data=st.data())
def test_manifest_whose_sha256_was_edited_is_refused(smoke_bundle: Path, data: st.DataObject) -> None:
    """manifest.json's sha256 of any listed file replaced by another digest: `verify` of that file refuses, and so
    does `verify_all`. Break caught: the sha256 comparison in `Bundle.verify` skipped."""
    from fbcompress.bundle.store import Bundle

    rel = data.draw(st.sampled_from(bundle_files(smoke_bundle)), label="file")
    digest = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64) | st.sampled_from(["", "0" * 64]),
                       label="digest")
    with copy_of(smoke_bundle) as root:
        manifest = manifest_of(root)
        if manifest["files"][rel]["sha256"] == digest:
            return
        manifest["files"][rel]["sha256"] = digest
        (root / "manifest.json").write_text(json.dumps(manifest))
        refused(lambda: Bundle.open(root).verify(rel), str(root / rel), "sha256")
        refused(lambda: Bundle.open(root).verify_all(), "sha256")


@settings(**FUZZ)
@given(data=st.data())
def test_manifest_cut_short_is_refused(smoke_bundle: Path, data: st.DataObject) -> None:
    """manifest.json cut anywhere before its closing brace (never valid JSON): `Bundle.open`, `verify_bundle_file`
    and `open_scorer` refuse, naming the manifest. Break caught: `json.JSONDecodeError` dropped from `Bundle.open`'s
    `except` (a raw JSONDecodeError escapes instead of one line)."""
    from fbcompress.bundle.store import Bundle, verify_bundle_file
    from fbcompress.runtime.scoring import open_scorer

    real = (smoke_bundle / "manifest.json").read_bytes()
    cut = data.draw(st.integers(0, real.rstrip().rindex(b"}") - 1), label="cut")
    with copy_of(smoke_bundle) as root:
        (root / "manifest.json").write_bytes(real[:cut])
        manifest = str(root / "manifest.json")
        refused(lambda: Bundle.open(root), manifest)
        refused(lambda: verify_bundle_file(root / "model.onnx"), manifest)
        refused(lambda: open_scorer(root / "model.onnx"), manifest)


def test_a_model_file_the_manifest_does_not_list_is_refused(smoke_bundle: Path) -> None:
    """An .onnx dropped into a bundle after export (listed nowhere in manifest.json) is refused, not served with
    the bundle's preprocessing. Breaks caught: `Bundle.verify` accepting an unlisted file (its `entry is None`
    refusal dropped); `find_bundle` skipping a manifest beside the file that does not list it."""
    from fbcompress.bundle.store import verify_bundle_file
    from fbcompress.runtime.scoring import open_scorer

    with copy_of(smoke_bundle) as root:
        extra = root / "model.extra.onnx"
        shutil.copyfile(root / "model.onnx", extra)
        refused(lambda: verify_bundle_file(extra), str(extra), "not listed")
        refused(lambda: open_scorer(extra), str(extra), "not listed")


def test_a_listed_file_that_is_missing_is_refused(smoke_bundle: Path) -> None:
    """A file the manifest lists but that is gone: `verify_all` refuses naming it. Break caught: `Bundle.verify`'s
    is_file check dropped (a raw FileNotFoundError from hashing escapes instead of one line)."""
    from fbcompress.bundle.store import Bundle

    with copy_of(smoke_bundle) as root:
        (root / "model.ort.onnx").unlink()
        refused(lambda: Bundle.open(root).verify_all(), str(root / "model.ort.onnx"), "missing")


@settings(**{**FUZZ, "max_examples": 10})
@given(data=st.data())
def test_bundle_update_refuses_a_carried_file_changed_after_export(smoke_bundle: Path, data: st.DataObject) -> None:
    """A later stage (quantize, tensorrt) updating a bundle whose model.onnx changed after export: `finalize`
    refuses and the bundle is left exactly as it was; `has_verified` says the carried file cannot be reused. Breaks
    caught: `BundleWriter.finalize` re-hashing carried files without comparing them with the recorded sha256 (the
    changed file would be re-recorded as genuine); `has_verified` not comparing hashes."""
    from fbcompress.bundle.store import update_bundle
    from fbcompress.export.readme import render_readme

    offset = data.draw(offsets((smoke_bundle / "model.onnx").stat().st_size), label="offset")
    with copy_of(smoke_bundle) as root:
        flip(root / "model.onnx", offset, 0x10)
        before = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        source = manifest_of(root)["source"]
        reused: list[bool] = []

        def update() -> None:
            with update_bundle(root, source=source) as writer:
                reused.append(writer.has_verified("model.onnx"))
                writer.finalize(render_readme)

        refused(update, str(root / "model.onnx"), "sha256")
        assert reused == [False]
        after = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert after == before, "a refused update changed the bundle"


def test_cli_eval_refuses_a_bundle_model_with_a_flipped_byte(smoke_bundle: Path, tiny_data: Path) -> None:
    """Through the CLI: `fbcompress eval` on a bundle's model.onnx changed after export exits 2 with one `error:`
    line. Break caught: the sha256 comparison in `Bundle.verify` skipped."""
    with copy_of(smoke_bundle) as root:
        path = root / "model.onnx"
        flip(path, path.stat().st_size - 3, 0x08)
        assert_one_line_error(run("eval", "--model", path, "--data", tiny_data, "--max-queries", 1), str(path),
                              "sha256")
