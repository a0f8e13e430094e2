"""Issue defect 8, "INT8 engine runs FP32 outside the GEMMs": `model.int8.trt.onnx` carries FP16 outside the
quantized ops, with model.fp16.onnx's policy (LayerNorm, Softmax and the logits layer FP32, FP32 graph I/O), at
opset >= 19 (float16 Q/DQ scales); its accuracy is scored on the file itself where ONNX Runtime runs it, else on its
FP32 QDQ graph, labelled as such; the manifest and the report state the policy.

Before the fix the file was the FP32 QDQ graph straight from the quantizer (opset 17, FLOAT everywhere but the
INT8 weights), so a strongly typed TensorRT build ran LayerNorm's neighbours, GELU, the residual Adds and every
GEMM output in FP32/TF32. The bundle is the session's quantized smoke bundle (conftest.py `quantized_smoke`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run
from onnx import TensorProto, helper, numpy_helper

TRT = "model.int8.trt.onnx"
FLOAT, FLOAT16, INT8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8
FP16_OPS = ("Add", "Sub", "Mul", "Div", "Sqrt", "Erf", "Tanh", "Transpose", "MatMul")  # not quantized, not blocked



def typed(path: Path) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The graph with strict shape inference, and every tensor's element type (values, I/O, initializers)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output,
                                                             *model.graph.value_info)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return model, types


def floats(names, types) -> list[int]:
    return [types[n] for n in names if n and types.get(n) in (FLOAT, FLOAT16)]


def opset(model: onnx.ModelProto) -> int:
    return max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def test_trt_int8_file_is_fp16_outside_the_quantized_gemms(quantized_smoke):
    """Catches the defect itself: on the old file opset is 17, the Adds/Erf/Mul/MatMul outputs are FLOAT and the
    Q/DQ scales float32. Checks on the file: non-quantized ops FLOAT16 in and out, MatMul outputs FLOAT16,
    LayerNorm/Softmax/logits Gemm inputs FLOAT, graph I/O FLOAT, scales FLOAT16, weights and zero points INT8."""
    root, _, _ = quantized_smoke
    model, types = typed(root / TRT)
    assert opset(model) >= 19
    assert {i.name: types[i.name] for i in model.graph.input if i.name == "patches"} == {"patches": FLOAT}
    assert [(o.name, types[o.name]) for o in model.graph.output] == [("logits", FLOAT)]
    seen = {op: 0 for op in (*FP16_OPS, "LayerNormalization", "Softmax", "QuantizeLinear", "DequantizeLinear")}
    inits = {i.name for i in model.graph.initializer}
    logits_gemm = []
    for node in model.graph.node:
        if node.op_type in FP16_OPS:
            seen[node.op_type] += 1
            assert set(floats([*node.input, *node.output], types)) == {FLOAT16}, f"{node.op_type} {node.name}"
        elif node.op_type in ("LayerNormalization", "Softmax"):
            seen[node.op_type] += 1
            assert set(floats(node.input, types)) == {FLOAT}, f"{node.op_type} {node.name} must read FP32"
        elif node.op_type == "Gemm":
            if any(types.get(t) == FLOAT for t in node.input):
                logits_gemm.append(node)
            else:  # the quantized pooler Gemm: FP16 from its DQs, FP16 out
                assert set(floats([*node.input, *node.output], types)) == {FLOAT16}, node.name
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            seen[node.op_type] += 1
            x, scale, zero_point = node.input[:3]
            assert types[scale] == FLOAT16 and scale in inits, f"{node.name}: scale {scale}"
            assert types[zero_point] == INT8, node.name
            if node.op_type == "QuantizeLinear":
                assert types[x] == FLOAT16 and types[node.output[0]] == INT8, node.name
            else:
                assert types[node.output[0]] == FLOAT16, node.name  # DequantizeLinear-19: follows its scale
                assert types[x] == INT8, node.name  # a weight stored int8, or a Q's output
    assert all(seen.values()), seen  # every kind of node was checked (the smoke model has them all)
    # the logits Gemm is the one FP32 GEMM (the policy's final-node rule), fed by a Cast from FP16
    assert len(logits_gemm) == 1 and set(floats([*logits_gemm[0].input], types)) == {FLOAT}
    weights = [i for i in model.graph.initializer if i.data_type == INT8 and len(i.dims) == 2]
    assert weights and all(numpy_helper.to_array(w).dtype == np.int8 for w in weights)


def test_trt_int8_file_has_model_fp16_onnx_policy(quantized_smoke, tmp_path):
    """int8.plan must differ from fp16.plan only in the quantized GEMMs: every node of model.fp16.onnx (made here
    by convert_fp16 from the same model.onnx) has the same float types, node for node, in model.int8.trt.onnx.
    Catches the old FP32 file and any drift between the two conversions' block lists or final-node rule."""
    from fbcompress.export.onnx_export import convert_fp16

    root, _, _ = quantized_smoke
    convert_fp16(root / "model.onnx", tmp_path / "model.fp16.onnx")
    fp16, fp16_types = typed(tmp_path / "model.fp16.onnx")
    trt, trt_types = typed(root / TRT)
    trt_nodes = {n.name: n for n in trt.graph.node}
    compared = 0
    for node in fp16.graph.node:
        if node.op_type in ("Cast", "Constant") or node.name not in trt_nodes:
            continue
        other = trt_nodes[node.name]
        assert floats(node.input, fp16_types) == floats(other.input, trt_types), node.name
        assert floats(node.output, fp16_types) == floats(other.output, trt_types), node.name
        compared += 1
    assert compared > 50


def test_trt_int8_policy_and_accuracy_source_in_manifest_and_report(quantized_smoke, tiny_data, tmp_path):
    """The manifest and the report record the policy (high_precision fp16, the FP32 ops and node, the opset) and
    say the guard scored the file itself (ONNX Runtime CPU runs the FP16 QDQ graph): its test AUC is what `eval`
    gives for the shipped file. Catches a missing policy record and a guard that scored another graph."""
    root, report, _ = quantized_smoke
    entry = json.loads((root / "manifest.json").read_text())["models"][TRT]
    assert entry["precision"] == "int8" and entry["high_precision"] == "fp16"
    policy = entry["precision_policy"]
    assert policy["fp32_ops"] == ["LayerNormalization", "Softmax"] and policy["fp32_nodes"] == ["/ita_head/Gemm"]
    assert policy["opset"] >= 19 and policy["io_dtypes"].startswith("float32")
    assert policy["accuracy_scored_on"] == TRT
    assert entry["accuracy"]["onnxruntime_cpu"] == "runs" and entry["accuracy"]["scored_file"] == TRT
    settings = report["files"][TRT]["settings"]
    assert settings["precision"]["opset_before"] == 17 and settings["precision"]["high_precision"] == "fp16"
    assert "FP16" in entry["purpose"] and "scored_file" not in report["accuracy"]["files"][TRT]
    markdown = (root / "quantization.md").read_text()
    assert "precision outside the quantized GEMMs: FP16, except LayerNormalization, Softmax" in markdown
    assert f"accuracy scored on: {TRT} (ONNX Runtime CPU: runs)" in markdown
    eval_json = tmp_path / "eval.json"
    result = run("eval", "--model", root / TRT, "--data", tiny_data, "--json", eval_json)
    assert result.exit_code == 0, result.output
    assert json.loads(eval_json.read_text())["auc"] == pytest.approx(entry["accuracy"]["auc"], abs=1e-9)


@pytest.mark.slow
def test_fp32_qdq_graph_stands_in_where_onnx_runtime_cannot_run_the_fp16_file(
    smoke_bundle, tiny_data, tmp_path, monkeypatch
):
    """Where ONNX Runtime's CPU provider cannot run the FP16 file (simulated: no FP16 kernel), the loop and the
    guard score its FP32 QDQ graph, and the manifest, the JSON and the Markdown report say so; the shipped file is
    still the FP16 one. Catches a quantize that crashes, or reports the FP16 file as scored, in that case."""
    import shutil

    from fbcompress.quantize import pipeline

    error = "NOT_IMPLEMENTED : Could not find an implementation for Erf(13) node with name 'e' (simulated)"
    asked: list[str] = []

    def cannot(path: Path, feed) -> str:
        asked.append(path.name)
        return error

    monkeypatch.setattr(pipeline, "ort_cpu_problem", cannot)
    root = tmp_path / "exported" / smoke_bundle.name
    shutil.copytree(smoke_bundle, root)
    report_path = tmp_path / "q.json"
    result = run("quantize", "--model", root / "model.onnx", "--data", tiny_data, "--json", report_path,
                 "--set", "quantize.cpu_file=static", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    assert asked == [TRT] and "ONNX Runtime cannot run it" in result.output
    entry = json.loads((root / "manifest.json").read_text())["models"][TRT]
    accuracy = entry["accuracy"]
    assert accuracy["onnxruntime_cpu"] == "cannot run" and accuracy["onnxruntime_cpu_error"] == error
    assert accuracy["scored_file"].startswith(f"{TRT} before its FP16 conversion (FP32 QDQ")
    assert entry["precision_policy"]["accuracy_scored_on"] == accuracy["scored_file"]
    assert error in entry["runtime"]
    report = json.loads(report_path.read_text())
    assert report["accuracy"]["files"][TRT]["scored_file"] == accuracy["scored_file"]
    assert report["accuracy"]["files"][TRT]["passed"]  # the guard still ran, on the stand-in, same tolerance
    assert "FP16 rounding of the engine is not measured" in report["accuracy"]["note"]
    assert f"**`{TRT}` was not scored itself" in (root / "quantization.md").read_text()
    assert opset(onnx.load(str(root / TRT))) >= 19  # what ships is still the FP16 file


def _tiny_qdq(tmp_path: Path) -> Path:
    """x -> MatMul(w) -> Add(b) -> LayerNorm -> MatMul(w2) -> logits, quantized like the TensorRT file."""
    from fbcompress.quantize import ort_methods as M
    from fbcompress.quantize.calibration import BatchReader

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.standard_normal((16, 16))), ("b", rng.standard_normal(16)), ("g", np.ones(16)),
        ("beta", np.zeros(16)), ("w2", rng.standard_normal((16, 2))))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["a"], name="add"),
             helper.make_node("LayerNormalization", ["a", "g", "beta"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("logits", FLOAT, ["b", 2])], inits)
    src = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    batches = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(2)]
    settings = M.StaticSettings(exclude=["head"])
    M.calibrate(src, BatchReader(batches), tmp_path / "cache.json", settings)
    M.quantize_trt(src, tmp_path / "tiny.qdq.onnx", tmp_path / "cache.json", settings)
    return tmp_path / "tiny.qdq.onnx"


def test_convert_qdq_fp16_types_and_its_checks(tmp_path, monkeypatch):
    """The conversion on its own (a tiny graph, no fixtures): opset 17 -> 19, FP16 Add and MatMul output, FP32
    LayerNorm and logits node, FLOAT16 scales, INT8 weights; ONNX Runtime CPU runs it. Its type check rejects the
    FP32 QDQ graph (catches a verifier that passes anything), and a version converter that fails, or leaves the
    opset below 19, is an FbError (catches a conversion that ships float16 scales at opset 17)."""
    import onnxruntime as ort

    from fbcompress.core.errors import FbError
    from fbcompress.export import onnx_export as E

    qdq = _tiny_qdq(tmp_path)
    info = E.convert_qdq_fp16(qdq, tmp_path / "tiny.fp16.onnx")
    assert (info["opset_before"], info["opset"], info["fp32_nodes"]) == (17, 19, ["head"])
    model, types = typed(tmp_path / "tiny.fp16.onnx")
    by_name = {n.name: n for n in model.graph.node}
    assert types[by_name["mm"].output[0]] == FLOAT16 and set(floats(by_name["add"].input, types)) == {FLOAT16}
    assert set(floats(by_name["ln"].input, types)) == {FLOAT} and set(floats(by_name["head"].input, types)) == {FLOAT}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(types[n.input[1]] == FLOAT16 for n in dqs)
    assert any(types[n.input[0]] == INT8 and n.input[0] in {i.name for i in model.graph.initializer} for n in dqs)
    session = ort.InferenceSession(str(tmp_path / "tiny.fp16.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    reference = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(session.run(None, {"x": x})[0], reference, atol=0.05)
    old, _ = typed(qdq)
    problems = E.qdq_fp16_type_problems(old, ["head"])
    assert any("opset 17" in p for p in problems) and any("scale" in p for p in problems)

    def broken(model, target):
        raise RuntimeError("adapter missing for Foo")

    monkeypatch.setattr(onnx.version_converter, "convert_version", broken)
    with pytest.raises(FbError, match="cannot raise tiny.qdq.onnx from opset 17 to 19.*adapter missing"):
        E.convert_qdq_fp16(qdq, tmp_path / "again.onnx")
    monkeypatch.setattr(onnx.version_converter, "convert_version", lambda model, target: model)  # a silent no-op
    with pytest.raises(FbError, match="from opset 17 to 19.*it returned opset 17"):
        E.convert_qdq_fp16(qdq, tmp_path / "again.onnx")
