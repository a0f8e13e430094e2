"""Which file a Triton repository serves as the model (export/pipeline.py `triton_model_source`): on CPUs an ONNX
graph (quantize's INT8 one for --precision int8) even where engines were built, on GPUs the engine asked for or the
first one built, and one-line refusals for what cannot be served."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fbcompress.core.errors import FbError
from fbcompress.export.pipeline import triton_model_source

ENGINES = ("fp16", "int8", "fp32")


def opts(kind: str = "gpu", scorer: str = "onnxruntime", precision: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(triton_kind=kind, triton_scorer=scorer, precision=precision)


@pytest.fixture
def bundle(tmp_path):
    for name in ("model.ort.onnx", "model.int8.onnx", "model.int8.plan", "model.fp16.plan"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize(("options", "served"), [
    (opts("cpu", precision="int8"), "model.int8.onnx"),  # an int8 engine is there, but it runs on GPUs only
    (opts("gpu", "python", "int8"), "model.int8.onnx"),
    (opts("cpu"), "model.ort.onnx"),
    (opts("cpu", precision="fp32"), "model.ort.onnx"),
    (opts("gpu", precision="int8"), "model.int8.plan"),
    (opts("gpu"), "model.fp16.plan"),  # the first engine built, in the given order
    (opts("gpu", precision="fp32"), "model.ort.onnx"),  # no fp32 engine: the ONNX graph is the fp32 model
])
def test_the_served_file(bundle, options, served):
    assert triton_model_source(bundle, options, "model.ort.onnx", "model.int8.onnx", ENGINES) == served


def test_a_refreshed_onnx_repository_stays_onnx_on_gpus(bundle):
    assert triton_model_source(bundle, opts("gpu"), "model.ort.onnx", "model.int8.onnx", ENGINES,
                               onnx_only=True) == "model.ort.onnx"


def test_an_engine_precision_on_cpus_is_refused(bundle):
    with pytest.raises(FbError, match="TensorRT engines run on GPUs"):
        triton_model_source(bundle, opts("cpu", precision="fp16"), "model.ort.onnx", "model.int8.onnx", ENGINES)


def test_int8_on_cpus_needs_quantize(tmp_path):
    (tmp_path / "model.ort.onnx").write_bytes(b"x")
    with pytest.raises(FbError, match="run fbcompress quantize first"):
        triton_model_source(tmp_path, opts("cpu", precision="int8"), "model.ort.onnx", "model.int8.onnx", ENGINES)
    with pytest.raises(FbError, match="has no model.int8.plan"):
        triton_model_source(tmp_path, opts("gpu", precision="int8"), "model.ort.onnx", "model.int8.onnx", ENGINES)


def test_without_engines_a_gpu_repository_serves_the_onnx_graph(tmp_path):
    (tmp_path / "model.ort.onnx").write_bytes(b"x")
    assert triton_model_source(tmp_path, opts("gpu"), "model.ort.onnx", "model.int8.onnx", ENGINES) == "model.ort.onnx"
