"""The export bundle `exported/NAME/`: model files + tokenizer + `manifest.json` + `README.md`.

Why it looks the way it does:

* Several stages write into one bundle (export onnx/tensorrt/triton, quantize), so the manifest lists every model
  file under `models` with its role, precision and measurements, and every file at all under `files` with its
  sha256. A stage updates the bundle through `BundleWriter`, which carries the other stages' files over untouched.
* Updates are atomic: the new bundle is assembled in a temporary sibling directory (other stages' files are
  hard-linked, not copied, so big engines cost nothing) and renamed into place, so a failed or interrupted export
  leaves the previous bundle exactly as it was. A lock file serialises concurrent writers of the same bundle.
* Files carried over must still match the hashes recorded for them; a bundle from another checkpoint is not mixed
  with a new export unless `--force` replaces it whole.
* Loading any bundle file (`verify_bundle_file`) checks its hash against the manifest and refuses a tampered or
  corrupted file with one line, so a serving team never silently runs something other than what was measured.

How another stage adds a file (e.g. `fbcompress quantize`)::

    with update_bundle(out, source={"weights_sha256": ..., ...}) as writer:
        if "patch_spec" not in writer.manifest:       # first stage to touch this bundle
            pipeline.describe_bundle(writer, ckpt_dir, spec, max_positions, profiles, settings, "recipe R")
        path = writer.path("model.int8.onnx", ROLE_ONNX_INT8)   # a fresh file, never a carried-over link
        ...write path...
        writer.add_model("model.int8.onnx", {"role": ROLE_ONNX_INT8, "format": "onnx", "precision": "int8", ...})
        writer.finalize(readme.render_readme)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fbcompress import __version__
from fbcompress.bundle.manifest import FORMAT, FORMAT_VERSION, BundleManifest, parse_manifest, parse_patch_spec
from fbcompress.bundle.names import IMAGE_ENCODER_FILE, MANIFEST, README, SEARCH_SUBDIR, TOKENIZER_DIR
from fbcompress.core.artifacts import atomic_dir, atomic_write_bytes, sha256_file
from fbcompress.core.errors import FbError
from fbcompress.modeling.model import PatchSpec

LOCK_SUFFIX = ".lock"
# Folders where a runtime keeps its own cache inside a bundle (ONNX Runtime's TensorRT provider writes engines and
# its timing cache there, and rewrites them). Not artifacts: carried over as they are, never hashed or listed, so a
# rewritten cache never fails the bundle's sha256 check.
ORT_TRT_CACHE_DIR = "ort-trt-cache"
RUNTIME_CACHE_DIRS = (ORT_TRT_CACHE_DIR,)


def is_runtime_cache(rel: str) -> bool:
    return rel.split("/", 1)[0] in RUNTIME_CACHE_DIRS


def is_nested_bundle(rel: str) -> bool:
    """Inside `search/` of a scorer bundle lies the search bundle, a bundle of its own (its manifest lists and hashes
    its files): carried over untouched, never listed in the outer manifest, so each can be updated alone."""
    return rel.split("/", 1)[0] == SEARCH_SUBDIR and "/" in rel

# Roles of bundle files. Other stages may add their own; these are the ones export writes or knows.
ROLE_ONNX = "onnx"  # portable fp32 graph, standard ONNX ops only: ORT, TensorRT, quantization all start here
ROLE_ONNX_ORT = "onnx-ort-optimized"  # ORT transformer fusions (com.microsoft ops): what ONNX Runtime serves
ROLE_ONNX_FP16 = "onnx-fp16"  # mixed precision graph, the TensorRT fp16 engine's source
ROLE_ONNX_INT8 = "onnx-int8"  # ORT-quantized graph from `fbcompress quantize` (CPU / ONNX Runtime)
ROLE_ONNX_INT8_QDQ = "onnx-int8-qdq"  # QDQ graph from `fbcompress quantize`, the TensorRT int8 engine's source
ROLE_IMAGE_ENCODER = "onnx-image-encoder"  # images -> patch features (export/image_encoder_export.py)
ROLE_ENGINE = "tensorrt-engine"
ROLE_TIMING_CACHE = "tensorrt-timing-cache"
ROLE_BUILD_LOG = "tensorrt-build-log"
ROLE_TOKENIZER = "tokenizer"
ROLE_TRITON = "triton"
ROLE_README = "readme"
ROLE_EXTRA = "extra"

MODEL_SUFFIXES = (".onnx", ".plan")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def preprocessing(spec: PatchSpec) -> dict[str, Any]:
    """Exactly what `fbcompress.data.patches` and the tokenizer do, stated for a serving team."""
    from fbcompress.data.patches import PIXEL_MEAN, PIXEL_STD

    patch = spec.image_size // spec.grid if spec.grid else 0
    image: dict[str, Any] = {
        "patch_encoder": spec.patch_encoder,
        "num_patches": spec.num_patches,
        "patch_dim": spec.patch_dim,
    }
    if spec.patch_encoder == "pixels":
        image.update({
            "image_size": spec.image_size,
            "channels": "RGB",
            "resize": f"none: images must already be {spec.image_size}x{spec.image_size} px (no crop, no resize)",
            "grid": spec.grid,
            "patch_size": patch,
            "scale": "x / 255",
            "normalize": {"mean": PIXEL_MEAN, "std": PIXEL_STD, "formula": "(x / 255 - 0.5) / 0.5, in [-1, 1]"},
            "patch_order": f"row-major over the {spec.grid}x{spec.grid} grid: patch r*{spec.grid}+c covers pixel rows "
                           f"r*{patch}..(r+1)*{patch}-1 and columns c*{patch}..(c+1)*{patch}-1",
            "patch_flatten": f"each patch flattened in (row, column, channel) order: {patch}*{patch}*3 = "
                             f"{patch * patch * 3} values",
            "numpy": f"img.reshape({spec.grid}, {patch}, {spec.grid}, {patch}, 3).transpose(0, 2, 1, 3, 4)"
                     f".reshape({spec.num_patches}, {patch * patch * 3})",
        })
    else:
        made = (f"the output of {IMAGE_ENCODER_FILE} (preprocessing.image_encoder), computed offline per catalogue "
                "image" if spec.feature_encoder else "precomputed, as in training")
        image.update({"features": f"{spec.num_patches} x {spec.patch_dim} float32 per image: {made}"})
    return {
        "image": image,
        "text": {
            "tokenizer": f"BERT WordPiece ({TOKENIZER_DIR}/vocab.txt, tokenizer.json)",
            "format": "[CLS] text [SEP]",
            "max_text_len": spec.max_text_len,
            "truncation": f"truncate to {spec.max_text_len} wordpieces, [CLS]/[SEP] included",
            "padding": "right-pad with [PAD] (id 0) to the longest text of the batch only (no global maximum)",
            "token_type_ids": 0,
        },
        "output": {"score": "softmax(logits, axis=1)[:, 1] = probability that text and image match"},
    }


# ---------------------------------------------------------------------------------------------------------- reading


class Bundle:
    """A bundle on disk, read-only: its manifest and hash checks."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest  # as written: stages that update the bundle carry every key, typed or not
        self.typed: BundleManifest = parse_manifest(manifest, str(root / MANIFEST))

    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FbError(f"{root} is not an fbcompress export bundle (no {MANIFEST})")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FbError(f"{path} is not valid JSON: {exc}") from None
        return cls(root, manifest)

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    @property
    def models(self) -> dict[str, dict]:
        return self.manifest.get("models", {})

    @property
    def spec(self) -> PatchSpec:
        return parse_patch_spec(self.manifest, str(self.root / MANIFEST))

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    def verify(self, rel: str) -> Path:
        """The file's path, after checking it exists and matches its recorded sha256."""
        path = self.root / rel
        entry = self.files.get(rel)
        if entry is None:
            raise FbError(f"{path} is not listed in {self.root / MANIFEST}: not part of this export bundle")
        if not path.is_file():
            raise FbError(f"{path} is missing from the bundle ({MANIFEST} lists it)")
        if sha256_file(path) != entry.get("sha256"):
            raise FbError(f"{path} does not match its sha256 in {MANIFEST} (modified or corrupted after export): "
                          "refusing to load it; re-export the bundle")
        return path

    def verify_tokenizer(self) -> Path:
        rels = [rel for rel, entry in self.files.items() if entry.get("role") == ROLE_TOKENIZER]
        if not rels:
            raise FbError(f"bundle {self.root} has no tokenizer files")
        for rel in rels:
            self.verify(rel)
        return self.tokenizer_dir

    def verify_all(self) -> list[str]:
        for rel in self.files:
            self.verify(rel)
        return sorted(self.files)

    def primary_model(self) -> str:
        """The file `--model exported/NAME` means: the portable ONNX if present, else the first model listed."""
        for rel, entry in self.models.items():
            if entry.get("role") == ROLE_ONNX:
                return rel
        if self.models:
            return next(iter(self.models))
        raise FbError(f"bundle {self.root} holds no model file")


def find_bundle(path: str | Path, max_up: int = 4) -> tuple[Bundle, str] | None:
    """The bundle that lists `path` (searching up to `max_up` parent dirs, for triton/<m>/1/model.onnx), if any."""
    path = Path(path).resolve()
    directory = path.parent
    for _ in range(max_up + 1):
        if (directory / MANIFEST).is_file():
            try:
                bundle = Bundle.open(directory)
            except FbError:
                if directory == path.parent:
                    raise
                bundle = None  # some other project's manifest.json further up: not ours, keep looking
            rel = path.relative_to(directory).as_posix()
            if bundle is not None and (rel in bundle.files or directory == path.parent):
                return bundle, rel  # a manifest beside the file that does not list it: verify() says so
        if directory.parent == directory:
            break
        directory = directory.parent
    return None


def verify_bundle_file(path: str | Path) -> tuple[Bundle, str]:
    """Find the bundle a model file belongs to and check the file's hash; one clear line when anything is off."""
    path = Path(path)
    if not path.is_file():
        raise FbError(f"model not found: {path}")
    found = find_bundle(path)
    if found is None:
        raise FbError(f"{path} has no {MANIFEST} beside it: not part of an fbcompress export bundle (the manifest "
                      "carries its preprocessing, tokenizer and hashes; export it with `fbcompress export`)")
    bundle, rel = found
    bundle.verify(rel)
    return bundle, rel


# ---------------------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive advisory lock beside the bundle so two stages never swap it at the same time."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.parent / f".{root.name}{LOCK_SUFFIX}"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class BundleWriter:
    """Stages one update of a bundle. Write new files only through `path()` (never into a carried-over file:
    carried files are hard links to the live bundle) and describe models with `add_model()`."""

    def __init__(self, root: Path, stage_dir: Path, old: Bundle | None, source: dict):
        self.root = root
        self.dir = stage_dir
        self.old = old
        self.source = source
        old_manifest = old.manifest if old else {}
        self.manifest: dict[str, Any] = {
            key: value for key, value in old_manifest.items() if key not in ("files",)
        }
        self.manifest.setdefault("models", {})
        self.manifest.setdefault("history", [])
        self._roles: dict[str, str] = {}
        self._carried: set[str] = set()

    # -- staging
    def carry_over(self) -> None:
        if self.old is None:
            return
        for path in sorted(self.old.root.rglob("*")):
            if path.is_dir() or (path.name == MANIFEST and path.parent == self.old.root):
                continue
            rel = path.relative_to(self.old.root).as_posix()
            if is_runtime_cache(rel):  # a copy: the runtime rewrites its cache files in place
                (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, self.dir / rel)
                continue
            link_or_copy(path, self.dir / rel)
            if not is_nested_bundle(rel):
                self._carried.add(rel)

    def path(self, rel: str, role: str | None = None) -> Path:
        """A fresh path to write `rel` to (any carried-over file there is unlinked first, never overwritten)."""
        target = self.dir / rel
        if target.is_symlink() or target.exists():
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        self._carried.discard(rel)
        if role:
            self._roles[rel] = role
        return target

    def replace_tree(self, rel_dir: str, role: str) -> Path:
        """Drop a carried-over subtree (e.g. `triton/`) so it can be written anew."""
        target = self.dir / rel_dir
        if target.exists():
            shutil.rmtree(target)
        prefix = rel_dir.rstrip("/") + "/"
        self._carried = {rel for rel in self._carried if not rel.startswith(prefix)}
        for rel in [rel for rel in self.manifest["models"] if rel.startswith(prefix)]:
            del self.manifest["models"][rel]
        target.mkdir(parents=True)
        self._roles[prefix] = role
        return target

    def remove(self, rel: str) -> bool:
        """Drop a staged or carried-over file and its manifest entry (a file this update makes stale); returns
        whether there was one."""
        target = self.dir / rel
        found = target.is_file() or target.is_symlink()
        if found:
            target.unlink()
        self._carried.discard(rel)
        self._roles.pop(rel, None)
        self.manifest["models"].pop(rel, None)
        return found

    def set_role(self, rel: str, role: str) -> None:
        self._roles[rel] = role

    def add_model(self, rel: str, entry: dict) -> None:
        """Describe a model file (role, format, precision, measurements) in `manifest.models`."""
        self.manifest["models"][rel] = {**entry, "updated_at": now_iso()}
        self._roles.setdefault(rel, str(entry.get("role", ROLE_EXTRA)))

    def has_verified(self, rel: str) -> bool:
        """Whether a carried-over `rel` exists and still matches its recorded hash (so it may be reused)."""
        if self.old is None or rel not in self._carried:
            return False
        entry = self.old.files.get(rel)
        return entry is not None and sha256_file(self.dir / rel) == entry.get("sha256")

    # -- commit
    def _role_of(self, rel: str) -> str:
        if rel in self._roles:
            return self._roles[rel]
        for prefix, role in self._roles.items():
            if prefix.endswith("/") and rel.startswith(prefix):
                return role
        if rel.endswith(".data") and rel[: -len(".data")] in self._roles:  # weights of a >2 GiB ONNX file
            return f"{self._roles[rel[: -len('.data')]]}-external-data"
        if self.old is not None and rel in self.old.files:
            return str(self.old.files[rel].get("role", ROLE_EXTRA))
        return ROLE_EXTRA

    def finalize(self, render_readme: Callable[[dict], str] | None = None) -> None:
        """Hash every staged file, write manifest.json (and README.md rendered from the manifest) into the stage."""
        self.manifest.update({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fbcompress_version": __version__,
            "updated_at": now_iso(),
            "source": self.source,
        })
        if render_readme is not None:
            self.path(README, ROLE_README).write_text(render_readme(self.manifest))
        files: dict[str, dict] = {}
        for path in sorted(self.dir.rglob("*")):
            if path.is_dir() or (path.name == MANIFEST and path.parent == self.dir):
                continue
            rel = path.relative_to(self.dir).as_posix()
            if is_runtime_cache(rel) or is_nested_bundle(rel):
                continue
            digest = sha256_file(path)
            recorded = self.old.files.get(rel) if (self.old is not None and rel in self._carried) else None
            if recorded is not None and digest != recorded.get("sha256"):
                raise FbError(f"{self.root / rel} no longer matches its sha256 in {MANIFEST} (modified after it "
                              "was written): remove it or re-run the stage that made it, then export again")
            files[rel] = {"sha256": digest, "bytes": path.stat().st_size, "role": self._role_of(rel)}
        # Models whose file is gone (removed by hand, or replaced by a subtree rewrite) leave the manifest too.
        self.manifest["models"] = {rel: e for rel, e in self.manifest["models"].items() if rel in files}
        self.manifest["files"] = files
        _make_readable(self.dir)
        atomic_write_bytes(self.dir / MANIFEST, (json.dumps(self.manifest, indent=2) + "\n").encode())
        _make_readable(self.dir / MANIFEST)


def _make_readable(path: Path) -> None:
    """Temp dirs/files are created private (0700/0600); a serving bundle should be readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def update_bundle(root: str | Path, source: dict, replace: bool = False) -> Iterator[BundleWriter]:
    """Open `root` for an atomic update. The caller fills the writer, then calls `writer.finalize(readme)`.

    `source` identifies the checkpoint (its weights sha256); an existing bundle from another checkpoint is
    refused unless `replace`, because its other files (quantized models, engines) would no longer match.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FbError(f"--out {root} exists and is not a directory")
    with _locked(root):
        old: Bundle | None = None
        if root.is_dir() and any(root.iterdir()):
            if not (root / MANIFEST).is_file():
                raise FbError(f"--out {root} exists and is not an export bundle (no {MANIFEST}); "
                              "pick another folder or remove it")
            old = Bundle.open(root)
            if "patch_spec" in old.manifest:  # refused here, naming the bundle, rather than while writing README.md
                parse_patch_spec(old.manifest, str(root / MANIFEST))
            old_sha = old.manifest.get("source", {}).get("weights_sha256")
            if old_sha and old_sha != source.get("weights_sha256") and not replace:
                old_sha = str(old_sha)  # a hand-edited manifest may hold any JSON value here
                raise FbError(f"bundle {root} was exported from another checkpoint (weights sha256 {old_sha[:12]}..., "
                              f"now {str(source.get('weights_sha256'))[:12]}...): pass --force to replace it whole")
            if replace:
                old = None
        with atomic_dir(root) as stage:
            writer = BundleWriter(root, stage, old, source)
            writer.carry_over()
            yield writer
            if not (stage / MANIFEST).is_file():
                raise RuntimeError("BundleWriter.finalize() was not called")
