"""Retrieval metrics on hand-computed cases: capped recall, graded nDCG@10, MRR and their standard errors."""

from __future__ import annotations

import math

import pytest

from fbcompress.core.errors import FbError
from fbcompress.evaluation.retrieval import query_metrics, retrieval_metrics


def test_one_query_by_hand():
    relevant = {"a": 2, "b": 1, "c": 2, "z": 0}  # grade 0 is not relevant
    got = query_metrics(["x", "a", "y", "b", "c"], relevant, ks=(1, 2, 5, 10))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 0.5  # 1 of min(2, 3)
    assert got["recall@5"] == 1.0 and got["recall@10"] == 1.0  # capped at the 3 relevant
    dcg = 3 / math.log2(3) + 1 / math.log2(5) + 3 / math.log2(6)
    ideal = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx(dcg / ideal)
    assert got["mrr"] == 0.5


def test_a_perfect_ranking_scores_one_and_none_found_scores_zero():
    relevant = {f"p{i}": 2 for i in range(300)}  # "dress": hundreds relevant, a perfect top 10 is still 1
    perfect = query_metrics([f"p{i}" for i in range(100)], relevant)
    assert all(v == 1.0 for v in perfect.values())
    miss = query_metrics(["x", "y"], {"a": 1})
    assert miss == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0,
                    "mrr": 0.0}
    graded = query_metrics(["b", "a"], {"a": 2, "b": 1})  # both found, in the wrong order: nDCG below 1
    assert graded["recall@5"] == 1.0 and graded["mrr"] == 1.0 and graded["ndcg@10"] < 1.0


def test_means_and_standard_errors_over_queries():
    rankings = [["a"], ["x", "b"], ["y"]]
    relevance = [{"a": 1}, {"b": 1}, {"c": 1}]
    got = retrieval_metrics(rankings, relevance, ks=(1,))
    assert got["queries"] == 3 and got["mrr"] == pytest.approx(0.5)  # (1 + 1/2 + 0) / 3
    values = [1.0, 0.5, 0.0]
    se = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 2 / 3)
    assert got["mrr_se"] == pytest.approx(se) and got["recall@1"] == pytest.approx(1 / 3)
    assert math.isnan(retrieval_metrics([["a"]], [{"a": 1}])["mrr_se"])  # one query: no spread to estimate


@pytest.mark.parametrize(("rankings", "relevance", "message"), [
    ([["a"]], [{"a": 0}], "no relevant product"),
    ([["a", "a"]], [{"a": 1}], "names a product twice"),
    ([["a"]], [], "1 rankings for 0 queries"),
    ([], [], "no search queries"),
])
def test_broken_input_is_an_error_not_a_number(rankings, relevance, message):
    with pytest.raises(FbError, match=message):
        retrieval_metrics(rankings, relevance)


def test_the_cut_offs_asked_for_are_the_ones_reported_and_two_queries_have_a_spread():
    got = retrieval_metrics([["a"], ["x"]], [{"a": 1}, {"a": 1}], ks=(1, 3))
    assert {k for k in got if k.startswith("recall@") and not k.endswith("_se")} == {"recall@1", "recall@3"}
    assert got["mrr_se"] == pytest.approx(0.5)  # values 1 and 0: sd 0.707 / sqrt(2)
