"""Per-node quantization error: which MatMuls to return to floating point first.

For every quantized MatMul/Gemm of a QDQ graph, its FP32 inputs and output are captured from the FP32 model on the
calibration batches; the node is then recomputed with exactly the graph's Q/DQ (its scales, zero points, per-channel
axes, INT8 weights) and compared with the FP32 output:

    error = ||Y_int8 - Y_fp32||_F / ||Y_fp32||_F      (over all calibration batches)

This isolates each node's own rounding error (the errors of earlier nodes are not carried in), so the ranking says
where INT8 hurts, not where errors happen to accumulate. It needs one FP32 run, no re-quantization per node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fbcompress.core.errors import FbError
from fbcompress.quantize.graph import DQ_OPS, GEMM_OPS, Q_OPS


def fake_quant(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """Q then DQ as ONNX defines them (round half to even, saturate to the zero point's integer type)."""
    info = np.iinfo(zero_point.dtype)
    scale = scale.astype(np.float32)
    zp = zero_point.astype(np.float32)
    if scale.size > 1 and axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.clip(np.round(x / scale) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(np.float32)


def dequant(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None) -> np.ndarray:
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.size > 1 and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class _Operand:
    """How one input of a quantized node is made: a constant (already dequantized) or a fake-quantized activation."""

    def __init__(
        self,
        fp_name: str | None,
        const: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        zero_point: np.ndarray | None = None,
        axis: int | None = None,
    ):
        self.fp_name = fp_name
        self.const = const
        self.scale, self.zero_point, self.axis = scale, zero_point, axis

    def value(self, captured: dict[str, np.ndarray]) -> np.ndarray:
        if self.const is not None:
            return self.const
        assert self.fp_name is not None
        x = captured[self.fp_name]
        if self.scale is None:
            return x
        assert self.zero_point is not None
        return fake_quant(x, self.scale, self.zero_point, self.axis)


def _operands(qdq: onnx.ModelProto, fp_inits: dict[str, np.ndarray]) -> dict[str, tuple[onnx.NodeProto, list]]:
    """For each quantized MatMul/Gemm of `qdq`: the node and how each of its inputs is obtained."""
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producer = {out: node for node in qdq.graph.node for out in node.output}
    plans: dict[str, tuple[onnx.NodeProto, list]] = {}
    for node in qdq.graph.node:
        if node.op_type not in GEMM_OPS:
            continue
        operands, any_q = [], False
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type in DQ_OPS:
                any_q = True
                scale = inits[dq.input[1]]
                zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
                axis = _attr(dq, "axis", 1)
                if dq.input[0] in inits:  # a weight (or bias) stored as integers
                    operands.append(_Operand(None, const=dequant(inits[dq.input[0]], scale, zp, axis)))
                    continue
                q = producer.get(dq.input[0])
                if q is None or q.op_type not in Q_OPS:
                    raise FbError(f"{node.name}: DequantizeLinear {dq.name} is not fed by a QuantizeLinear")
                zp_q = inits.get(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
                operands.append(
                    _Operand(q.input[0], scale=inits[q.input[1]], zero_point=zp_q, axis=_attr(q, "axis", 1))
                )
            elif name in fp_inits:
                operands.append(_Operand(None, const=fp_inits[name]))
            elif name in inits:
                operands.append(_Operand(None, const=inits[name].astype(np.float32)))
            else:
                operands.append(_Operand(name))
        if any_q:
            plans[node.name] = (node, operands)
    return plans


def _compute(node: onnx.NodeProto, values: list[np.ndarray]) -> np.ndarray:
    if node.op_type == "MatMul":
        return np.matmul(values[0], values[1])
    a, b = values[0], values[1]
    if _attr(node, "transA", 0):
        a = a.T
    if _attr(node, "transB", 0):
        b = b.T
    y = float(_attr(node, "alpha", 1.0)) * (a @ b)
    if len(values) > 2:
        y = y + float(_attr(node, "beta", 1.0)) * values[2]
    return y


def node_errors(
    fp32_path: str | Path, qdq: onnx.ModelProto, batches: list[dict[str, np.ndarray]], session_factory
) -> list[dict[str, Any]]:
    """Relative output error of each quantized MatMul/Gemm of `qdq`, worst first.

    `session_factory(model_proto) -> onnxruntime.InferenceSession` runs the augmented FP32 model (so the caller
    controls threads and providers).
    """
    fp32 = onnx.load(str(fp32_path))
    fp_inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    plans = _operands(qdq, fp_inits)
    fp_nodes = {node.name: node for node in fp32.graph.node}
    wanted: list[str] = []
    for name, (_, operands) in plans.items():
        if name not in fp_nodes:
            raise FbError(f"node {name} of the quantized graph is not in {fp32_path}")
        wanted += [op.fp_name for op in operands if op.fp_name]
        wanted.append(fp_nodes[name].output[0])
    existing = {o.name for o in fp32.graph.output} | {i.name for i in fp32.graph.input}
    for name in dict.fromkeys(wanted):
        if name not in existing:
            fp32.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = session_factory(fp32)
    feeds = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    err = dict.fromkeys(plans, 0.0)
    ref = dict.fromkeys(plans, 0.0)
    for batch in batches:
        captured = dict(zip(outputs, session.run(None, {k: batch[k] for k in feeds}), strict=True))
        captured.update({k: batch[k] for k in feeds})
        for name, (node, operands) in plans.items():
            y_fp = captured[fp_nodes[name].output[0]].astype(np.float64)
            y_q = _compute(node, [op.value(captured) for op in operands]).astype(np.float64)
            err[name] += float(np.sum((y_q - y_fp) ** 2))
            ref[name] += float(np.sum(y_fp**2))
    rows = [
        {
            "name": name,
            "op": plans[name][0].op_type,
            "rel_error": float(np.sqrt(err[name] / ref[name])) if ref[name] > 0 else 0.0,
        }
        for name in plans
    ]
    return sorted(rows, key=lambda r: r["rel_error"], reverse=True)
