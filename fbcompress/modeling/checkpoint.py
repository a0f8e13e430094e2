"""HF-style checkpoint directories: config.json, model.safetensors, tokenizer files, fbcompress.json.

Saving is a two-phase commit so that an interrupted save never leaves a half-written checkpoint:
files are staged in `DIR/.staging/`, `fbcompress.json` (with the sha256 of the weights) is written last, the
staging dir is renamed to `DIR/.commit/` (the commit point), and only then are the files moved into `DIR/`.
Opening a checkpoint first finishes a committed swap or discards an uncommitted stage, then verifies the hash.
Other files in DIR (the live training log) are left alone.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, PreTrainedTokenizerBase

from fbcompress import __version__
from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError
from fbcompress.modeling.dual_tower import DualTower, is_tower_config
from fbcompress.modeling.model import FASHIONBERT_KEY, FashionBERT

META_FILE = "fbcompress.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
STAGING = ".staging"
COMMIT = ".commit"


def package_versions() -> dict[str, str]:
    import numpy
    import transformers

    return {
        "fbcompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }


def _move_committed(directory: Path) -> None:
    commit = directory / COMMIT
    # fbcompress.json goes last: until it is in place, the old meta no longer matches and loading refuses.
    names = sorted((p.name for p in commit.iterdir()), key=lambda name: name == META_FILE)
    for name in names:
        os.replace(commit / name, directory / name)
    commit.rmdir()


def recover(directory: Path) -> None:
    """Finish a committed swap or drop an uncommitted stage left by an interrupted save."""
    if (directory / COMMIT).is_dir():
        _move_committed(directory)
    if (directory / STAGING).exists():
        shutil.rmtree(directory / STAGING, ignore_errors=True)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FbError(f"cannot create checkpoint dir {directory}: {exc.strerror}") from None
    recover(directory)
    stage = directory / STAGING
    stage.mkdir()
    try:
        model.config.to_json_file(str(stage / "config.json"))
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(stage))
        hashes = {WEIGHTS_FILE: sha256_file(stage / WEIGHTS_FILE)}
        if training_state is not None:
            torch.save(training_state, stage / STATE_FILE)
            hashes[STATE_FILE] = sha256_file(stage / STATE_FILE)
        elif (directory / STATE_FILE).exists():
            os.unlink(directory / STATE_FILE)
        full_meta = {**meta, "sha256": hashes, "versions": package_versions(), "python": sys.version.split()[0]}
        (stage / META_FILE).write_text(json.dumps(full_meta, indent=2) + "\n")
        os.replace(stage, directory / COMMIT)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == 28:
            raise FbError(f"disk full while saving checkpoint {directory}") from None
        raise
    _move_committed(directory)
    return directory


def _why_mismatch(path: Path) -> str:
    """Tell a truncated/corrupt weights file from a readable one that was swapped for other weights."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                handle.get_slice(name)
    except (SafetensorError, OSError, ValueError) as exc:
        return f"is truncated or corrupt ({exc}); its sha256 does not match {META_FILE}"
    return f"is a readable safetensors file, but not the one {META_FILE} records (sha256 differs): replaced?"


@dataclass
class Checkpoint:
    directory: Path
    meta: dict[str, Any]
    config: BertConfig

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "?"))

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["sha256"][WEIGHTS_FILE])


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Validate a checkpoint dir (files present, weights hash matches) without building the model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FbError(f"checkpoint dir not found: {directory}")
    recover(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FbError(f"{directory} is not an fbcompress checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise FbError(f"{meta_path} is not valid JSON: {exc.msg}") from None
    for needed in ("config.json", WEIGHTS_FILE):
        if not (directory / needed).is_file():
            raise FbError(f"checkpoint {directory} lacks {needed}")
    expected = meta.get("sha256", {}).get(WEIGHTS_FILE)
    if not expected:
        raise FbError(f"{meta_path} records no sha256 for {WEIGHTS_FILE}")
    if sha256_file(directory / WEIGHTS_FILE) != expected:
        raise FbError(f"{directory / WEIGHTS_FILE} {_why_mismatch(directory / WEIGHTS_FILE)}")
    try:
        config = BertConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:  # TypeError: valid JSON that is not an object, e.g. a list
        raise FbError(f"{directory}/config.json is not a valid BERT config: {exc}") from None
    if not hasattr(config, FASHIONBERT_KEY):
        raise FbError(f"{directory}/config.json has no '{FASHIONBERT_KEY}' section: not a FashionBERT checkpoint")
    return Checkpoint(directory, meta, config)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[FashionBERT, Checkpoint]:
    """The cross-encoder (teacher or student) of a checkpoint dir, weights verified."""
    ckpt = open_checkpoint(directory)
    if is_tower_config(ckpt.config):
        raise FbError(f"{ckpt.directory} is a dual-tower retriever checkpoint, not a cross-encoder (it embeds queries "
                      "and products: use it with `index build`, `search` and `eval-retrieval`)")
    return _with_weights(FashionBERT(ckpt.config), ckpt, device), ckpt


def load_tower(directory: str | Path, device: str | torch.device = "cpu") -> tuple[DualTower, Checkpoint]:
    """The dual tower of a retriever checkpoint dir (`train-retriever`), weights verified."""
    ckpt = open_checkpoint(directory)
    if not is_tower_config(ckpt.config):
        raise FbError(f"{ckpt.directory} is a {ckpt.kind} cross-encoder checkpoint, not a dual-tower retriever "
                      "(make one with `fbcompress train-retriever --teacher ...`)")
    return _with_weights(DualTower(ckpt.config), ckpt, device), ckpt


ModelT = TypeVar("ModelT", bound=nn.Module)


def _with_weights(model: ModelT, ckpt: Checkpoint, device: str | torch.device) -> ModelT:
    try:
        state = load_file(str(ckpt.directory / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise FbError(f"{ckpt.directory / WEIGHTS_FILE} is truncated or corrupt: {exc}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FbError(
            f"{ckpt.directory / WEIGHTS_FILE} does not fit its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    model.to(device).eval()
    return model


def load_training_state(directory: Path) -> dict[str, Any]:
    ckpt = open_checkpoint(directory)
    path = directory / STATE_FILE
    expected = ckpt.meta["sha256"].get(STATE_FILE)
    if not path.is_file() or not expected:
        raise FbError(f"{directory} holds no training state to resume from")
    if sha256_file(path) != expected:
        raise FbError(f"{path} does not match the sha256 in {META_FILE}")
    # weights_only=True: the state holds only tensors, numbers and dicts, never arbitrary pickled objects.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FbError(f"{path} holds objects other than tensors and plain data; refused to unpickle them "
                      f"({str(exc).splitlines()[0]})") from None

