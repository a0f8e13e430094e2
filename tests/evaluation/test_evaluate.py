import numpy as np
import pytest

from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.evaluation.metrics import rank_of_positive, roc_auc


def test_auc_hand_computed_with_ties():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.4, 0.1, 0.8, 0.7])
    # positives 0.9, 0.4, 0.8 vs negatives 0.4, 0.1, 0.7: wins = 3 + (0.5 + 1) + 3 = 7.5 of 9
    assert roc_auc(labels, scores) == pytest.approx(7.5 / 9)
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.1])) == 1.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.1])))


def test_rank_counts_ties_against_the_positive():
    assert rank_of_positive(np.array([0.9, 0.1, 0.2])) == 1
    assert rank_of_positive(np.array([0.5, 0.5, 0.9, 0.1])) == 3


def test_eval_sets_are_fixed_and_follow_the_protocol(tiny_data):
    dataset = DatasetDir.open(tiny_data)
    test = {r["id"]: r for r in dataset.records("test")}
    for kind in ("itr", "tir"):
        queries = dataset.eval_rows(kind, "test")
        assert queries and all(q["query"] in test for q in queries)
        for q in queries:
            negs = q["negatives"]
            assert len(negs) == 8 and len(set(negs)) == 8
            assert all(test[n]["product_id"] != test[q["query"]]["product_id"] for n in negs)
            sub = test[q["query"]]["subcategory"]
            same = [n for n in negs if test[n]["subcategory"] == sub]
            available = sum(1 for r in test.values() if r["subcategory"] == sub) - 1
            assert len(same) == min(8, available), "same subcategory first"
    pairs = dataset.eval_rows("pairs", "test")
    assert sum(p["label"] for p in pairs) == len(pairs) / 2
    for p in pairs:
        if p["label"] == 0:
            assert test[p["image"]]["subcategory"] == test[p["text"]]["subcategory"]


def test_eval_cli_json_keys(trained_smoke, tiny_data, tmp_path):
    import json

    from click.testing import CliRunner

    from fbcompress.commands.cli import main

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--model", str(trained_smoke), "--data", str(tiny_data),
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    for key in ("accuracy", "auc", "n_queries", "n_negatives", "model", "backend"):
        assert key in payload
    assert set(payload["itr"]) == set(payload["tir"]) == {"r1", "r5", "r10"}
    assert payload["n_negatives"] == 8 and payload["backend"] == "pytorch"
    assert 0 <= payload["auc"] <= 1 and payload["itr"]["r10"] >= payload["itr"]["r1"]


def test_rank_candidates_are_scored_in_length_sorted_batches(trained_smoke, tiny_data):
    """VSL in eval: a query's candidate texts are batched by length (each batch padded to its own longest text),
    and the scores equal those of the whole query scored as one batch padded to its longest candidate."""
    from fbcompress.evaluation.metrics import score_rows
    from fbcompress.runtime.scoring import match_probability, open_scorer

    scorer = open_scorer(trained_smoke)
    dataset = DatasetDir.open(tiny_data)
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer

    data = SplitData(dataset, "test", load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    query = dataset.eval_rows("itr", "test")[0]
    image = data.position(query["query"])
    texts = [data.position(query["positive"])] + [data.position(n) for n in query["negatives"]]
    for i, t in enumerate(texts):  # the fixture's texts are all one length: vary them (the scores need not mean much)
        data.token_ids[t] = list(data.token_ids[t])[: 3 + i % 5]
    assert len({len(data.token_ids[t]) for t in texts}) > 1
    widths = []
    real = scorer.logits

    def spy(batch):
        widths.append((batch["input_ids"].shape[1], int(batch["attention_mask"][:, : batch["input_ids"].shape[1]]
                                                         .sum(1).max())))
        return real(batch)

    scorer.logits = spy
    chunked = score_rows(scorer, data, [image] * len(texts), texts, batch_size=3)
    assert len(widths) == -(-len(texts) // 3)
    assert all(padded == longest for padded, longest in widths), widths
    whole = match_probability(real(data.batch([image] * len(texts), texts)))
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


@pytest.mark.slow
def test_eval_of_a_checkpoint_in_onnxruntime_matches_pytorch(trained_smoke, tiny_data, tmp_path):
    """--backend onnxruntime exports the checkpoint, checks parity, and scores the same: the same ranks and AUC,
    stamped with the checkpoint's weights hash (so `check --teacher-eval` accepts it like a PyTorch eval)."""
    import json

    from click.testing import CliRunner

    from fbcompress.commands.cli import main

    results = {}
    for backend in ("pytorch", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        result = CliRunner().invoke(main, ["eval", "--model", str(trained_smoke), "--data", str(tiny_data),
                                           "--backend", backend, "--json", str(out)])
        assert result.exit_code == 0, result.output
        results[backend] = json.loads(out.read_text())
    torch_eval, ort_eval = results["pytorch"], results["onnxruntime"]
    assert ort_eval["backend"].startswith("onnxruntime-cpu") and "exported from the checkpoint" in ort_eval["backend"]
    assert 0 <= ort_eval["parity_vs_pytorch"]["max_abs_diff"] <= 1e-4 and "parity_vs_pytorch" not in torch_eval
    assert ort_eval["model_sha256"] == torch_eval["model_sha256"]
    assert ort_eval["itr"] == torch_eval["itr"] and ort_eval["tir"] == torch_eval["tir"]
    assert ort_eval["auc"] == pytest.approx(torch_eval["auc"], abs=1e-3)


@pytest.mark.slow
def test_eval_in_onnxruntime_refuses_a_graph_off_pytorch(trained_smoke):
    from fbcompress.core.errors import FbError
    from fbcompress.export import checkpoint_ort

    with pytest.raises(FbError, match="differ from PyTorch"):
        checkpoint_ort.open_checkpoint_ort(trained_smoke, tolerance=0.0)
