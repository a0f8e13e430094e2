"""Which nodes get Q/DQ, the clean-up that keeps Q/DQ on exactly those inputs, and what a QDQ graph holds.

Node choice follows TensorRT's explicit-quantization guidance for transformers: Q/DQ on the inputs of MatMul/Gemm
(weights per output channel, activations per tensor, symmetric INT8), nothing on LayerNorm, Softmax or GELU (their
inputs stay FP32; INT8 there costs accuracy and gains no speed), and the final logits Gemm (2 outputs) in FP,
like the FP16 graph keeps it: INT8 buys nothing on a 2-column GEMM and the scores keep their resolution.

ONNX Runtime's QDQ quantizer inserts one Q/DQ pair per tensor and rewires *every* consumer to the DQ output, so a
LayerNorm output that feeds the Q/K/V MatMuls would reach the residual Add (and through it the next LayerNorm)
rounded to INT8. `restrict_to_quantized_consumers` rewires the non-quantized consumers back to the FP tensor:
Q/DQ then feed only the nodes chosen, which is also the placement TensorRT fuses best.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fbcompress.bundle.shapes import OUTPUT_NAME

GEMM_OPS = ("MatMul", "Gemm")
EMBEDDING_OPS = ("Gather",)
FP_OPS = ("LayerNormalization", "Softmax", "Erf", "Gelu", "FastGelu", "BiasGelu", "Tanh")
NO_QDQ_INPUT_OPS = ("LayerNormalization", "Softmax")  # TensorRT guidance: never feed these from a DQ
Q_OPS = ("QuantizeLinear",)
DQ_OPS = ("DequantizeLinear",)


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def gemm_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """MatMul/Gemm nodes: `weight` (a constant operand: a Linear layer) or `activation` (attention's QK^T, PV)."""
    inits = _initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in GEMM_OPS:
            continue
        weight = next((name for name in node.input[:2] if name in inits), None)
        shape = list(inits[weight].dims) if weight else None
        out.append(
            {
                "name": node.name,
                "op": node.op_type,
                "kind": "weight" if weight else "activation",
                "weight": weight,
                "weight_shape": shape,
            }
        )
    return out


def embedding_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Gathers reading a float table (word/position/segment embeddings), which weight-only INT8 shrinks 4x."""
    inits = _initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type in EMBEDDING_OPS and node.input and node.input[0] in inits:
            table = inits[node.input[0]]
            if table.data_type == onnx.TensorProto.FLOAT and len(table.dims) == 2:
                out.append(
                    {
                        "name": node.name,
                        "op": node.op_type,
                        "table": node.input[0],
                        "shape": list(table.dims),
                        "bytes_fp32": int(np.prod(table.dims)) * 4,
                    }
                )
    return out


def logits_nodes(model: onnx.ModelProto) -> list[str]:
    """The node(s) producing the graph's `logits` output."""
    return [node.name for node in model.graph.node if OUTPUT_NAME in node.output and node.op_type in GEMM_OPS]


def default_fp_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes of a quantizable type that stay FP by design, with the reason (the recipe's exclude_nodes add to it)."""
    return {
        name: "logits layer: 2 output columns, INT8 gains nothing and would coarsen the scores"
        for name in logits_nodes(model)
    }


# ------------------------------------------------------------------------------------------------------- rewriting


def restrict_to_quantized_consumers(model: onnx.ModelProto, quantized_ops: Iterable[str] = GEMM_OPS) -> int:
    """Rewire consumers that are not of `quantized_ops` from an activation's DQ output back to the FP tensor.

    Only activation Q/DQ pairs (Q of a computed tensor) that feed at least one node of `quantized_ops` are touched;
    weight DQs and the Q/DQ ONNX Runtime puts around Gather outputs are left alone. Returns the rewired count.
    """
    quantized_ops = set(quantized_ops)
    inits = set(_initializers(model))
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in model.graph.output}
    rewired = 0
    for dq in [n for n in model.graph.node if n.op_type in DQ_OPS]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type not in Q_OPS or q.input[0] in inits:
            continue
        fp_tensor = q.input[0]
        users = consumers.get(dq.output[0], [])
        if not any(u.op_type in quantized_ops for u in users) or dq.output[0] in graph_outputs:
            continue
        for user in users:
            if user.op_type in quantized_ops:
                continue
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = fp_tensor
                    rewired += 1
    return rewired


def remove_dangling_qdq(model: onnx.ModelProto) -> int:
    """Drop Q/DQ nodes whose outputs nobody reads any more (after rewiring)."""
    removed = 0
    while True:
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in (*Q_OPS, *DQ_OPS) and not any(o in used for o in n.output)]
        if not dead:
            return removed
        for node in dead:
            model.graph.node.remove(node)
            removed += 1


# -------------------------------------------------------------------------------------------------------- inspecting


def _dq_inputs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.output[0]: node for node in model.graph.node if node.op_type in DQ_OPS}


def qdq_violations(model: onnx.ModelProto, ops: Iterable[str] = NO_QDQ_INPUT_OPS) -> list[str]:
    """Nodes of `ops` that read a DequantizeLinear output (TensorRT guidance: there should be none)."""
    dq_out = _dq_inputs(model)
    ops = set(ops)
    return [
        f"{node.op_type} {node.name} <- {name}"
        for node in model.graph.node
        if node.op_type in ops
        for name in node.input
        if name in dq_out
    ]


def _scalar_or_list(values: np.ndarray) -> float | list[float]:
    flat = values.reshape(-1)
    return float(flat[0]) if flat.size == 1 else [float(v) for v in flat]


def activation_ranges(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Each quantized activation's calibrated range as the graph encodes it: [qmin - zp, qmax - zp] * scale."""
    inits = {name: numpy_helper.to_array(t) for name, t in ((i.name, i) for i in model.graph.initializer)}
    out = []
    for node in model.graph.node:
        if node.op_type not in Q_OPS or node.input[0] in inits:
            continue
        scale = inits.get(node.input[1])
        zp = inits.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zp is None or scale.size != 1:
            continue
        info = np.iinfo(zp.dtype)
        s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        out.append(
            {
                "tensor": node.input[0],
                "dtype": zp.dtype.name,
                "scale": s,
                "zero_point": z,
                "min": (info.min - z) * s,
                "max": (info.max - z) * s,
            }
        )
    return out


def summarize_ranges(ranges: list[dict[str, Any]], top: int = 5) -> dict[str, Any]:
    """A summary a person can read: how many tensors, the widest and narrowest ranges, the median scale."""
    if not ranges:
        return {"tensors": 0}
    width = sorted(ranges, key=lambda r: r["max"] - r["min"], reverse=True)
    keep = ("tensor", "min", "max", "scale", "zero_point")
    return {
        "tensors": len(ranges),
        "dtypes": dict(Counter(r["dtype"] for r in ranges)),
        "symmetric": all(r["zero_point"] == 0 for r in ranges),
        "median_scale": float(np.median([r["scale"] for r in ranges])),
        "widest": [{k: r[k] for k in keep} for r in width[:top]],
        "narrowest": [{k: r[k] for k in keep} for r in width[-top:][::-1]],
    }


def describe_qdq(model: onnx.ModelProto) -> dict[str, Any]:
    """Quantized and kept-FP nodes of a QDQ graph, weight/activation dtypes, and the TensorRT placement check."""
    inits = {i.name: i for i in model.graph.initializer}
    dq_out = _dq_inputs(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    quantized, kept = [], []
    weight_dtypes, per_channel = Counter(), 0
    for node in model.graph.node:
        if node.op_type not in (*GEMM_OPS, *EMBEDDING_OPS):
            continue
        dq_fed = [name for name in node.input if name in dq_out]
        if node.op_type in EMBEDDING_OPS and not dq_fed and node.input[0] not in inits:
            continue  # a Gather of shapes, not of an embedding table
        (quantized if dq_fed else kept).append({"name": node.name, "op": node.op_type})
        for name in dq_fed:
            dq = dq_out[name]
            q = producer.get(dq.input[0])
            if dq.input[0] in inits:  # stored as integers (ONNX Runtime's quantizer)
                weight_dtypes[onnx.helper.tensor_dtype_to_np_dtype(inits[dq.input[0]].data_type).name] += 1
            elif q is not None and q.op_type in Q_OPS and q.input[0] in inits:  # weight stored FP32, quantized at load
                weight_dtypes["float32 (Q/DQ folded by the runtime)"] += 1
            else:
                continue
            scale = inits.get(dq.input[1])
            if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
                per_channel += 1
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "quantized_nodes": quantized,
        "fp_nodes": kept,
        "fp_ops": {op: ops[op] for op in FP_OPS if ops.get(op)},
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "quantized_constants": dict(weight_dtypes),
        "per_channel_constants": per_channel,
        "dq_feeding_layernorm_or_softmax": qdq_violations(model),
    }


def describe_dynamic(model: onnx.ModelProto) -> dict[str, Any]:
    """Quantized and kept-FP nodes of an ORT dynamic-quantized graph (MatMulInteger / DynamicQuantize* ops)."""
    ops = Counter(node.op_type for node in model.graph.node)
    integer_ops = (
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLinear",
        "DequantizeLinear",
        "QGemm",
    )
    quantized = [
        {"name": n.name, "op": n.op_type}
        for n in model.graph.node
        if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm")
    ]
    kept = [{"name": n.name, "op": n.op_type} for n in model.graph.node if n.op_type in GEMM_OPS]
    return {
        "quantized_nodes": quantized,
        "fp_nodes": kept,
        "integer_ops": {op: ops[op] for op in integer_ops if ops.get(op)},
        "fp_ops": {op: ops[op] for op in FP_OPS if ops.get(op)},
    }


def initializer_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Weight bytes by dtype: where the file size goes."""
    out: Counter = Counter()
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        out[dtype.name] += int(np.prod(init.dims)) * dtype.itemsize
    return dict(out)
