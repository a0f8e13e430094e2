"""Score a training checkpoint through ONNX Runtime: `fbcompress eval --backend onnxruntime`.

Why: eval of a 6-layer teacher is compute-bound (each Rank@K query is 101 full cross-encoder passes), and on a
2-core CPU ONNX Runtime's fused graph scored it ~1.3x faster than PyTorch eager (2.0 against 2.7 s per query),
with the same ranks. The checkpoint is exported to a temporary ONNX file, fused, loaded, and its logits are compared
with PyTorch's on the export parity grid before any score is used: past the tolerance, eval refuses rather than
reporting a teacher it did not measure. The scores describe the checkpoint's weights (results are stamped with its
model.safetensors hash), so `check --teacher-eval` reuses them like a PyTorch eval.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fbcompress.bundle.names import ONNX_FILE, ORT_FILE
from fbcompress.core.errors import FbError
from fbcompress.modeling.checkpoint import META_FILE
from fbcompress.runtime.onnxruntime import OrtScorer
from fbcompress.runtime.scoring import Scorer, open_scorer

PARITY_TOLERANCE = 1e-4  # max |logit diff| against PyTorch; the export stage's default (recipe export.parity_tolerance)


def open_scorer_for_eval(path: str | Path, device: str = "cpu", backend: str = "auto") -> Scorer:
    """`open_scorer`, plus the one form that needs the export stage: a checkpoint dir scored in ONNX Runtime."""
    path = Path(path)
    if backend == "onnxruntime" and path.is_dir() and (path / META_FILE).is_file():
        return open_checkpoint_ort(path, device)
    return open_scorer(path, device, backend)


def open_checkpoint_ort(path: str | Path, device: str = "cpu", tolerance: float = PARITY_TOLERANCE) -> OrtScorer:
    """An `OrtScorer` for checkpoint dir `path`; its `parity` holds the checked parity against PyTorch."""
    from fbcompress.export.onnx_export import (
        MIN_OPSET,
        export_onnx,
        measure_parity,
        optimize_for_ort,
        parity_grid,
    )
    from fbcompress.modeling.checkpoint import load_model

    model, ckpt = load_model(path, "cpu")
    config = model.config
    with tempfile.TemporaryDirectory(prefix="fbcompress-eval-") as tmp:
        plain, fused = Path(tmp) / ONNX_FILE, Path(tmp) / ORT_FILE
        export_onnx(model, plain, MIN_OPSET)
        optimize_for_ort(plain, fused, int(config.num_attention_heads), int(config.hidden_size))
        scorer = OrtScorer(fused, model.spec, ckpt.directory, str(path), device)  # the session holds the graph
    parity = measure_parity(
        model, scorer.logits, model.spec, int(config.vocab_size), parity_grid(int(config.max_position_embeddings))
    )
    if parity["max_abs_diff"] > tolerance:
        worst = max(parity["cases"], key=lambda c: c["max_abs_diff"])
        raise FbError(
            f"{path}: ONNX Runtime logits differ from PyTorch by {parity['max_abs_diff']:.3g} > {tolerance:g} "
            f"(batch {worst['batch']}, text {worst['text']}); score it with --backend pytorch"
        )
    scorer.backend = f"{scorer.backend} (exported from the checkpoint)"
    scorer.parity = {"max_abs_diff": parity["max_abs_diff"], "tolerance": tolerance, "cases": parity["cases"]}
    return scorer
