"""The online query encoder: distilled from the retriever's tower into its space, exported, quantized behind the
retrieval guard, gated by check --index, benchmarked by bench --index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run, stdout_json


def test_the_query_encoder_embeds_into_the_retrievers_space(query_encoder, retriever, search_index, search_data):
    from fbcompress.modeling.checkpoint import load_tower

    student, ckpt = load_tower(query_encoder)
    tower, tower_ckpt = load_tower(retriever)
    assert student.tower.role == "query" and student.config.num_hidden_layers == 1
    assert student.tower.space == f"retriever:{tower_ckpt.weights_sha256}"  # the index stays valid
    assert student.embedding_dim == tower.embedding_dim
    meta = json.loads((query_encoder / "fbcompress.json").read_text())
    assert meta["kind"] == "query-encoder" and meta["layer_map"] == [1]  # the tower's last layer
    assert {"val_recall@10", "tower_recall@10"} <= set(meta["metrics"])
    # it searches the retriever's index as is
    result = run("eval-retrieval", "--index", search_index, "--data", search_data, "-m", query_encoder, "--json", "-")
    assert result.exit_code == 0, result.output
    assert stdout_json(result)["encoder"]["space"] == student.tower.space


def test_the_listwise_and_embedding_terms_vanish_only_at_the_tower():
    import torch.nn.functional as F

    from fbcompress.training.query_distill import embedding_loss, listwise_loss

    teacher = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.5]]), dim=-1)
    products = F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert embedding_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert listwise_loss(teacher, teacher, products, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    other = F.normalize(teacher + torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), dim=-1)
    assert embedding_loss(other, teacher).item() == pytest.approx((1 - (other * teacher).sum(-1)).mean().item())
    assert listwise_loss(other, teacher, products, 0.05).item() > 0.01


def test_a_narrower_query_encoder_is_cut_out_of_the_tower(retriever, search_data, tmp_path):
    """hidden 16 of the smoke tower's 32: whole heads kept, the projection keeps the embedding size."""
    from fbcompress.modeling.checkpoint import load_tower

    out = tmp_path / "narrow"
    result = run("distill", "-r", "smoke", "--retriever", retriever, "--data", search_data, "--out", out,
                 "--set", "query_encoder.hidden_size=16", "--set", "query_encoder.num_heads=1",
                 "--set", "query_encoder.intermediate_size=32")
    assert result.exit_code == 0, result.output
    student, _ = load_tower(out)
    assert student.config.hidden_size == 16 and student.projection.weight.shape == (16, 16)


def test_distill_needs_exactly_one_source(retriever, search_teacher, search_data, query_encoder, tmp_path):
    common = ["distill", "-r", "smoke", "--data", search_data, "--out", tmp_path / "x"]
    assert_one_line_error(run(*common), "exactly one of --teacher")
    assert_one_line_error(run(*common, "--teacher", search_teacher, "--retriever", retriever), "exactly one")
    assert_one_line_error(run(*common, "--retriever", search_teacher), "not a dual-tower retriever")
    assert_one_line_error(run(*common, "--retriever", query_encoder), "query encoder already")
    assert_one_line_error(run("index", "build", "-m", query_encoder, "--data", search_data, "--out", tmp_path / "i"),
                          "is a query encoder")
    assert not (tmp_path / "x").exists() and not (tmp_path / "i").exists()


def test_the_search_bundle_carries_the_query_encoder_and_what_serving_needs(search_bundle, query_encoder):
    from fbcompress.bundle.store import Bundle
    from fbcompress.export.query_encoder import read_tower_metadata
    from fbcompress.modeling.checkpoint import load_tower

    bundle = Bundle.open(search_bundle)
    assert bundle.verify_all()
    manifest = bundle.manifest
    assert manifest["kind"] == "search" and manifest["tower"]["role"] == "query"
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"][0]["shape"] == ["batch", 16]
    assert manifest["preprocessing"]["query"]["token_type_ids"] == 2
    entry = manifest["models"]["query_encoder.onnx"]
    assert entry["parity"]["max_abs_diff"] < 1e-4 and entry["io"]["outputs"][0]["shape"] == ["batch", 16]
    student, _ = load_tower(query_encoder)
    assert read_tower_metadata(search_bundle / "query_encoder.onnx").space == student.tower.space
    readme = (search_bundle / "README.md").read_text()
    assert "## The online path of a search" in readme and "token_type_ids" in readme and "re-rank" in readme.lower()
    # the ONNX query encoder embeds like the checkpoint (VSL: a padded batch the same as alone)
    from fbcompress.runtime.embedding import query_inputs
    from fbcompress.runtime.onnxruntime import cpu_session

    session = cpu_session(search_bundle / "query_encoder.onnx")
    inputs = query_inputs([[101, 2417, 3797, 102], [101, 2417, 102]], 0)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        expected = student.encode_query(**inputs).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_quantize_guards_each_int8_query_encoder_on_retrieval(search_bundle, search_index, search_data, tmp_path):
    import shutil

    report = json.loads((search_bundle / "quantization.json").read_text())
    assert report["split"] == "val" and set(report["files"]) == {"query_encoder.int8.onnx",
                                                                  "query_encoder.int8.trt.onnx"}
    for rel, entry in report["files"].items():
        assert set(entry["drops"]) == {"recall@10", "ndcg@10"}
        assert entry["shipped"] == all(entry["drops"][k] <= entry["limits"][k] for k in entry["drops"])
        assert entry["shipped"] == (search_bundle / rel).is_file()
    # a tolerance no quantization can meet: nothing ships, and the earlier INT8 files leave the bundle
    copy = tmp_path / "search"
    shutil.copytree(search_bundle, copy)
    result = run("quantize", "-m", copy, "--data", search_data, "--index", search_index,
                 "--set", "quantize.max_recall10_drop=-1", "--set", "quantize.max_ndcg10_drop=-1")
    assert result.exit_code == 1, result.output
    assert not (copy / "query_encoder.int8.onnx").exists() and not (copy / "query_encoder.int8.trt.onnx").exists()
    manifest = json.loads((copy / "manifest.json").read_text())
    assert "query_encoder.int8.onnx" not in manifest["models"] and "query_encoder.int8.onnx" not in manifest["files"]


def test_quantize_refuses_an_index_of_another_space(search_bundle, search_teacher, search_data, tmp_path):
    other = tmp_path / "zero-shot"
    assert run("index", "build", "-m", search_teacher, "--data", search_data, "--out", other).exit_code == 0
    assert_one_line_error(run("quantize", "-m", search_bundle, "--data", search_data, "--index", other),
                          "another embedding space")
    assert_one_line_error(run("quantize", "-m", search_bundle, "--data", search_data), "give --index")


def test_the_search_bundle_builds_a_tensorrt_kit_and_a_triton_model(query_encoder, search_bundle, tmp_path):
    import shutil

    from fbcompress.export.build_kit import script_commands
    from fbcompress.export.triton import read_config

    copy = tmp_path / "search"
    shutil.copytree(search_bundle, copy)
    result = run("export", "-m", query_encoder, "--target", "tensorrt", "--out", copy, "--precision", "fp16")
    assert result.exit_code == 0, result.output
    commands = script_commands((copy / "build_engines.sh").read_text())
    assert len(commands) == 1 and "--onnx=query_encoder.fp16.onnx" in commands[0]
    assert "--stronglyTyped" in commands[0] and not any("patches" in part for part in commands[0])
    assert "--maxShapes=input_ids:8x16,attention_mask:8x16,token_type_ids:8x16" in commands[0]
    result = run("export", "-m", query_encoder, "--target", "triton", "--out", copy, "--triton-kind", "cpu")
    assert result.exit_code == 0, result.output
    config = read_config((copy / "triton" / "fashionbert_query" / "config.pbtxt").read_text())
    assert config["max_batch_size"] == 64 and config["outputs"][0]["dims"] == [16]  # the offline profile's max
    assert [i["name"] for i in config["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]


def test_a_scorer_reader_refuses_a_search_bundle(search_bundle, search_data):
    assert_one_line_error(run("eval", "--model", search_bundle, "--data", search_data), "is a search bundle")


def test_check_passes_the_shipped_query_encoder(retriever, search_bundle, search_index, search_data):
    common = ["--data", search_data, "--index", search_index, "-r", "smoke", "--set", "check.query_length=4",
              "--set", "check.latency_runs=5"]
    good = run("check", "-t", retriever, "-c", search_bundle / "query_encoder.int8.onnx", *common, "--json", "-")
    assert good.exit_code == 0, good.output
    verdict = stdout_json(good)
    assert verdict["verdict"] == "PASS" and [r["metric"] for r in verdict["checks"]][:2] == ["Recall@10", "nDCG@10"]
    assert verdict["checks"][2]["metric"].startswith("speed-up") and verdict["checks"][2]["passed"] is True
    assert verdict["candidate"]["latency"]["precision"] == "int8"


@pytest.mark.slow
def test_check_fails_a_query_encoder_with_random_weights(search_data, tmp_path):
    """The reference must rank well for a failure to mean something, and the smoke towers (random-init backbone, six
    steps) rank at chance: here it is the packaged MiniLM teacher used zero-shot (its space), and the candidate a
    query encoder of that space with random weights. Same tolerance: the tower against itself passes, random fails."""
    import dataclasses

    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model, save_checkpoint
    from fbcompress.modeling.dual_tower import tower_config
    from fbcompress.recipes import load_recipe
    from fbcompress.search.models import open_tower

    teacher = tmp_path / "minilm"
    assert run("train-teacher", "-r", "smoke", "--data", search_data, "--out", teacher, "--set",
               "teacher.backbone=minilm", "--set", "train.steps=1", "--set", "train.batch_size=4").exit_code == 0
    index = tmp_path / "index"
    assert run("index", "build", "-m", teacher, "--data", search_data, "--out", index).exit_code == 0
    zero_shot = open_tower(teacher, load_recipe("smoke").retriever)
    spec = dataclasses.replace(zero_shot.spec, role="query")
    _, ckpt = load_model(teacher)
    from fbcompress.modeling.dual_tower import DualTower

    torch.manual_seed(0)
    random = DualTower(tower_config(ckpt.config, spec))  # fresh weights, the zero-shot space
    save_checkpoint(tmp_path / "random", random, load_tokenizer(teacher), {"kind": "query-encoder"})
    common = ["--data", search_data, "--index", index, "-r", "smoke", "--set", "check.query_length=4",
              "--set", "check.min_query_speedup=0", "--set", "check.latency_runs=5",
              "--set", "check.max_recall10_drop=0.1", "--set", "check.max_ndcg10_drop=0.1", "--json", "-"]
    itself = run("check", "-t", teacher, "-c", teacher, *common)
    assert itself.exit_code == 0, itself.output
    assert stdout_json(itself)["checks"][0]["teacher"] > 0.2  # the reference ranks well above chance
    bad = run("check", "-t", teacher, "-c", tmp_path / "random", *common)
    assert bad.exit_code == 1, bad.output
    assert {"Recall@10", "nDCG@10"} <= set(stdout_json(bad)["failed"])


def test_bench_times_query_encoders_and_whole_searches(retriever, search_bundle, search_index, search_data,
                                                       search_teacher):
    result = run("bench", "--index", search_index, "--data", search_data, "-m", retriever,
                 "-m", search_bundle / "query_encoder.int8.onnx", "--rerank", search_teacher, "--rerank-k", "5,10",
                 "--runs", "3", "--warmup", "1", "--text-lengths", "4,5", "--json", "-")
    assert result.exit_code == 0, result.output
    bench = stdout_json(result)
    lengths = {row["length"] for row in bench["encoders"]}
    assert lengths and lengths <= {4, 5}
    assert {row["input"] for row in bench["encoders"]} == {"vsl", "padded to 16"}
    assert {row["batch"] for row in bench["encoders"]} == {1, 8}
    assert [row["rerank_k"] for row in bench["end_to_end"]] == [0, 5, 10]
    for row in bench["end_to_end"]:
        shares = [row[s]["share"] for s in ("encode", "search", "fetch", "rerank") if s in row]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
