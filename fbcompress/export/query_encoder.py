"""The query tower → ONNX: `input_ids`, `attention_mask`, `token_type_ids` (segment Q) → `embedding` [B, E].

The online half of search: batch and text length dynamic (VSL), no image input. The graph carries its tower spec
(pooling, text field, query length, and the embedding space it embeds into) in the ONNX metadata under
`fbcompress.tower`, so a bare file still says which index it may search; the tokenizer sits beside it in
`tokenizer/`, as in a bundle. Every export is checked against PyTorch on a grid of batch sizes and query lengths
before the file is used (`PARITY_TOLERANCE` on the normalised embedding).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbcompress.core.errors import FbError
from fbcompress.modeling.dual_tower import QUERY_SEGMENT, DualTower, TowerSpec

QUERY_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "embedding"
TOWER_METADATA = "fbcompress.tower"
PARITY_TOLERANCE = 1e-4
TOKENIZER_DIR = "tokenizer"


class QueryGraph(torch.nn.Module):
    """What is traced: the tower's query side alone (three inputs, one output)."""

    def __init__(self, tower: DualTower):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
                ) -> torch.Tensor:
        return self.tower.encode_query(input_ids, attention_mask, token_type_ids)


def tower_metadata(spec: TowerSpec) -> dict[str, str]:
    return {TOWER_METADATA: json.dumps(spec.to_dict(), sort_keys=True)}


def read_tower_metadata(path: Path) -> TowerSpec:
    """The tower spec an exported query encoder carries; a graph without one is not ours."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise FbError(f"cannot read {path} as ONNX: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                      ) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if TOWER_METADATA not in props:
        raise FbError(f"{path} is not a query encoder (no {TOWER_METADATA} metadata): export one from a retriever "
                      "checkpoint")
    return TowerSpec(**json.loads(props[TOWER_METADATA]))


def export_query_encoder(tower: DualTower, spec: TowerSpec, path: Path, opset: int = 17) -> dict[str, Any]:
    """Export, set the metadata, run onnx.checker, check parity against PyTorch; the parity record."""
    import onnx

    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (2, 8), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1:, 4:] = 0
    segments = torch.full_like(ids, QUERY_SEGMENT)
    axes = {name: {0: "batch", 1: "text"} for name in QUERY_INPUTS}
    axes[EMBEDDING_OUTPUT] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(QueryGraph(tower).eval(), (ids, mask, segments), str(path), input_names=list(QUERY_INPUTS),
                          output_names=[EMBEDDING_OUTPUT], opset_version=opset, dynamo=False, dynamic_axes=axes,
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **tower_metadata(spec)})
    embedding_axis = proto.graph.output[0].type.tensor_type.shape.dim[1]
    embedding_axis.Clear()
    embedding_axis.dim_value = tower.embedding_dim  # fixed, so Triton and TensorRT see [batch, E], not [batch, -1]
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"exported query encoder fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return query_parity(tower, path, spec.max_query_len)


def query_parity(tower: DualTower, path: Path, max_len: int, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Max |embedding difference| of the ONNX graph (ONNX Runtime, CPU) against PyTorch over batches 1 and 8 and
    query lengths 1..max_len (padded rows included); past `tolerance` the export is refused."""
    from fbcompress.runtime.onnxruntime import cpu_session

    session = cpu_session(path)
    generator = torch.Generator().manual_seed(1)
    vocab = int(tower.config.vocab_size)
    cases = []
    for batch in (1, 8):
        for length in sorted({1, 2, max(1, max_len // 2), max_len}):
            ids = torch.randint(1000, min(vocab, 2000) if vocab > 1000 else vocab, (batch, length),
                                generator=generator)
            mask = torch.ones_like(ids)
            if batch > 1 and length > 1:
                mask[1:, length // 2:] = 0
            segments = torch.full_like(ids, QUERY_SEGMENT)
            with torch.no_grad():
                expected = tower.encode_query(ids, mask, segments).numpy()
            got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                     "token_type_ids": segments.numpy()})[0]
            cases.append({"batch": batch, "text": length, "max_abs_diff": float(np.max(np.abs(got - expected)))})
    worst = max(cases, key=lambda c: c["max_abs_diff"])
    if worst["max_abs_diff"] > tolerance:
        raise FbError(f"{path}: ONNX query embeddings differ from PyTorch by {worst['max_abs_diff']:.3g} > "
                      f"{tolerance:g} (batch {worst['batch']}, text {worst['text']})")
    return {"max_abs_diff": worst["max_abs_diff"], "tolerance": tolerance, "cases": cases}
