"""The Triton ensemble's repository as written, without a server (the real-server tests in tests/serving are in the
slow tier): which models, how the ensemble wires their tensors, where batching is ragged, what a features model
takes, and the Python scorer's padding (the function from the model file Triton runs)."""

from __future__ import annotations

import numpy as np
import pytest

from fbcompress.export.triton import read_config
from fbcompress.export.triton_ensemble import (
    ORT_MODEL,
    POSTPROCESS_MODEL,
    write_python_scorer,
    write_query_ensemble,
    write_scorer_ensemble,
)

TEXT = [{"name": n, "dtype": "int64", "shape": ["batch", "text"]} for n in ("input_ids", "attention_mask",
                                                                             "token_type_ids")]


def scorer_io(patch_dim: int) -> dict[str, list[dict]]:
    return {"inputs": [*TEXT, {"name": "patches", "dtype": "float32", "shape": ["batch", 64, patch_dim]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]}


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "bundle" / "tokenizer").mkdir(parents=True)
    (tmp_path / "bundle" / "tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "bundle" / "preprocess.py").write_text("# preprocess")
    (tmp_path / "bundle" / "model.onnx").write_bytes(b"onnx")
    return tmp_path / "bundle"


def steps_of(text: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(model, input_map, output_map) per step of an ensemble config, in order."""
    return [(block.split('"')[1], dict(_pairs(block, "input_map")), dict(_pairs(block, "output_map")))
            for block in text.split("model_name: ")[1:]]


def _pairs(block: str, kind: str) -> list[tuple[str, str]]:
    return [(line.split('key: "')[1].split('"')[0], line.split('value: "')[1].split('"')[0])
            for line in block.splitlines() if line.strip().startswith(kind)]


def test_a_pixels_scorer_ensemble_takes_text_and_image_bytes(bundle, tmp_path):
    root = tmp_path / "triton"
    summary = write_scorer_ensemble(root, "fb", bundle, scorer_io(192), 8, [1, 4, 8, 16], 100, features=False)
    assert sorted(p.name for p in root.iterdir()) == ["fb_ensemble", "fb_postprocess", "fb_preprocess"]
    ensemble = (root / "fb_ensemble" / "config.pbtxt").read_text()
    config = read_config(ensemble)
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["inputs"]] == [("text", "TYPE_STRING", [1]),
                                                                                  ("image", "TYPE_STRING", [1])]
    assert [(o["name"], o["dims"]) for o in config["outputs"]] == [("score", [1])]
    tensors = {n: n for n in ("input_ids", "attention_mask", "token_type_ids", "patches")}
    assert steps_of(ensemble) == [("fb_preprocess", {"text": "text", "image": "image"}, tensors),
                                  ("fb", tensors, {"logits": "logits"}),
                                  ("fb_postprocess", {"logits": "logits"}, {"score": "score"})]
    pre = read_config((root / "fb_preprocess" / "config.pbtxt").read_text())
    assert pre["max_batch_size"] == 8 and pre["dynamic_batching"] == {"preferred_batch_size": [4, 8],
                                                                       "max_queue_delay_microseconds": 100}
    assert pre["instance_group"] == [{"count": 1, "kind": "KIND_CPU", "profile": []}]
    assert (root / "fb_preprocess" / "1" / "preprocess.py").read_text() == "# preprocess"
    assert (root / "fb_preprocess" / "1" / "tokenizer" / "tokenizer.json").is_file()
    assert 'strings(request, "image")' in (root / "fb_preprocess" / "1" / "model.py").read_text()
    assert (config["name"], config["platform"], config["max_batch_size"]) == ("fb_ensemble", "ensemble", 8)
    post = read_config((root / "fb_postprocess" / "config.pbtxt").read_text())
    assert (post["name"], post["max_batch_size"], post["instance_group"][0]["kind"]) == ("fb_postprocess", 8,
                                                                                         "KIND_CPU")
    assert [i["name"] for i in post["inputs"]] == ["logits"] and [o["name"] for o in post["outputs"]] == ["score"]
    assert post["dynamic_batching"] == pre["dynamic_batching"]
    assert (root / "fb_postprocess" / "1" / "model.py").read_text() == POSTPROCESS_MODEL
    assert pre["name"] == "fb_preprocess"
    assert summary == {"model_name": "fb_ensemble", "inputs": {"text": "BYTES [1]",
                                                               "image": "BYTES [1] (an encoded image)"},
                       "outputs": {"score": "FP32 [1]"}, "steps": ["fb_preprocess", "fb", "fb_postprocess"],
                       "max_batch_size": 8,
                       "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}}


def test_a_features_scorer_ensemble_takes_stored_patches(bundle, tmp_path):
    """The ensemble's `patches` and the scorer's `patches` are two tensors: the preprocess output is renamed."""
    root = tmp_path / "triton"
    summary = write_scorer_ensemble(root, "fb", bundle, scorer_io(2048), 8, [], 100, features=True)
    ensemble = (root / "fb_ensemble" / "config.pbtxt").read_text()
    config = read_config(ensemble)
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["inputs"]] == [("text", "TYPE_STRING", [1]),
                                                                                  ("patches", "TYPE_FP32", [64, 2048])]
    pre_out = {"input_ids": "input_ids", "attention_mask": "attention_mask", "token_type_ids": "token_type_ids",
               "patches": "patches_model"}
    assert steps_of(ensemble)[:2] == [("fb_preprocess", {"text": "text", "patches": "patches"}, pre_out),
                                      ("fb", pre_out, {"logits": "logits"})]
    assert 'get_input_tensor_by_name(request, "patches")' in (root / "fb_preprocess" / "1" / "model.py").read_text()
    assert set(summary["inputs"]) == {"text", "patches"}
    assert read_config((root / "fb_preprocess" / "config.pbtxt").read_text())["dynamic_batching"][
        "preferred_batch_size"] == []


def test_the_python_scorer_takes_ragged_batches_and_its_graph(bundle, tmp_path):
    root = tmp_path / "triton"
    io = scorer_io(192)
    summary = write_python_scorer(root, "fb", bundle / "model.onnx", io, 8, [4], 250)
    text = (root / "fb" / "config.pbtxt").read_text()
    config = read_config(text)
    assert [i["name"] for i in config["inputs"]] == [i["name"] for i in io["inputs"]]
    assert text.split("output [")[0].count("allow_ragged_batch: true") == len(io["inputs"])
    assert "allow_ragged_batch" not in text.split("output [")[1]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 250
    assert (root / "fb" / "1" / "model.onnx").read_bytes() == b"onnx"
    assert (root / "fb" / "1" / "model.py").read_text() == ORT_MODEL
    assert summary == {"model_name": "fb", "platform": "python (ONNX Runtime CPU)", "max_batch_size": 8,
                       "copy_of": "model.onnx", "instance_kind": "KIND_CPU"}


def test_the_query_ensemble_maps_query_bytes_to_the_embedding(bundle, tmp_path):
    root = tmp_path / "triton"
    io = {"inputs": TEXT, "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", 256]}]}
    summary = write_query_ensemble(root, "fb_query", bundle, io, 64, [1, 32], 100)
    ensemble = (root / "fb_query_ensemble" / "config.pbtxt").read_text()
    config = read_config(ensemble)
    assert [(i["name"], i["dims"]) for i in config["inputs"]] == [("query", [1])]
    assert [(o["name"], o["dims"]) for o in config["outputs"]] == [("embedding", [256])]
    tensors = {n: n for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert steps_of(ensemble) == [("fb_query_preprocess", {"query": "query"}, tensors),
                                  ("fb_query", tensors, {"embedding": "embedding"})]
    assert summary["outputs"] == {"embedding": "FP32 [256]"} and summary["max_batch_size"] == 64


def test_a_missing_preprocess_module_is_refused(bundle, tmp_path):
    from fbcompress.core.errors import FbError

    (bundle / "preprocess.py").unlink()
    with pytest.raises(FbError, match="has no preprocess.py"):
        write_scorer_ensemble(tmp_path / "t", "fb", bundle, scorer_io(192), 8, [], 100, features=False)


def padded_concat():
    """The function as the Python scorer's model.py defines it (the file Triton runs)."""
    source = ORT_MODEL.split("def padded_concat", 1)[1].split("\nclass ", 1)[0]
    namespace = {"np": np}
    exec("def padded_concat" + source, namespace)  # noqa: S102 - the generated model's own code
    return namespace["padded_concat"]


def test_ragged_requests_are_padded_to_the_longest_in_order():
    concat = padded_concat()
    a = np.array([[1, 2, 3]], np.int64)
    b = np.array([[4, 5], [6, 7]], np.int64)
    out = concat([a, b])
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 0], [6, 7, 0]])
    assert out.dtype == np.int64
    assert concat([a]) is a  # a lone request passes through
    patches = [np.ones((1, 4, 2), np.float32), np.full((1, 4, 2), 2, np.float32)]
    np.testing.assert_array_equal(concat(patches), np.concatenate(patches))


def test_the_serving_kit_is_written_beside_the_repository(tmp_path):
    """triton_client.py names this bundle's ensembles; serve_triton.py and serving-requirements.txt are the files
    fbcompress ships (the ones `make serve-env` and the real-server tests use)."""
    from fbcompress.export.triton_ensemble import SERVING_FILES, client_script, write_serving_files

    class Writer:
        def path(self, rel, role):
            assert role == "triton"
            return tmp_path / rel

    written = write_serving_files(Writer(), "fb_ensemble", None)
    assert written == ["triton_client.py", "serve_triton.py", "serving-requirements.txt"]
    assert (tmp_path / "serve_triton.py").read_bytes() == (SERVING_FILES / "serve_triton.py").read_bytes()
    assert (tmp_path / "serving-requirements.txt").read_bytes() == (SERVING_FILES / "requirements.txt").read_bytes()
    client = (tmp_path / "triton_client.py").read_text()
    assert client == client_script("fb_ensemble", None)
    assert "args.model or 'fb_ensemble'" in client and "args.model or None" in client
    compile(client, "triton_client.py", "exec")
    query = client_script(None, "fb_query_ensemble")
    assert "args.model or 'fb_query_ensemble'" in query and "MODEL_" not in query
