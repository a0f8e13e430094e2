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
from triton_helpers import probe, serving_env


@pytest.fixture(scope="module")
def serving():
    return serving_env()


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
        assert str(bundle / "serve_triton.py") in server.process.args  # started as the bundle README says
        yield bundle, server


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
def test_concurrent_requests_of_different_lengths_are_batched_and_score_as_alone(served, serving, tiny_data,
                                                                                 tmp_path):
    """Requests in flight together: the dynamic batcher hands the Python scorer requests of different text lengths
    in one batch (ragged), it runs them padded to the longest, and each answer is the one the request gets alone
    (which the test above holds to eval's). A copy whose batchers wait up to 200 ms makes the batches certain."""
    import re
    import urllib.request

    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.serving.triton_server import serve

    bundle, server = served
    dataset = DatasetDir.open(tiny_data)
    records = dataset.records("test")
    cases = [pair_case(records[i % len(records)]["text"] + " with pockets" * (i % 5),
                       dataset.root / records[(i * 7) % len(records)]["image"]) for i in range(32)]
    alone = probe(serving, server.http, "http", cases, tmp_path)
    waiting = tmp_path / "waiting"
    shutil.copytree(bundle, waiting)
    for config in (waiting / "triton").glob("*/config.pbtxt"):
        config.write_text(re.sub(r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 200000",
                                 config.read_text()))
    with serve(waiting / "triton", serving, timeout=240) as batching:
        together = probe(serving, batching.http, "http", cases, tmp_path, concurrent=True)
        with urllib.request.urlopen(f"http://{batching.http}/v2/models/fashionbert/stats", timeout=10) as response:
            stats = json.loads(response.read())["model_stats"][0]
    np.testing.assert_allclose([a["output"][0][0] for a in together], [a["output"][0][0] for a in alone], atol=1e-5)
    assert int(stats["inference_count"]) == 32 and int(stats["execution_count"]) <= 16, stats


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
    readme = (bundle / "README.md").read_text()
    three = readme.split("three commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert three[0].endswith("pip install -r serving-requirements.txt")
    assert (bundle / "serving-requirements.txt").is_file()
    assert three[1].startswith("serve/bin/python serve_triton.py")  # what the fixture's server was started by
    assert three[2].startswith("serve/bin/python triton_client.py --url 127.0.0.1:8000 --text")
    assert "This bundle's scorer: **python (ONNX Runtime CPU)** (served for real)" in readme


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


def test_the_launcher_refuses_what_it_cannot_serve(tmp_path):
    """The bundle's serve_triton.py: a missing repository, or a Python without the wheel, is one line and exit 2."""
    import sys

    from fbcompress.serving.triton_server import LAUNCHER

    (tmp_path / "triton").mkdir()
    for args, said in ((["--repository", str(tmp_path / "nowhere")], "model repository not found"),
                       (["--repository", str(tmp_path / "triton")], "nvidia-pytriton is not installed")):
        done = subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done


def test_a_quantized_bundle_serves_its_cpu_int8_graph(quantized_smoke, serving, tiny_data, tmp_path):
    """On CPUs `--precision int8` serves `fbcompress quantize`'s guarded INT8 graph (Triton's ONNX Runtime backend, or
    ONNX Runtime in the Python backend), and the real server's scores are eval's of that graph."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.evaluation.metrics import score_pairs
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.runtime.onnxruntime import OrtScorer
    from fbcompress.serving.triton_server import serve

    bundle = tmp_path / "int8"
    shutil.copytree(quantized_smoke[0], bundle)
    checkpoint = json.loads((bundle / "manifest.json").read_text())["source"]["checkpoint"]
    result = run("export", "-m", checkpoint, "--target", "triton", "--out", bundle, "--precision", "int8",
                 "--triton-kind", "cpu")
    assert result.exit_code == 0, result.output
    triton = json.loads((bundle / "manifest.json").read_text())["triton"]
    assert (triton["platform"], triton["copy_of"]) == ("onnxruntime_onnx", "model.int8.onnx")
    result = run("export", "-m", checkpoint, "--target", "triton", "--out", bundle, "--precision", "int8",
                 "--triton-scorer", "python")
    assert result.exit_code == 0, result.output
    assert json.loads((bundle / "manifest.json").read_text())["triton"]["copy_of"] == "model.int8.onnx"
    scorer = OrtScorer.open(bundle / "model.int8.onnx")
    dataset = DatasetDir.open(tiny_data)
    data = SplitData(dataset, "test", load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    pairs = dataset.eval_rows("pairs", "test")[:8]
    cases = [pair_case(data.records[data.position(p["text"])]["text"],
                       dataset.root / data.records[data.position(p["image"])]["image"]) for p in pairs]
    with serve(bundle / "triton", serving, timeout=240) as server:
        answers = probe(serving, server.http, "http", cases, tmp_path)
    np.testing.assert_allclose([a["output"][0][0] for a in answers], score_pairs(scorer, data, pairs), atol=1e-5)


def test_a_missing_serving_environment_or_repository_says_what_is_missing(tmp_path):
    import sys

    from fbcompress.core.errors import BackendUnavailable, FbError
    from fbcompress.serving.triton_server import Server, TritonDist, free_ports, serve

    with pytest.raises(BackendUnavailable, match="no serving environment at .*make serve-env"):
        TritonDist.find(tmp_path / "nowhere")
    fake = tmp_path / "env" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").symlink_to(sys.executable)  # a Python without the wheel: the launcher's own words
    with pytest.raises(BackendUnavailable, match="nvidia-pytriton is not installed"):
        TritonDist.find(tmp_path / "env")
    with pytest.raises(FbError, match="model repository not found"), serve(tmp_path / "none", TritonDist(fake)):
        pass
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p < 65536 for p in ports)
    log = tmp_path / "server.log"
    log.write_text("I1 loading\nE1207 model fb: UNAVAILABLE: bad\n" + "".join(f"I1 line {i}\n" for i in range(20)))
    tail = Server("h", "g", None, log).log_tail(lines=3)
    assert tail.splitlines() == ["E1207 model fb: UNAVAILABLE: bad", "...", "I1 line 17", "I1 line 18", "I1 line 19"]
