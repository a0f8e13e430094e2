"""PyTorch → ONNX, ONNX Runtime transformer fusions, FP16 conversion, and the parity check against PyTorch.

Exporter choice. torch 2.9+ defaults to the dynamo (torch.export) exporter; both exporters produce a correct graph
with dynamic batch and text axes for FashionBERT, including text length 1 (verified at export, every time, by the
parity check). The TorchScript exporter (`dynamo=False`) is the default here because
  * ONNX Runtime's BERT fusion recognises its attention subgraph (fused `Attention` ops); the dynamo graph's
    decomposed SDPA (scale split over Q and K) is not matched, so it only gets LayerNorm/GELU fusions;
  * it exports in well under a second instead of several, which keeps the test suite fast;
  * `dynamic_axes` are plain named axes, with no guards to satisfy (the dynamo path needs `Dim` ranges and may
    specialise a size-1 example; we trace with B=2, T=8 for that reason in both paths).
If a future torch drops the TorchScript exporter, `export_onnx` falls back to dynamo and records which it used.

Attention mask format. FashionBERT's mask is `[text mask (right-padded), 64 ones for the image tokens]`, so padding
sits in the middle of the sequence. ORT's default fused-attention mask (`MaskIndexEnd`) turns the mask into a
sequence length and assumes right padding: it would mask the image tokens instead of the padding. We ask for the
raw 2-D mask (`AttentionMaskFormat.AttentionMask`), which is exact; the parity check would catch the other.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.bundle.shapes import BATCH_AXIS, INPUT_NAMES, OUTPUT_NAME, PATCH_INPUT, TEXT_AXIS, TEXT_INPUTS
from fbcompress.core.errors import FbError
from fbcompress.modeling.model import PatchSpec

EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET = 17
FP32_KEEP_OPS = ("LayerNormalization", "Softmax")  # numerically sensitive: stay FP32 in the FP16 graph
PARITY_BATCHES = (1, 8)
PARITY_TEXTS = (1, 8, 64)
EMBED_LN_NOTE = (
    "EmbedLayerNormalization did not fuse: FashionBERT builds its embeddings by hand (word + position + segment "
    "for the text, a patch projection + patch positions for the image, concatenated before one LayerNorm), which "
    "is not the BERT embedding subgraph ORT matches; that LayerNorm runs as a plain LayerNormalization"
)


def _sample_inputs(spec: PatchSpec, batch: int = 2, text: int = 8) -> tuple:
    import torch

    ids = torch.randint(1000, 2000, (batch, text), dtype=torch.long)
    mask = torch.ones(batch, text, dtype=torch.long)
    mask[1:, text // 2:] = 0  # padded rows, so nothing specialises on an all-ones mask
    return ids, mask, torch.zeros_like(ids), torch.rand(batch, spec.num_patches, spec.patch_dim) * 2 - 1


def _torch_export(model, args: tuple, path: Path, opset: int, exporter: str) -> None:
    import torch

    if exporter == "torchscript":
        axes: dict[str, dict[int, str]] = {name: {0: BATCH_AXIS, 1: TEXT_AXIS} for name in TEXT_INPUTS}
        axes[PATCH_INPUT] = {0: BATCH_AXIS}
        axes[OUTPUT_NAME] = {0: BATCH_AXIS}
        torch.onnx.export(model, args, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
        return
    max_text = int(model.config.max_position_embeddings)
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 16)
    text = torch.export.Dim(TEXT_AXIS, min=1, max=max_text)
    shapes: dict[str, Any] = {name: {0: batch, 1: text} for name in TEXT_INPUTS}
    shapes[PATCH_INPUT] = {0: batch}
    program = torch.onnx.export(model, args, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamo=True, dynamic_shapes=shapes, optimize=True,
                                external_data=False)
    program.save(str(path), external_data=False)


def save_onnx(model_proto, path: Path) -> None:
    """Save, spilling weights to a sidecar file only past protobuf's 2 GiB limit."""
    import onnx

    if model_proto.ByteSize() > 1_800_000_000:
        onnx.save(model_proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model_proto, str(path))


def graph_io(path_or_proto) -> dict[str, list[dict]]:
    """Inputs/outputs of an ONNX graph: name, dtype and shape (str for a dynamic axis, int for a fixed one)."""
    import onnx

    proto = onnx.load(str(path_or_proto), load_external_data=False) if isinstance(path_or_proto, (str, Path)) \
        else path_or_proto
    initializers = {init.name for init in proto.graph.initializer}

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "dtype": dtype, "shape": dims}

    return {
        "inputs": [describe(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in proto.graph.output],
    }


def check_dynamic_io(io: dict[str, list[dict]], spec: PatchSpec, where: str) -> None:
    """The exported graph must keep batch and text dynamic and fix patches at [*, num_patches, patch_dim]."""
    by_name = {item["name"]: item for item in io["inputs"]}
    missing = [name for name in INPUT_NAMES if name not in by_name]
    if missing:
        raise FbError(f"{where}: exported graph lacks inputs {missing} (has {sorted(by_name)})")
    for name in TEXT_INPUTS:
        shape = by_name[name]["shape"]
        if len(shape) != 2 or not all(isinstance(d, str) for d in shape):
            raise FbError(f"{where}: input {name} has shape {shape}, expected two dynamic axes [batch, text]")
    patches = by_name[PATCH_INPUT]["shape"]
    if len(patches) != 3 or not isinstance(patches[0], str) or patches[1:] != [spec.num_patches, spec.patch_dim]:
        raise FbError(f"{where}: input patches has shape {patches}, expected [batch, {spec.num_patches}, "
                      f"{spec.patch_dim}]")


def export_onnx(model, path: Path, opset: int = MIN_OPSET, exporter: str = "torchscript",
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export the scoring forward (logits) with dynamic batch/text axes, then `check_model(full_check=True)`."""
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise FbError(f"--opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    if exporter not in EXPORTERS:
        raise FbError(f"unknown exporter '{exporter}' (choose from {', '.join(EXPORTERS)})")
    model = model.eval()
    spec: PatchSpec = model.spec
    torch.manual_seed(0)
    args = _sample_inputs(spec)
    used, fallback_reason = exporter, None
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the TorchScript exporter's deprecation notice
        try:
            _torch_export(model, args, path, opset, exporter)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other one, then report both
            if exporter != "torchscript":
                raise FbError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {exc}") from None
            fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            used = "dynamo"
            try:
                _torch_export(model, args, path, opset, "dynamo")
            except Exception as exc2:  # noqa: BLE001
                raise FbError(f"ONNX export failed with both exporters: torchscript: {fallback_reason}; dynamo: "
                              f"{type(exc2).__name__}: {exc2}") from None
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path))
    if metadata:
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    save_onnx(proto, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"exported ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from None
    io = graph_io(path)
    check_dynamic_io(io, spec, str(path))
    opsets = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}
    info: dict[str, Any] = {
        "exporter": used,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": int(opsets.get("ai.onnx", opset)),
        "export_seconds": round(seconds, 3),
        "checker": "onnx.checker.check_model(full_check=True): passed",
        "io": io,
    }
    if fallback_reason:
        info["exporter_fallback"] = f"torchscript exporter failed ({fallback_reason}); used dynamo"
    return info


def optimize_for_ort(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict[str, Any]:
    """ORT transformer optimiser (python fusions only, provider-neutral): which fusions took, and the notes why not."""
    import onnx
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask  # padding is mid-sequence: see module doc
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opt_level=0: only the offline fusions; ORT's own session optimisations still run at load, for the
        # provider actually used (baking level-2 CPU rewrites in here would tie the file to the CPU provider).
        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   optimization_options=options, opt_level=0, use_gpu=False)
    stats = {op: int(count) for op, count in optimized.get_fused_operator_statistics().items()}
    # save_model_to_file sorts the graph and declares the com.microsoft opset the fused ops need.
    optimized.save_model_to_file(str(dst), use_external_data_format=optimized.model.ByteSize() > 1_800_000_000)
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise FbError(f"ORT-optimised ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from None
    notes = []
    if not stats.get("EmbedLayerNormalization"):
        notes.append(EMBED_LN_NOTE)
    if not stats.get("Attention") and not stats.get("MultiHeadAttention"):
        notes.append("Attention did not fuse: the exporter's attention subgraph is not one ORT's BERT fusion "
                     "matches (ORT still applies its own session-level fusions at load)")
    return {
        "optimizer": "onnxruntime.transformers.optimize_model(model_type='bert', opt_level=0)",
        "attention_mask_format": "AttentionMask (raw 2-D mask; padding is mid-sequence)",
        "fused_operators": {op: count for op, count in stats.items() if count},
        "fusion_statistics": stats,
        "notes": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }


FP16_CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
QDQ_FP16_MIN_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float16 scales (and x)


def fp16_policy(proto) -> tuple[list[str], list[str]]:
    """What stays FP32 in a mixed-precision graph: the op types (LayerNorm, Softmax, plus the converter's own
    default block list) and the node(s) producing a graph output (the scorer's logits, a query encoder's
    embedding)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    outputs = {output.name for output in proto.graph.output}
    final = [node.name for node in proto.graph.node if outputs & set(node.output)]
    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_KEEP_OPS)), final


def _mixed_fp16(proto, dst: Path, what: str) -> dict[str, Any]:
    """The one FP16 conversion behind `model.fp16.onnx` and the TensorRT INT8 file: FP16 everywhere except the
    `fp16_policy` ops and nodes, FP32 graph inputs/outputs (casts inside the graph); saved topologically sorted and
    checked with onnx.checker (full check)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    op_block, final = fp16_policy(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=op_block,
                                             node_block_list=final)
    _skip_output_fp16_round_trip(converted)
    wrapped = OnnxModel(converted)
    # save_model_to_file sorts topologically: the converter appends the input Casts at the end of the node list.
    wrapped.save_model_to_file(str(dst), use_external_data_format=converted.ByteSize() > 1_800_000_000)
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # full_check infers shapes
        raise FbError(f"{what} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return {
        "converter": FP16_CONVERTER,
        "fp32_ops": list(FP32_KEEP_OPS),
        "fp32_nodes": final,
        "io_dtypes": "float32 (casts inside the graph)",
    }


def _skip_output_fp16_round_trip(proto) -> int:
    """Keep the FP32 logits FP32 up to the graph output. With keep_io_types the converter casts a blocked (FP32)
    node's output to FP16 and back to FP32 before the output (Gemm → Cast fp16 → Cast fp32 → logits), rounding
    the scores to FP16 although the node itself ran in FP32. The outer Cast is fed the FP32 tensor directly (an
    FP32 → FP32 Cast is an identity); the inner one goes when nothing else reads it. Returns how many it skipped."""
    from onnx import TensorProto

    producer = {out: node for node in proto.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def cast_to(node) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    skipped = 0
    for output in proto.graph.output:
        outer = producer.get(output.name)
        inner = producer.get(outer.input[0]) if cast_to(outer) == TensorProto.FLOAT else None
        if cast_to(inner) != TensorProto.FLOAT16:
            continue
        outer.input[0] = inner.input[0]
        readers[inner.output[0]] -= 1
        if not readers[inner.output[0]] and inner.output[0] not in {o.name for o in proto.graph.output}:
            proto.graph.node.remove(inner)
        skipped += 1
    return skipped


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Mixed-precision graph for a strongly typed TensorRT build: FP16 everywhere except LayerNorm, Softmax and the
    final logits layer (FP32), with FP32 inputs/outputs so clients feed the same tensors as for the FP32 model."""
    import onnx

    return _mixed_fp16(onnx.load(str(src)), dst, "FP16 ONNX")


def _default_opset(proto) -> int:
    return max((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), default=0)


def convert_qdq_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """A QDQ graph (INT8 Q/DQ on the GEMM inputs, quantized from the FP32 graph) with `convert_fp16`'s precision
    policy outside the quantized ops, for a strongly typed TensorRT INT8 build: FP16 everywhere except LayerNorm,
    Softmax and the logits node (FP32), FP32 graph inputs/outputs.

    What NVIDIA ModelOpt does for INT8 (quantize the FP32 graph, then convert to FP16 with keep_io_types): the
    default-domain opset is raised to >= 19, the first where Q/DQ take float16 scales, and Q/DQ are not blocked,
    so their input and scale become float16 (DequantizeLinear-19's output follows its scale) while INT8 weights
    and zero points stay int8. Without this a strongly typed build runs every non-quantized op in FP32/TF32 and
    the INT8 engine can be slower than the FP16 one. The result is checked (onnx.checker, strict shape inference)
    and its types verified (`qdq_fp16_type_problems`)."""
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(src))
    before = _default_opset(proto)
    if before < QDQ_FP16_MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, QDQ_FP16_MIN_OPSET)
            if _default_opset(proto) < QDQ_FP16_MIN_OPSET:
                raise RuntimeError(f"it returned opset {_default_opset(proto)}")
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # noqa: BLE001 - the converter raises several types (RuntimeError, ValidationError)
            text = str(exc).strip().splitlines()
            raise FbError(
                f"cannot raise {src.name} from opset {before} to {QDQ_FP16_MIN_OPSET} (needed for float16 Q/DQ "
                f"scales) with onnx.version_converter: {type(exc).__name__}: {text[0] if text else ''}"
            ) from None
    info = _mixed_fp16(proto, dst, "FP16 QDQ ONNX")
    converted = onnx.load(str(dst))
    try:
        inferred = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - InferenceError and friends
        raise FbError(f"FP16 QDQ ONNX fails onnx shape inference: {str(exc).splitlines()[0]}") from None
    problems = qdq_fp16_type_problems(inferred, info["fp32_nodes"])
    if problems:
        raise FbError(f"FP16 QDQ ONNX {dst.name} does not carry the intended types: " + "; ".join(problems[:5])
                      + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return {
        **info,
        "high_precision": "fp16",
        "policy": "convert_fp16's (model.fp16.onnx): the engine differs from fp16.plan only in the quantized GEMMs",
        "qdq": "INT8 weights and zero points; Q/DQ scales, Q inputs and DQ outputs float16",
        "opset": _default_opset(converted),
        "opset_before": before,
        "opset_converter": f"onnx.version_converter.convert_version(.., {QDQ_FP16_MIN_OPSET})"
        if before < QDQ_FP16_MIN_OPSET else "not needed",
        "checks": "onnx.checker.check_model(full_check=True), onnx.shape_inference.infer_shapes(strict_mode=True), "
        "types verified",
    }


def qdq_fp16_type_problems(proto, fp32_nodes: Iterable[str]) -> list[str]:
    """Where a (shape-inferred) FP16 QDQ graph departs from the policy; empty when it holds. `fp32_nodes` are the
    nodes blocked by name (the logits node, named before the conversion: after it, a Cast produces `logits`).
    Checked: opset >= 19; graph inputs/outputs not FLOAT16; Q/DQ scales, Q inputs and DQ outputs FLOAT16; DQ'd
    constants and zero points INT8; the FP32 ops and nodes read no FLOAT16; no FLOAT tensor in or out of any other
    node but a Cast."""
    import onnx

    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info)}
    types.update({init.name: init.data_type for init in proto.graph.initializer})
    name = onnx.TensorProto.DataType.Name
    problems = []
    if _default_opset(proto) < QDQ_FP16_MIN_OPSET:
        problems.append(f"opset {_default_opset(proto)} < {QDQ_FP16_MIN_OPSET}")
    for value in (*proto.graph.input, *proto.graph.output):
        if value.type.tensor_type.elem_type == float16:
            problems.append(f"graph input/output {value.name} is FLOAT16 (keep_io_types wants FP32)")
    op_block, _ = fp16_policy(proto)
    fp32_nodes = set(fp32_nodes)
    initializers = {init.name for init in proto.graph.initializer}

    def typed(tensor: str) -> str:
        return name(types.get(tensor, 0))

    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = node.input[1]
            if types.get(scale) != float16:
                problems.append(f"{node.op_type} {node.name}: scale {scale} is {typed(scale)}")
            if len(node.input) > 2 and node.input[2] and types.get(node.input[2]) != onnx.TensorProto.INT8:
                problems.append(f"{node.op_type} {node.name}: zero point is {typed(node.input[2])}")
            if node.op_type == "QuantizeLinear" and types.get(node.input[0]) != float16:
                problems.append(f"QuantizeLinear {node.name}: input is {typed(node.input[0])}")
            if node.op_type == "DequantizeLinear":
                if types.get(node.output[0]) != float16:
                    problems.append(f"DequantizeLinear {node.name}: output is {typed(node.output[0])}")
                if node.input[0] in initializers and types.get(node.input[0]) != onnx.TensorProto.INT8:
                    problems.append(f"DequantizeLinear {node.name}: constant is {typed(node.input[0])}")
            continue
        if node.op_type == "Cast":
            continue
        tensors = [t for t in (*node.input, *node.output) if t and types.get(t) in (float32, float16)]
        if node.op_type in op_block or node.name in fp32_nodes:
            inputs = [t for t in node.input if t and types.get(t) == float16]
            if inputs:
                problems.append(f"{node.op_type} {node.name} (kept FP32) reads FLOAT16 {inputs[0]}")
        elif any(types.get(t) == float32 for t in tensors):
            problems.append(f"{node.op_type} {node.name} has a FLOAT tensor "
                            f"{next(t for t in tensors if types.get(t) == float32)} (FP16 expected)")
    return problems


# ---------------------------------------------------------------------------------------------------------- parity


def parity_inputs(spec: PatchSpec, batch: int, text: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic model inputs with realistic padding: row i holds a text shorter than the longest (VSL)."""
    rng = np.random.default_rng(seed * 1000 + batch * 100 + text)
    ids = rng.integers(min(1000, vocab_size - 1), vocab_size, size=(batch, text), dtype=np.int64)
    mask = np.zeros((batch, text), dtype=np.int64)
    for row in range(batch):
        length = text if row == 0 else max(1, text - (row * text) // max(batch, 2))
        mask[row, :length] = 1
    ids = np.where(mask == 1, ids, 0)
    if spec.patch_encoder == "pixels":
        patches = rng.uniform(-1.0, 1.0, size=(batch, spec.num_patches, spec.patch_dim))
    else:
        patches = rng.standard_normal(size=(batch, spec.num_patches, spec.patch_dim))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "patches": patches.astype(np.float32)}


def parity_grid(max_positions: int, batches: Sequence[int] = PARITY_BATCHES,
                texts: Sequence[int] = PARITY_TEXTS) -> list[tuple[int, int]]:
    """(batch, text) pairs to check; text lengths beyond the model's position table are capped to it."""
    capped = sorted({min(t, max_positions) for t in texts})
    return [(b, t) for b in batches for t in capped]


def torch_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(**{k: torch.from_numpy(inputs[k]) for k in INPUT_NAMES}).float().numpy()


def measure_parity(model, run: Any, spec: PatchSpec, vocab_size: int, grid: Iterable[tuple[int, int]]) -> dict:
    """Max |logit diff| between PyTorch and `run(inputs) -> logits` at every (batch, text) of `grid`, and the same
    relative to the logits' own scale (`logit_scale`, `relative_max_diff`: see `logit_scale`)."""
    rows = []
    expected_all, got_all = [], []
    for batch, text in grid:
        inputs = parity_inputs(spec, batch, text, vocab_size)
        expected = torch_logits(model, inputs)
        got = np.asarray(run(inputs), dtype=np.float32)
        if got.shape != expected.shape:
            raise FbError(f"exported model returns logits of shape {got.shape} at batch {batch}, text {text}; "
                          f"PyTorch gives {expected.shape}")
        rows.append({"batch": batch, "text": text, "max_abs_diff": float(np.max(np.abs(got - expected)))})
        expected_all.append(expected)
        got_all.append(got)
    worst = max((r["max_abs_diff"] for r in rows), default=0.0)
    scale = logit_scale(np.concatenate(expected_all)) if expected_all else 0.0
    return {"cases": rows, "max_abs_diff": worst, "logit_scale": scale,
            "relative_max_diff": worst / scale if scale > 0 else None}


def logit_scale(logits: np.ndarray) -> float:
    """How far apart the model's scores are: the standard deviation of the match margin (logit 1 − logit 0) over
    the parity inputs. An FP16 or TensorRT run is compared against this, not against an absolute number: on a model
    at chance every margin is ~0, so an absolute 5e-2 passes any output (a constant one too), while on a trained
    model the same 5e-2 may be noise or a reordering, depending on how spread its scores are."""
    margins = np.asarray(logits, dtype=np.float64)[:, 1] - np.asarray(logits, dtype=np.float64)[:, 0]
    return float(np.std(margins))


# Reduced-precision runs against PyTorch FP32, relative to `logit_scale`: TF32 GEMMs (an FP32 engine) round at
# about 1e-3 relative, FP16 at about 1e-2 over a few layers; INT8 is judged by the accuracy guard instead.
RELATIVE_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "int8": None}


def parity_passes(parity: dict, precision: str) -> bool | None:
    """Whether a reduced-precision parity measurement keeps its relative tolerance (None: no tolerance applies).
    A model whose PyTorch scores do not spread at all (`logit_scale` 0) cannot be judged and fails: a constant
    output would otherwise pass."""
    limit = RELATIVE_TOLERANCE.get(precision)
    if limit is None:
        return None
    relative = parity.get("relative_max_diff")
    return relative is not None and relative <= limit


def metadata_for(spec: PatchSpec, source: dict) -> dict[str, str]:
    return {
        "fbcompress.patch_spec": json.dumps(spec.to_dict(), sort_keys=True),
        "fbcompress.source_weights_sha256": str(source.get("weights_sha256", "")),
        "fbcompress.runtime.scoring": "logits [B,2]; score = softmax(logits)[:, 1]",
    }
