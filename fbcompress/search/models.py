"""Which model embeds: a retriever checkpoint, a cross-encoder used zero-shot, or an exported query encoder.

Every form resolves to a tower spec whose `space` names the product tower its embeddings are comparable with:

* a retriever checkpoint (`train-retriever`): `retriever:<sha256 of its weights>`;
* a cross-encoder checkpoint (teacher or student), the zero-shot baseline: its encoder as both towers, mean pooled,
  no projection; `zero-shot:<sha256>:<pooling>:<text field>`;
* an exported query encoder (`.onnx` with `fbcompress.tower` metadata and `tokenizer/` beside it): the space it
  records, its parent retriever's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fbcompress.bundle.names import MANIFEST, QUERY_ENCODER_FILE
from fbcompress.bundle.store import find_bundle, verify_bundle_file
from fbcompress.core.errors import FbError
from fbcompress.modeling.checkpoint import META_FILE, Checkpoint, load_model, load_tower, open_checkpoint
from fbcompress.modeling.dual_tower import DualTower, TowerSpec, is_tower_config, zero_shot_tower
from fbcompress.recipes import RetrieverSection
from fbcompress.runtime.embedding import QueryEncoder, TowerEncoder

BACKENDS = ("auto", "pytorch", "onnxruntime")


@dataclass
class TowerModel:
    """A PyTorch dual tower, the checkpoint it came from, and whether it is the zero-shot baseline."""

    tower: DualTower
    checkpoint: Checkpoint
    zero_shot: bool

    @property
    def spec(self) -> TowerSpec:
        return self.tower.tower

    def encoder(self, device: str = "cpu") -> TowerEncoder:
        return TowerEncoder(self.tower, self.checkpoint.directory, str(self.checkpoint.directory), device)


def open_tower(path: str | Path, section: RetrieverSection, device: str = "cpu") -> TowerModel:
    """The tower of a retriever checkpoint, or a cross-encoder checkpoint as the zero-shot tower (`section` gives
    its pooling, text field and query length)."""
    ckpt = open_checkpoint(path)
    if is_tower_config(ckpt.config):
        tower, ckpt = load_tower(path, device)
        space = tower.tower.space or f"retriever:{ckpt.weights_sha256}"
        tower.tower = dataclasses.replace(tower.tower, space=space)
        return TowerModel(tower, ckpt, zero_shot=False)
    cross, ckpt = load_model(path, device)
    space = f"zero-shot:{ckpt.weights_sha256}:{section.pooling}:{section.product_text}"
    tower = zero_shot_tower(cross, section.pooling, section.product_text, section.max_query_len, space).to(device)
    return TowerModel(tower, ckpt, zero_shot=True)


def open_query_encoder(path: str | Path, section: RetrieverSection, device: str = "cpu", backend: str = "auto"
                       ) -> QueryEncoder:
    """A query encoder of any form; `backend` onnxruntime on a checkpoint exports its query tower first (checked
    against PyTorch before use)."""
    from fbcompress.export.query_encoder import TOKENIZER_DIR, read_tower_metadata
    from fbcompress.runtime.onnxruntime import OrtQueryEncoder

    if backend not in BACKENDS:
        raise FbError(f"--backend {backend} is not one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file() and not (path / META_FILE).is_file():
        path = path / QUERY_ENCODER_FILE  # a search bundle: its FP32 query encoder
    if path.suffix == ".onnx":
        if backend == "pytorch":
            raise FbError(f"--backend pytorch cannot run {path}: it is an ONNX graph")
        tokenizer = path.parent / TOKENIZER_DIR
        found = find_bundle(path) if path.is_file() else None
        if found is not None:  # a bundle's file: hash-checked against its manifest, with the bundle's tokenizer
            bundle, _ = verify_bundle_file(path)
            tokenizer = bundle.verify_tokenizer()
        elif not path.is_file():
            raise FbError(f"model not found: {path}")
        spec = read_tower_metadata(path)
        if not (tokenizer / "vocab.txt").is_file():
            raise FbError(f"{path} has no {TOKENIZER_DIR}/ beside it: a query encoder needs its tokenizer")
        return OrtQueryEncoder(path, spec, tokenizer, str(path), device)
    if not (path / META_FILE).is_file():
        if not path.exists():
            raise FbError(f"model not found: {path}")
        raise FbError(f"{path}: not a query encoder (expected a retriever or cross-encoder checkpoint dir, or a "
                      "query_encoder .onnx)")
    model = open_tower(path, section, "cpu" if backend == "onnxruntime" else device)
    if backend != "onnxruntime":
        return model.encoder(device)
    return _exported(model, device)


def _exported(model: TowerModel, device: str) -> QueryEncoder:
    """The checkpoint's query tower exported to a temporary ONNX file, parity-checked, loaded in ONNX Runtime (the
    session keeps the graph; the file goes)."""
    from fbcompress.export.query_encoder import export_query_encoder
    from fbcompress.runtime.onnxruntime import OrtQueryEncoder

    with tempfile.TemporaryDirectory(prefix="fbcompress-query-") as tmp:
        graph = Path(tmp) / "query_encoder.onnx"
        export_query_encoder(model.tower, model.spec, graph)
        encoder = OrtQueryEncoder(graph, model.spec, model.checkpoint.directory, str(model.checkpoint.directory),
                                  device)
    encoder.backend = f"{encoder.backend} (exported from the checkpoint)"
    return encoder
