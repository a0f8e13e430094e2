"""`fbcompress data features`: add per-patch image features to a dataset dir (the store: `store.py`).

Every record of the three manifests, in manifest order, gets one [grid*grid, D] row; rows are grouped in shards of
`shard_rows` records. The work is resumable and rank-sharded: shards are written one by one (to a temporary name,
then renamed) into a work folder beside the store, and a run that finds the work of an interrupted run with the same
inputs keeps its complete shards. Under `torchrun` rank r computes the shards k with k % world == r, and rank 0,
once all are done, writes the index, renames the work folder into place and rewrites the manifests and dataset.json
(each to a temporary name, then renamed; dataset.json last). The features of another encoder, if any, are removed
after that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fbcompress.core import distributed
from fbcompress.core.artifacts import atomic_file, atomic_write_bytes, atomic_write_json, open_work_dir, sha256_file
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import SPLITS, DatasetDir, fingerprint
from fbcompress.data.features.store import FEATURES_DIR, INDEX_FILE, INDEX_FORMAT, features_meta
from fbcompress.data.patches import open_rgb
from fbcompress.modeling.image_encoder import ImageEncoder, encode_batch, load_image_encoder

SHARD_ROWS = 1024
WORK_VERSION = 1


@dataclass
class FeatureOptions:
    data: Path
    encoder: Path
    grid: int = 8
    mode: str = "grid"
    crop_size: int = 224
    batch_size: int = 32
    shard_rows: int = SHARD_ROWS
    device: str | None = None
    progress: bool = False
    log: Callable[[str], None] | None = None


@dataclass
class FeatureSummary:
    data: Path
    tag: str
    images: int
    computed: int  # images encoded by this process in this run (the rest: resumed, or other ranks')
    resumed_shards: int
    seconds: float
    store_bytes: int

    def line(self) -> str:
        rate = f", {self.computed / self.seconds:.1f} images/s" if self.computed and self.seconds > 0 else ""
        resumed = f"; {self.resumed_shards} shard(s) kept from an interrupted run" if self.resumed_shards else ""
        return (f"features {self.tag} for {self.images} images in {self.data / FEATURES_DIR / self.tag} "
                f"({self.store_bytes / 2**20:.1f} MiB){resumed}; encoded {self.computed} in {self.seconds:.1f} s{rate}")


def make_features(opts: FeatureOptions) -> FeatureSummary:
    """Run `data features` (see the module doc); one-line FbError on bad input, nothing half-written."""
    if opts.batch_size < 1:
        raise FbError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.shard_rows < 1:
        raise FbError(f"shard_rows must be at least 1, got {opts.shard_rows}")
    dataset = DatasetDir.open(opts.data)
    records = [r for split in SPLITS for r in dataset.records(split)]
    encoder = load_image_encoder(opts.encoder, opts.grid, opts.mode, opts.crop_size)
    tag = store_tag(encoder)
    store = dataset.root / FEATURES_DIR
    work = store / f".{tag}.work"
    if _already_made(dataset, tag):
        if opts.log:
            opts.log(f"{dataset.root} already has the features of this encoder ({tag}): nothing to do")
        return FeatureSummary(dataset.root, tag, len(records), 0, 0, 0.0, _store_bytes(store / tag))
    ctx = distributed.setup(opts.device)
    started = time.perf_counter()
    try:
        encoder.to(ctx.device)
        shards = [records[i:i + opts.shard_rows] for i in range(0, len(records), opts.shard_rows)]
        state = _work_state(encoder, records, opts.shard_rows)
        if ctx.is_main:
            resumed = _open_work(work, state, opts.log)
        distributed.barrier(ctx)
        if not ctx.is_main:
            resumed = _complete(work, len(shards))
        mine = [k for k in range(len(shards)) if k % ctx.world_size == ctx.rank and not _shard_path(work, k).is_file()]
        computed = _encode_shards(encoder, dataset.root, shards, mine, work, opts, ctx)
        distributed.barrier(ctx)
        if ctx.is_main:
            _finish(dataset, records, encoder, Path(opts.encoder), tag, work, len(shards), opts.shard_rows, opts.log)
        distributed.barrier(ctx)
    finally:
        distributed.teardown(ctx)
    seconds = time.perf_counter() - started
    return FeatureSummary(dataset.root, tag, len(records), computed, resumed, seconds, _store_bytes(store / tag))


def _already_made(dataset: DatasetDir, tag: str) -> bool:
    """Whether dataset.json names this encoder's store and its index is intact (a finished earlier run)."""
    entry = features_meta(dataset.meta)
    index = dataset.root / FEATURES_DIR / tag / INDEX_FILE
    return entry is not None and entry.get("tag") == tag and index.is_file() and \
        sha256_file(index) == entry.get("index_sha256")


def _store_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.npy")) if folder.is_dir() else 0


def store_tag(encoder: ImageEncoder) -> str:
    """The store folder's name: the encoder's directory name, the mode and 12 hex digits of its sha256."""
    identity = encoder.identity
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", identity.name).strip("-.") or "encoder"
    return f"{name[:60]}-{identity.mode}-{identity.sha256[:12]}"


def _work_state(encoder: ImageEncoder, records: list[dict], shard_rows: int) -> dict:
    """What a resumed run must share with the interrupted one for its shards to be reusable."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record['id']}\t{record['image']}\n".encode())
    return {"version": WORK_VERSION, "encoder": encoder.identity.to_dict(), "records": digest.hexdigest(),
            "shard_rows": shard_rows}


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard-{index:06d}.npy"


def _complete(work: Path, count: int) -> int:
    return sum(_shard_path(work, k).is_file() for k in range(count))


def _open_work(work: Path, state: dict, log: Callable[[str], None] | None) -> int:
    """Make the work folder, or reuse an interrupted run's; returns how many complete shards it holds."""
    if not open_work_dir(work, state, log):
        return 0
    done = len(list(work.glob("shard-*.npy")))
    if log and done:
        log(f"resuming: {done} shard(s) already encoded in {work}")
    return done


def _encode_shards(encoder: ImageEncoder, root: Path, shards: list[list[dict]], mine: list[int], work: Path,
                   opts: FeatureOptions, ctx: distributed.RunContext) -> int:
    total = sum(len(shards[k]) for k in mine)
    with tqdm(total=total, unit="img", desc=f"features ({opts.mode})", disable=not (opts.progress and ctx.is_main),
              mininterval=1.0) as bar:
        for k in mine:
            rows = []
            for start in range(0, len(shards[k]), opts.batch_size):
                batch = shards[k][start:start + opts.batch_size]
                prepared = [encoder.prepare(open_rgb(root / r["image"])) for r in batch]
                rows.append(encode_batch(encoder, prepared, ctx.device).astype(np.float16))
                bar.update(len(batch))
            _save_shard(_shard_path(work, k), np.concatenate(rows))
    return total


def _save_shard(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, array, allow_pickle=False)


def _finish(dataset: DatasetDir, records: list[dict], encoder: ImageEncoder, encoder_dir: Path, tag: str, work: Path,
            count: int, shard_rows: int, log: Callable[[str], None] | None) -> None:
    """Index, store folder, manifests, dataset.json: in that order, each written whole before the next."""
    missing = [k for k in range(count) if not _shard_path(work, k).is_file()]
    if missing:  # a rank failed without raising here: never publish a store with holes
        raise FbError(f"feature shards {missing[:5]} are missing in {work}; run `data features` again to finish")
    shards = [{"file": _shard_path(work, k).name, "rows": min(shard_rows, len(records) - k * shard_rows),
               "sha256": sha256_file(_shard_path(work, k))} for k in range(count)]
    index = {"format": INDEX_FORMAT, "encoder": encoder.identity.to_dict(), "records": len(records),
             "shard_rows": shard_rows, "shards": shards}
    atomic_write_json(work / INDEX_FILE, index)
    (work / "state.json").unlink(missing_ok=True)
    folder = dataset.root / FEATURES_DIR / tag
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)
    rows = {r["id"]: (f"{FEATURES_DIR}/{tag}/{_shard_path(work, i // shard_rows).name}", i % shard_rows)
            for i, r in enumerate(records)}
    for split in SPLITS:
        manifest = dataset.root / f"manifest-{split}.jsonl"
        lines = []
        for record in dataset.records(split):
            record["features"], record["features_row"] = rows[record["id"]]
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        atomic_write_bytes(manifest, "".join(lines).encode())
    meta = dict(dataset.meta)
    meta["features"] = {"tag": tag, "encoder": encoder.identity.to_dict(), "encoder_dir": str(encoder_dir.resolve()),
                        "index_sha256": sha256_file(folder / INDEX_FILE), "feature_dim": encoder.identity.feature_dim,
                        "num_patches": encoder.identity.grid ** 2}
    meta["fingerprint"] = fingerprint(dataset.root, folder / INDEX_FILE)
    atomic_write_json(dataset.root / "dataset.json", meta)
    for other in (dataset.root / FEATURES_DIR).iterdir():
        if other.is_dir() and other.name != tag and not other.name.startswith("."):
            shutil.rmtree(other)
            if log:
                log(f"removed the features of another encoder: {other}")
