"""index build, search and eval-retrieval: resume, verification, exact against ANN, and bad input."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run, stdout_json

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError


def _build(model, data, out, *sets):
    result = run("index", "build", "-m", model, "--data", data, "--out", out, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "index.json").read_text())


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.parquet"))}


def test_the_index_holds_every_product_once_with_verified_shards(search_index, search_data):
    from fbcompress.data.dataset_dir import SPLITS, DatasetDir
    from fbcompress.search.store import open_index

    manifest = json.loads((search_index / "index.json").read_text())
    dataset = DatasetDir.open(search_data)
    products = list(dict.fromkeys(r["product_id"] for s in SPLITS for r in dataset.records(s)))
    index = open_index(search_index)
    assert index.product_ids == products  # the whole catalogue, train + val + test, once each
    assert manifest["products"] == len(products) and len(manifest["shards"]) == -(-len(products) // 50)
    assert index.embeddings.dtype == np.float16 and index.embeddings.shape == (len(products), 16)
    norms = np.linalg.norm(index.embeddings.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # unit vectors, rounded to float16
    assert manifest["ann"]["kind"] == "exact" and manifest["data"]["fingerprint"] == dataset.fingerprint
    assert manifest["model"]["space"].startswith("retriever:")


def test_stored_embeddings_are_the_product_towers(search_index, retriever, search_data):
    """A stored row is the product tower's embedding of that product's title and image (to float16)."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_tower
    from fbcompress.runtime.embedding import TowerEncoder, embed_products, product_texts
    from fbcompress.search.store import open_index

    tower, ckpt = load_tower(retriever)
    tokenizer = load_tokenizer(ckpt.directory)
    data = SplitData(DatasetDir.open(search_data), "val", tokenizer, tower.spec)
    ids = tokenizer(product_texts(data.records[:5], "title"), truncation=True, max_length=32)["input_ids"]
    vectors = embed_products(TowerEncoder(tower, ckpt.directory, "t"), data, range(5), ids, 2)
    index = open_index(search_index)
    stored = np.stack([index.embeddings[index.row_of(p)] for p in data.products[:5]]).astype(np.float32)
    np.testing.assert_allclose(stored, vectors, atol=1e-3)
    assert [index.titles[index.row_of(p)] for p in data.products[:5]] == [r["title"] for r in data.records[:5]]


def test_a_killed_build_resumes_to_the_same_shards(retriever, search_data, search_index, tmp_path, monkeypatch):
    from fbcompress.recipes import load_recipe
    from fbcompress.search import build

    recipe = load_recipe("smoke")
    options = dict(model=retriever, data=search_data, index=recipe.index, retriever=recipe.retriever,
                   batch_size=16, device="cpu")
    real, written = build.write_shard, []

    def killed_after_one(path, *args):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, *args)

    monkeypatch.setattr(build, "write_shard", killed_after_one)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build.build_index(build.IndexOptions(out=out, **options))
    assert not out.exists()  # nothing published
    monkeypatch.setattr(build, "write_shard", real)
    summary = build.build_index(build.IndexOptions(out=out, **options))
    assert summary.resumed_shards == 1 and summary.encoded == summary.products - 50
    assert _files(out) == _files(search_index)  # byte for byte the shards of an uninterrupted build
    with pytest.raises(FbError, match="already holds an index"):
        build.build_index(build.IndexOptions(out=out, **options))


def test_a_changed_shard_or_index_file_is_refused(search_index, tmp_path):
    from fbcompress.search.store import open_index

    copy = tmp_path / "index"
    shutil.copytree(search_index, copy)
    shard = copy / "embeddings" / "shard-000001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(FbError, match="does not match the sha256"):
        open_index(copy)
    shutil.rmtree(copy)
    shutil.copytree(search_index, copy)
    (copy / "faiss.index").unlink()
    with pytest.raises(FbError, match="index file missing"):
        open_index(copy)
    with pytest.raises(FbError, match="not an index"):
        open_index(tmp_path)


def test_exact_and_ann_search_agree_on_a_small_catalogue(retriever, search_data, search_index, tmp_path):
    """HNSW over 120 products returns the exact top 10 for every test query: same rankings, same metrics."""
    hnsw = tmp_path / "hnsw"
    manifest = _build(retriever, search_data, hnsw, "index.exact_below=10")
    assert manifest["ann"]["kind"] == "hnsw" and manifest["ann"]["recall_at_10_vs_exact"] == 1.0
    assert _files(hnsw) == _files(search_index)  # the same embeddings, another index over them
    exact = run("eval-retrieval", "--index", hnsw, "--data", search_data, "--exact", "--json", "-")
    ann = run("eval-retrieval", "--index", hnsw, "--data", search_data, "--json", "-")
    assert exact.exit_code == 0 and ann.exit_code == 0, ann.output
    a, b = stdout_json(exact)["stages"]["ann"], stdout_json(ann)["stages"]["ann"]
    assert {k: v for k, v in a.items() if k != "latency_ms"} == {k: v for k, v in b.items() if k != "latency_ms"}
    first = run("search", "--index", hnsw, "-q", "red shirt", "-k", "10", "--json", "-")
    second = run("search", "--index", hnsw, "-q", "red shirt", "-k", "10", "--exact", "--json", "-")
    ids = [[h["product_id"] for h in json.loads(r.stdout[r.stdout.index("["):])[0]["hits"]] for r in (first, second)]
    assert ids[0] == ids[1] and len(ids[0]) == 10


def test_ivfpq_finds_the_near_neighbours_of_clustered_vectors():
    """IVF-PQ on 2,000 vectors in 40 tight clusters (what `index.kind: ivfpq` builds for large catalogues): its top
    10 come from the query's own cluster, and overlap the exact top 10 far above chance (PQ codes blur the order
    within a cluster; HNSW keeps the exact vectors and finds nearly all of it)."""
    from fbcompress.recipes import IndexSection
    from fbcompress.search.ann import build_faiss_index, recall_against_exact, top_k

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    cluster = rng.integers(0, 40, 2000)
    vectors = centres[cluster] + 0.05 * rng.normal(size=(2000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    built = build_faiss_index(vectors, "ivfpq", IndexSection(pq_bytes=8, ivf_probe=8))
    assert built.params["lists"] == min(int(2 * np.sqrt(2000)), 2000 // 39)  # 2·sqrt(n), >= 39 vectors a list
    assert built.index.nprobe == 8
    queries = (vectors[:50] + 0.01 * rng.normal(size=(50, 32))).astype(np.float32)
    _, rows = top_k(built.index, queries, 10)
    assert np.mean(cluster[rows] == cluster[:50, None]) > 0.95
    assert recall_against_exact(built.index, vectors, queries, 10) > 0.2  # chance: 10 / 2000
    hnsw = build_faiss_index(vectors, "hnsw", IndexSection())
    assert recall_against_exact(hnsw.index, vectors, queries, 10) > 0.9
    with pytest.raises(FbError, match="does not divide"):
        build_faiss_index(vectors, "ivfpq", IndexSection(pq_bytes=7))


def test_eval_retrieval_metrics_follow_from_the_rankings(search_index, search_data):
    """The reported stage-1 metrics are `retrieval_metrics` of the index's rankings of the split's queries."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.search_sets import search_queries
    from fbcompress.evaluation.retrieval import retrieval_metrics
    from fbcompress.recipes import load_recipe
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher
    from fbcompress.search.store import open_index

    result = run("eval-retrieval", "--index", search_index, "--data", search_data, "--split", "val", "--json", "-")
    assert result.exit_code == 0, result.output
    report = stdout_json(result)
    index = open_index(search_index)
    searcher = Searcher(open_query_encoder(index.manifest["model"]["path"], load_recipe("smoke").retriever), index)
    queries = search_queries(DatasetDir.open(search_data), "val")
    rankings = [[h.product_id for h in searcher.search(q.text, 100)[0]] for q in queries]
    expected = retrieval_metrics(rankings, [q.relevant for q in queries])
    assert report["queries"] == len(queries) and report["split"] == "val"
    assert {k: report["stages"]["ann"][k] for k in expected} == pytest.approx(expected)
    assert report["stages"]["ann"]["latency_ms"]["encode"]["runs"] == len(queries)


def test_two_stage_reranking_orders_the_top_k_by_the_cross_encoder(search_index, search_data, search_teacher):
    from fbcompress.search.searcher import open_reranker
    from fbcompress.search.store import open_index

    result = run("search", "--index", search_index, "-q", "blue dress", "-k", "5", "--rerank", search_teacher,
                 "--rerank-k", "8", "--json", "-")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout[result.stdout.index("["):])[0]["hits"]
    probabilities = [h["rerank_score"] for h in hits]
    assert probabilities == sorted(probabilities, reverse=True) and len(hits) == 5
    reranker = open_reranker(search_teacher, open_index(search_index), search_data)
    again = reranker.scores("blue dress", [h["product_id"] for h in hits])
    np.testing.assert_allclose(again, probabilities, rtol=1e-5)
    report = run("eval-retrieval", "--index", search_index, "--data", search_data, "--rerank", search_teacher,
                 "--rerank-k", "20", "--json", "-")
    stages = stdout_json(report)["stages"]
    assert set(stages) == {"ann", "rerank"} and stages["rerank"]["rerank_k"] == 20
    assert stages["rerank"]["recall@100"] == stages["ann"]["recall@100"]  # re-ranking reorders, never adds


def test_the_onnx_query_encoder_ranks_like_pytorch(search_index, search_data, retriever, tmp_path):
    from fbcompress.export.query_encoder import export_query_encoder, read_tower_metadata
    from fbcompress.recipes import load_recipe
    from fbcompress.search.models import open_tower

    pytorch = run("eval-retrieval", "--index", search_index, "--data", search_data, "--json", "-")
    ort = run("eval-retrieval", "--index", search_index, "--data", search_data, "--backend", "onnxruntime",
              "--json", "-")
    assert ort.exit_code == 0, ort.output
    a, b = stdout_json(pytorch), stdout_json(ort)
    assert b["encoder"]["backend"].startswith("onnxruntime-cpu")
    assert a["stages"]["ann"]["ndcg@10"] == pytest.approx(b["stages"]["ann"]["ndcg@10"], abs=1e-6)
    model = open_tower(retriever, load_recipe("smoke").retriever)
    parity = export_query_encoder(model.tower, model.spec, tmp_path / "q.onnx")
    assert parity["max_abs_diff"] < 1e-4 and {c["text"] for c in parity["cases"]} == {1, 2, 8, 16}
    assert read_tower_metadata(tmp_path / "q.onnx") == model.spec  # the file says its space


def test_an_index_of_another_model_is_refused(search_index, search_data, search_teacher, tmp_path):
    """The zero-shot teacher embeds queries in another space than the retriever's index."""
    assert_one_line_error(run("search", "--index", search_index, "-m", search_teacher, "-q", "red shirt"),
                          "another space than the index")
    assert_one_line_error(run("eval-retrieval", "--index", search_index, "--data", search_data, "-m",
                              search_teacher), "another space")


def test_search_answers_queries_from_standard_input(search_index):
    from click.testing import CliRunner

    from fbcompress.commands.cli import main

    result = CliRunner().invoke(main, ["search", "--index", str(search_index), "-k", "2", "--json", "-"],
                                input="red shirt\n\n  blue dress  \n")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout[result.stdout.index("["):])
    assert [a["query"] for a in answers] == ["red shirt", "blue dress"] and all(len(a["hits"]) == 2 for a in answers)


def test_search_bad_input_is_one_line(search_index, search_data, tiny_data, tmp_path):
    assert_one_line_error(run("search", "--index", search_index, "-q", "  "), "empty")
    assert_one_line_error(run("search", "--index", tmp_path, "-q", "red"), "not an index")
    assert_one_line_error(run("eval-retrieval", "--index", search_index, "--data", tiny_data), "other data")
    assert_one_line_error(run("eval-retrieval", "--index", search_index), "needs --data")
    assert_one_line_error(run("index", "build", "-m", tmp_path / "none", "--data", search_data, "--out",
                              tmp_path / "i"), "not found")
    assert not (tmp_path / "i").exists()


def test_an_unknown_product_is_one_line(search_index):
    from fbcompress.search.store import open_index

    with pytest.raises(FbError, match="product nope is not in the index"):
        open_index(search_index).row_of("nope")


def test_a_zero_shot_index_from_the_teacher(search_teacher, search_data, tmp_path):
    """The baseline: a cross-encoder checkpoint as both towers, no projection (its hidden size)."""
    manifest = _build(search_teacher, search_data, tmp_path / "zs")
    assert manifest["model"]["zero_shot"] and manifest["embedding_dim"] == 32
    assert manifest["model"]["space"].startswith("zero-shot:")
    result = run("eval-retrieval", "--index", tmp_path / "zs", "--data", search_data, "--json", "-")
    assert result.exit_code == 0, result.output


RANK_DRIVER = '''
import sys
from pathlib import Path
from fbcompress.recipes import load_recipe
from fbcompress.search.build import IndexOptions, build_index
model, data, out = sys.argv[1:4]
recipe = load_recipe("smoke")
build_index(IndexOptions(Path(model), Path(data), Path(out), recipe.index, recipe.retriever, batch_size=16,
                         device="cpu"))
'''


@pytest.mark.slow
def test_two_torchrun_ranks_build_the_index_one_process_builds(retriever, search_data, tmp_path):
    import torch
    from rank_helpers import run_ranks

    alone = tmp_path / "alone"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: the same float rounding
    try:
        _build(retriever, search_data, alone)
    finally:
        torch.set_num_threads(threads)
    driver = tmp_path / "driver.py"
    driver.write_text(RANK_DRIVER)
    run_ranks([str(driver), str(retriever), str(search_data), str(tmp_path / "ranks")], timeout=240)
    manifest = json.loads((tmp_path / "ranks" / "index.json").read_text())
    assert manifest["encoding"]["world_size"] == 2
    assert _files(tmp_path / "ranks") == _files(alone)
    assert sys.executable  # the ranks ran with this interpreter
