"""A real Triton server (the nvidia-pytriton wheel's tritonserver, in the serving environment `make serve-env`)
serves the smoke bundle's ensemble: raw text and image bytes in, the score `fbcompress eval` computes out, over HTTP
and gRPC; bad requests get error responses and the server keeps serving."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

PROBE = Path(__file__).with_name("triton_probe.py")


@pytest.fixture(scope="module")
def serving():
    from fbcompress.core.errors import BackendUnavailable
    from fbcompress.serving.triton_server import TritonDist

    try:
        return TritonDist.find()
    except BackendUnavailable as exc:
        pytest.skip(f"no Triton server here: {exc}")


@pytest.fixture(scope="module")
def served(serving, smoke_bundle, tmp_path_factory):
    """The smoke bundle with its Triton repository (ORT in the Python backend: the wheel has no ONNX Runtime
    backend), served for the module."""
    from fbcompress.serving.triton_server import serve

    bundle = tmp_path_factory.mktemp("served") / "smoke"
    shutil.copytree(smoke_bundle, bundle)
    result = run("export", "-m", json.loads((bundle / "manifest.json").read_text())["source"]["checkpoint"],
                 "--target", "triton", "--out", bundle, "--triton-kind", "cpu", "--triton-scorer", "python")
    assert result.exit_code == 0, result.output
    with serve(bundle / "triton", serving, timeout=240) as server:
        yield bundle, server


def probe(serving, url: str, protocol: str, cases: list[dict], tmp_path: Path) -> list[dict]:
    path = tmp_path / f"cases-{protocol}.json"
    path.write_text(json.dumps(cases))
    done = subprocess.run([str(serving.python), str(PROBE), url, protocol, str(path)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def pair_case(text: str, image: Path) -> dict:
    return {"model": "fashionbert_ensemble", "output": "score",
            "inputs": [{"name": "text", "datatype": "BYTES", "data": [[text]]},
                       {"name": "image", "datatype": "BYTES", "file": str(image)}]}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_server_scores_raw_text_and_images_as_eval_does(served, serving, tiny_data, protocol, tmp_path):
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.evaluation.metrics import score_pairs
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.runtime.onnxruntime import OrtScorer

    bundle, server = served
    scorer = OrtScorer.open(bundle / "model.ort.onnx")  # the file the Triton scorer serves, as `eval` opens it
    dataset = DatasetDir.open(tiny_data)
    data = SplitData(dataset, "test", load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    pairs = dataset.eval_rows("pairs", "test")[:12]
    expected = score_pairs(scorer, data, pairs)
    cases = [pair_case(data.records[data.position(p["text"])]["text"],
                       dataset.root / data.records[data.position(p["image"])]["image"]) for p in pairs]
    answers = probe(serving, server.http if protocol == "http" else server.grpc, protocol, cases, tmp_path)
    got = np.array([a["output"][0][0] for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_bad_requests_get_errors_and_the_server_keeps_serving(served, serving, tiny_data, tmp_path):
    from fbcompress.data.dataset_dir import DatasetDir

    bundle, server = served
    dataset = DatasetDir.open(tiny_data)
    image = dataset.root / dataset.records("test")[0]["image"]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    good = pair_case("a red shirts, style 1", image)
    cases = [
        {**good, "inputs": good["inputs"][:1]},  # the image missing
        {**good, "inputs": [{"name": "text", "datatype": "FP32", "data": [[1.0]]}, good["inputs"][1]]},  # dtype
        pair_case("a red shirt", garbage),  # does not decode
        pair_case("red " * 3000, image),  # over the text limit
        pair_case("   ", image),  # empty
        good,
    ]
    answers = probe(serving, server.http, "http", cases, tmp_path)
    assert [("error" in a) for a in answers] == [True, True, True, True, True, False], answers
    assert "does not decode" in answers[2]["error"] and "over the limit" in answers[3]["error"]
    assert 0.0 < answers[-1]["output"][0][0] < 1.0
    assert server.process.poll() is None  # still serving


@pytest.mark.slow
def test_the_bundles_client_script_calls_the_ensemble(served, serving, tiny_data):
    from fbcompress.data.dataset_dir import DatasetDir

    bundle, server = served
    dataset = DatasetDir.open(tiny_data)
    image = dataset.root / dataset.records("test")[0]["image"]
    done = subprocess.run([str(serving.python), str(bundle / "triton_client.py"), "--url", server.http, "--text",
                           "a red shirt", "--image", str(image)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 0.0 < json.loads(done.stdout)["score"] < 1.0


@pytest.mark.slow
def test_the_query_encoder_ensemble_embeds_what_shoppers_type(serving, query_encoder, tmp_path):
    """The search bundle's ensemble: query bytes in, the embedding the exported query encoder computes out (its
    preprocess.py is the code `search` runs); an empty query is refused."""
    from fbcompress.recipes import load_recipe
    from fbcompress.runtime.embedding import embed_queries
    from fbcompress.search.models import open_query_encoder
    from fbcompress.serving.triton_server import serve

    bundle = tmp_path / "search"
    for target in ("onnx", "triton"):
        extra = ["--triton-kind", "cpu", "--triton-scorer", "python"] if target == "triton" else []
        result = run("export", "-m", query_encoder, "--target", target, "--out", bundle, "--latency-runs", "0", *extra)
        assert result.exit_code == 0, result.output
    queries = ["red floral maxi dress", "  shorts  ", "gingham button-front shirt long sleeve"]
    expected = embed_queries(open_query_encoder(bundle, load_recipe("smoke").retriever), queries)
    cases = [{"model": "fashionbert_query_ensemble", "output": "embedding",
              "inputs": [{"name": "query", "datatype": "BYTES", "data": [[q]]}]} for q in [*queries, " "]]
    with serve(bundle / "triton", serving, timeout=240) as server:
        answers = probe(serving, server.grpc, "grpc", cases, tmp_path)
    np.testing.assert_allclose(np.array([a["output"][0] for a in answers[:3]]), expected, atol=1e-5)
    assert "empty" in answers[3]["error"]
