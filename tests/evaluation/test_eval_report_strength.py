"""What `fbcompress eval` reports around the metrics: which fields a result has for which tasks, the table a user
reads, the progress bars, the VSL batch sizes, the weights/data stamp and the reuse check (`check --teacher-eval`).

The metric values themselves are in test_metrics_strength.py; this file reuses its hand-made world (a scorer that
reads logits from a table). Each test names the one-line breaks of `evaluation/metrics.py` it was seen to fail on
(mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_metrics_strength import (
    ITR_EXPECTED,
    TIR_EXPECTED,
    TableData,
    TableScorer,
    _approx,
    _pairs_world,
    build_queries,
)

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.evaluation.metrics import (
    RANK_BATCH,
    evaluate,
    format_table,
    model_sha256,
    rank_metrics,
    reusable_eval,
    roc_auc,
    score_pairs,
    score_rows,
    stamp,
)


class SizedScorer(TableScorer):
    """The table scorer, also recording how many pairs each call to `logits` scored."""

    def __init__(self, data, table):
        super().__init__(data, table)
        self.sizes: list[int] = []

    def logits(self, inputs: dict) -> np.ndarray:
        self.sizes.append(len(inputs["image_rows"]))
        return super().logits(inputs)


FULL = {"split": "test", "model": "student", "backend": "onnxruntime-cpu", "accuracy": 0.61234, "auc": 0.87654,
        "n_pairs": 8, "itr": {"r1": 0.1, "r5": 0.25, "r10": 0.5}, "tir": {"r1": 0.2, "r5": 0.3, "r10": 0.4},
        "n_queries": 6, "n_negatives": 39, "synthetic": True}


def test_format_table_is_the_documented_table():
    """The eval table, exactly. Breaks caught: every row label renamed or re-cased, `rows +=` -> `rows =` (the
    model rows lost), each `in result` test negated or given another key, `mode.upper()` -> `lower()`, the
    `"\\n"` joiner, `ljust` -> `rjust`."""
    assert format_table(FULL) == "\n".join([
        "model                student",
        "backend              onnxruntime-cpu",
        "split                test",
        "ACC                  0.6123",
        "AUC                  0.8765",
        "ITR R@1/5/10         0.100 / 0.250 / 0.500",
        "TIR R@1/5/10         0.200 / 0.300 / 0.400",
        "queries x negatives  6 x 39",
        "data                 synthetic catalogue",
    ])


def test_format_table_shows_only_what_was_measured():
    """A pairs-only result has no Rank@K rows, a Rank@K-only result no ACC/AUC rows, real data no `data` row.
    Breaks caught: `if "auc" in result` -> `not in`, `if mode in result` -> `not in`, `"n_queries" in result` ->
    `not in`, `result.get("synthetic")` -> another key (real data labelled synthetic, or synthetic unlabelled)."""
    pairs_only = {k: FULL[k] for k in ("split", "model", "backend", "accuracy", "auc", "n_pairs")}
    assert format_table({**pairs_only, "synthetic": False}).splitlines() == [
        "model    student", "backend  onnxruntime-cpu", "split    test", "ACC      0.6123", "AUC      0.8765"]
    ranks_only = {k: FULL[k] for k in ("split", "model", "backend", "tir", "n_queries", "n_negatives")}
    assert format_table(ranks_only).splitlines()[3:] == [
        "TIR R@1/5/10         0.200 / 0.300 / 0.400", "queries x negatives  6 x 39"]


def test_evaluate_reports_the_fields_of_the_tasks_it_ran():
    """Breaks caught: `continue` -> `break` in the task loop (TIR alone would not run), `{"itr", "tir"} & tasks`
    -> `|` or with a misspelt task (n_negatives on a pairs-only result, or missing on an ITR- or TIR-only one),
    the default split "test" changed."""
    data, scorer, dataset = _pairs_world()
    pairs = evaluate(scorer, dataset, data, tasks=("pairs",), progress=False)
    assert pairs["split"] == "test"
    assert set(pairs) == {"split", "model", "backend", "accuracy", "auc", "n_pairs", "synthetic"}
    tir = evaluate(scorer, dataset, data, tasks=("tir",), progress=False)
    assert tir["tir"] == _approx(TIR_EXPECTED) and "itr" not in tir and "auc" not in tir
    assert (tir["n_queries"], tir["n_negatives"]) == (6, 39)
    itr = evaluate(scorer, dataset, data, tasks=("itr",), progress=False)
    assert itr["itr"] == _approx(ITR_EXPECTED) and "tir" not in itr
    assert (itr["n_queries"], itr["n_negatives"]) == (6, 39)


def test_evaluate_with_no_queries_reports_nan_ranks_and_zero_negatives():
    """`--max-queries 0`: Rank@K is undefined (nan, without a numpy warning), 0 queries x 0 negatives. Breaks
    caught: `max(..., default=0)` -> `default=None` / `default=1` / no default (ValueError), the nan branch
    `if len(ranks)` -> always taken (np.mean of nothing warns) or `float("nan")` misspelt (ValueError)."""
    data, scorer, dataset = _pairs_world()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(scorer, dataset, data, max_queries=0, tasks=("itr", "tir"), progress=False)
    assert (result["n_queries"], result["n_negatives"]) == (0, 0)
    assert all(np.isnan(result[mode][f"r{k}"]) for mode in ("itr", "tir") for k in (1, 5, 10))


@pytest.mark.parametrize(("meta", "expected"), [({"synthetic": True}, True), ({"synthetic": False}, False),
                                                ({}, False)])
def test_evaluate_says_whether_the_data_is_synthetic(meta, expected):
    """Breaks caught: `result["synthetic"]` under another key or None, `meta.get("synthetic", False)` with
    another key or a True default (a user's own catalogue labelled synthetic)."""
    data, scorer, dataset = _pairs_world()
    dataset.meta = meta
    assert evaluate(scorer, dataset, data, tasks=("pairs",), progress=False)["synthetic"] is expected


def test_roc_auc_of_one_class_is_nan_without_a_warning():
    """Breaks caught: `if n_pos == 0 or n_neg == 0` -> `and` (a 0/0 division that numpy warns about)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(roc_auc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])))
        assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_pairs_go_through_the_scorer_in_batches_of_64_and_rank_candidates_in_batches_of_32():
    """VSL batching sizes: 130 pairs take 64 + 64 + 2 rows; one query with 1 + 39 candidates takes 32 + 8 in each
    direction. Breaks caught: score_rows' or score_pairs' default batch 64 changed, RANK_BATCH not passed by the
    ITR or the TIR branch of rank_metrics (the 40 candidates would go as one batch of 64)."""
    table: dict = {}
    queries = build_queries("q", "itr", [(3, 0, 39)], table)
    data = TableData([queries[0]["query"], *queries[0]["negatives"]])
    scorer = SizedScorer(data, table)
    rows = [i % len(data.ids) for i in range(130)]
    score_rows(scorer, data, rows, rows)
    assert sorted(scorer.sizes, reverse=True) == [64, 64, 2]
    scorer.sizes.clear()
    pairs = [{"image": data.ids[r], "text": data.ids[r]} for r in rows]
    score_pairs(scorer, data, pairs)
    assert sorted(scorer.sizes, reverse=True) == [64, 64, 2]
    for mode in ("itr", "tir"):
        scorer.sizes.clear()
        rank_metrics(scorer, data, queries, mode, progress=False)
        assert sorted(scorer.sizes, reverse=True) == [RANK_BATCH, 40 - RANK_BATCH], mode


def _bars(text: str) -> list[str]:
    return [part.split(":")[0].strip() for part in text.split("\r") if ":" in part and "|" in part]


def test_evaluate_shows_a_transient_bar_per_task_by_default(capsys):
    """Long work shows progress: `evaluate` draws a "pairs", an "ITR" and a "TIR" bar by default and clears them
    (leave=False), so the table that follows stands alone. Breaks caught: the default `progress=True` -> False,
    progress not passed to score_pairs / rank_metrics, each tqdm's `desc` dropped or changed (`mode.upper()` ->
    `lower()`), `disable=not progress` -> `progress` or None (no bar when output is not a terminal), and
    `leave=False` -> True / None (a finished bar left on screen)."""
    data, scorer, dataset = _pairs_world()
    evaluate(scorer, dataset, data)
    err = capsys.readouterr().err
    assert {"pairs", "ITR", "TIR"} <= set(_bars(err)), err
    assert "100%" not in err.replace("\r", "\n").splitlines()[-1] and not err.endswith("\n"), repr(err[-200:])


def test_no_bar_unless_asked(capsys):
    """Scoring helpers stay silent by default and with progress=False; asked, score_rows draws a transient bar.
    Breaks caught: score_rows' or score_pairs' default `progress=False` -> True, `disable=not progress` ->
    `disable=progress`, score_rows' `leave=False` -> True / None / dropped."""
    data, scorer, dataset = _pairs_world()
    rows = list(range(len(data.ids)))
    score_rows(scorer, data, rows, rows)
    score_pairs(scorer, data, dataset.rows["pairs"])
    evaluate(scorer, dataset, data, progress=False)
    assert capsys.readouterr().err == ""
    score_rows(scorer, data, rows, rows, progress=True)
    err = capsys.readouterr().err
    assert _bars(err)[:1] == ["pairs"] and not err.endswith("\n"), repr(err[-120:])  # drawn, then cleared


def test_model_sha256_hashes_the_weights_file(tmp_path):
    """A checkpoint dir is identified by its model.safetensors, an .onnx/.plan by itself, anything without weights
    by None. Breaks caught: the `is_dir()` branch forced either way, the weights file name changed, the
    `is_file()` guard forced either way (a hash of a directory, or a missing file hashed)."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "config.json").write_text("{}")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"graph")
    assert model_sha256(checkpoint) == sha256_file(checkpoint / "model.safetensors")
    assert model_sha256(onnx) == sha256_file(onnx)
    assert model_sha256(tmp_path / "missing.onnx") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert model_sha256(empty) is None


@pytest.fixture()
def saved_eval(tiny_data, tmp_path):
    """A stamped `fbcompress eval --json` result for a stand-in weights file on the tiny dataset's test split."""
    dataset = DatasetDir.open(tiny_data)
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"graph")
    n_queries = len(dataset.eval_rows("itr", "test"))
    result = stamp({"split": "test", "auc": 0.9, "itr": {}, "tir": {}, "n_queries": n_queries}, weights, dataset)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(result))
    return dataset, weights, path, result


def test_stamp_names_the_weights_and_the_data(saved_eval):
    """Breaks caught: `model_sha256` / `data_fingerprint` stored under another key or as None."""
    dataset, weights, _, result = saved_eval
    assert result["model_sha256"] == sha256_file(weights)
    assert result["data_fingerprint"] == dataset.fingerprint and dataset.fingerprint


def _refused(path: Path, weights: Path, dataset, split: str = "test", max_queries: int | None = None) -> str:
    with pytest.raises(FbError) as caught:
        reusable_eval(path, weights, dataset, split, max_queries)
    return str(caught.value)


def test_reusable_eval_takes_a_result_made_from_these_weights_data_and_split(saved_eval):
    dataset, weights, path, result = saved_eval
    assert reusable_eval(path, weights, dataset, "test", None) == result
    assert reusable_eval(path, weights, dataset, "test", 10**6) == result  # a cap above the set is the whole set


def test_reusable_eval_refuses_a_result_of_other_weights_data_split_or_size(saved_eval, tmp_path):
    """Each mismatch is refused with the reason. Breaks caught: the dict/keys test weakened (`or` -> `and`, a key
    misspelt, a negation dropped, `<=` -> `<`), any of the three identity keys not compared or misspelt (`model_sha256`,
    `data_fingerprint`, `split`), `!=` -> `==`, the query count not compared or taken without `max_queries`."""
    dataset, weights, path, result = saved_eval
    other = tmp_path / "other.onnx"
    other.write_bytes(b"other graph")
    assert "model_sha256 differs" in _refused(path, other, dataset)
    assert "split differs" in _refused(path, weights, dataset, split="val")
    message = _refused(path, weights, dataset, max_queries=2)
    assert f"scored {result['n_queries']} Rank@K queries; this check scores 2" in message
    for changed, reason in (({"data_fingerprint": "elsewhere"}, "data_fingerprint differs"),
                            ({"n_queries": result["n_queries"] + 1}, "Rank@K queries")):
        path.write_text(json.dumps({**result, **changed}))
        assert reason in _refused(path, weights, dataset)
    for key in ("auc", "itr", "tir"):
        path.write_text(json.dumps({k: v for k, v in result.items() if k != key}))
        assert "is not an `fbcompress eval --json` result" in _refused(path, weights, dataset)
    path.write_text(json.dumps([result]))
    assert "is not an `fbcompress eval --json` result" in _refused(path, weights, dataset)
    path.write_text(json.dumps({"auc": 0.9, "itr": {}, "tir": {}}))  # the three keys and nothing else: a result,
    assert "model_sha256 differs" in _refused(path, weights, dataset)  # but not of these weights
    path.write_text("{not json")
    assert f"eval result {path} is not valid JSON" in _refused(path, weights, dataset)
    assert f"eval result not found: {tmp_path / 'gone.json'}" in _refused(tmp_path / "gone.json", weights, dataset)


def test_accuracy_counts_a_tied_pair_as_a_mismatch_like_argmax():
    """ACC is the share of pairs whose predicted class (the argmax of the two logits) is right; equal logits give
    probability exactly 0.5 and argmax class 0, a mismatch. Breaks caught: `scores > 0.5` -> `>= 0.5`."""
    from fbcompress.evaluation.metrics import classification_metrics
    from fbcompress.runtime.scoring import match_probability

    tied = match_probability(np.array([[1.5, 1.5], [0.0, 0.0]]))
    assert tied.tolist() == [0.5, 0.5] and np.argmax([[1.5, 1.5]], axis=1).tolist() == [0]
    assert classification_metrics(np.array([0, 0]), tied)["accuracy"] == 1.0  # both predicted "mismatch"
    assert classification_metrics(np.array([1, 1]), tied)["accuracy"] == 0.0


def test_evaluate_model_stamps_the_test_split_and_a_checked_parity(trained_smoke, tiny_data, capsys):
    """`fbcompress eval`'s library call: the test split unless told, no progress bars unless asked, the result
    stamped with the weights, and for a scorer that carries a parity check (a checkpoint exported to ONNX Runtime on
    the fly) its figure and tolerance, nothing else of it. Breaks caught: the default split changed, bars by
    default, the parity dropped or renamed, its keys renamed."""
    from fbcompress.evaluation.metrics import evaluate_model
    from fbcompress.runtime.scoring import open_scorer

    scorer = open_scorer(trained_smoke)
    dataset = DatasetDir.open(tiny_data)
    capsys.readouterr()
    plain = evaluate_model(scorer, trained_smoke, dataset, max_queries=1)
    assert "pairs:" not in capsys.readouterr().err
    assert plain["split"] == "test" and "parity_vs_pytorch" not in plain
    assert plain["model_sha256"] == sha256_file(trained_smoke / "model.safetensors")
    assert plain["data_fingerprint"] == dataset.fingerprint
    scorer.parity = {"max_abs_diff": 2e-6, "tolerance": 1e-4, "cases": [{"batch": 1}]}
    checked = evaluate_model(scorer, trained_smoke, dataset, "val", max_queries=1)
    assert checked["split"] == "val" and checked["parity_vs_pytorch"] == {"max_abs_diff": 2e-6, "tolerance": 1e-4}
