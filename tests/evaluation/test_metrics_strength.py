"""Metrics on hand-made score tables with known answers: Rank@K aggregation, the ITR/TIR direction, ties, AUC.

No model: a `Scorer` stub reads each (image record, text record) pair's score from a table these tests write, and a
`SplitData` stub hands the rows through `batch`. Each test names the one-line break of `evaluation/metrics.py` it
was seen to fail on (design.md "Metrics": Rank@K = share of queries whose true partner is in the top K; ITR: image
query, texts ranked; TIR: text query, images ranked).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fbcompress.evaluation.metrics import classification_metrics, evaluate, rank_metrics, rank_of_positive, roc_auc

ABOVE, TIE, BELOW = 2.0, 0.0, -2.0  # match logits: a negative beating, tying with, or losing to the positive


class TableData:
    """The SplitData surface evaluate.py uses: record ids -> rows, token ids (their lengths set the VSL batching
    order) and `batch`, which here hands the image and text rows to the scorer instead of tensors."""

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        self.index = {rid: i for i, rid in enumerate(self.ids)}
        # lengths that are not monotonic in candidate order, so length-sorted batching really permutes candidates
        self.token_ids = [[7] * (1 + (i * 5) % 9) for i in range(len(self.ids))]

    def position(self, record_id: str) -> int:
        return self.index[record_id]

    def batch(self, image_rows, text_rows) -> dict:
        return {"image_rows": list(image_rows), "text_rows": list(text_rows)}


class TableScorer:
    """A `Scorer` whose match logit for (image record, text record) is looked up in `table` (default BELOW):
    logits [0, s], so the match probability is sigmoid(s), monotone in s, and equal s stay exactly tied."""

    backend = "table"
    name = "table"
    spec = None
    tokenizer_dir = Path(".")

    def __init__(self, data: TableData, table: dict[tuple[str, str], float]):
        self.data, self.table = data, table
        self.calls = 0

    def logits(self, inputs: dict) -> np.ndarray:
        self.calls += 1
        ids = self.data.ids
        s = [self.table.get((ids[i], ids[t]), BELOW) for i, t in zip(inputs["image_rows"], inputs["text_rows"],
                                                                      strict=True)]
        return np.stack([np.zeros(len(s)), np.asarray(s, dtype=np.float64)], axis=1)


def build_queries(prefix: str, mode: str, layout: list[tuple[int, int, int]], table: dict) -> list[dict]:
    """One eval-set query per (above, tied, negatives): the positive (the query's own record, as in the real eval
    sets) scores TIE; `above` negatives score ABOVE, `tied` score TIE, the rest BELOW. Pessimistic 1-based rank:
    1 + above + tied. The table cell is (query image, candidate text) for ITR, (candidate image, query text) for
    TIR, so scoring a query in the wrong direction reads cells that are not set (all BELOW: rank 1)."""
    queries = []
    for i, (above, tied, n_neg) in enumerate(layout):
        q = f"{prefix}{i}"
        negatives = [f"{q}-n{j}" for j in range(n_neg)]
        table[(q, q)] = TIE
        for j, neg in enumerate(negatives):
            score = ABOVE if j < above else TIE if j < above + tied else BELOW
            if score != BELOW:
                table[(q, neg) if mode == "itr" else (neg, q)] = score
        # the positive is not first in the negatives' scored order: put the beating negatives last in the list
        negatives = negatives[::-1]
        queries.append({"split": "test", "query": q, "positive": q, "negatives": negatives})
    return queries


# ITR ranks 1, 2 (a tie), 5, 6 (ties), 10, 11: R@1 1/6, R@5 3/6, R@10 5/6. One query has 39 negatives, so its 40
# candidates take two length-sorted batches (RANK_BATCH 32).
ITR_LAYOUT = [(0, 0, 11), (0, 1, 11), (4, 0, 11), (3, 2, 11), (9, 0, 39), (10, 0, 11)]
ITR_EXPECTED = {"r1": 1 / 6, "r5": 3 / 6, "r10": 5 / 6}
# TIR ranks 1, 1 (39 negatives), 1, 4 (1 above + 2 tied), 12, 11: R@1 3/6, R@5 4/6, R@10 4/6: each figure
# differs from ITR's.
TIR_LAYOUT = [(0, 0, 11), (0, 0, 39), (0, 0, 11), (1, 2, 11), (11, 0, 11), (10, 0, 11)]
TIR_EXPECTED = {"r1": 3 / 6, "r5": 4 / 6, "r10": 4 / 6}


def _world():
    table: dict = {}
    itr = build_queries("i", "itr", ITR_LAYOUT, table)
    tir = build_queries("t", "tir", TIR_LAYOUT, table)
    ids = sorted({r for q in itr + tir for r in [q["query"], *q["negatives"]]})
    data = TableData(ids)
    return data, TableScorer(data, table), itr, tir


def _approx(expected: dict) -> dict:
    return {k: pytest.approx(v, abs=1e-12) for k, v in expected.items()}


def test_rank_metrics_itr_are_shares_of_queries_in_the_top_k():
    """Breaks caught (evaluate.py): `ranks_arr <= k` -> `< k` (R@1 0); `np.mean` -> `np.sum` (R@10 5, not 5/6);
    `rank_of_positive` 0-based (drop `1 +`: R@1 2/6) or ties for the positive (`>=` -> `>`: R@1 2/6);
    `scores[chunk] =` -> `scores[start:start + batch_size] =` in score_rows (scores land on the wrong candidates)."""
    data, scorer, itr, _ = _world()
    assert rank_metrics(scorer, data, itr, "itr", progress=False) == _approx(ITR_EXPECTED)


def test_rank_metrics_tir_ranks_images_for_a_text_query():
    """ITR vs TIR direction. Breaks caught: `if mode == "itr"` -> `if mode == "tir"` (or the two score_rows calls
    swapped, or image/text rows swapped in `data.batch(...)` of score_rows): a TIR query would then rank texts for
    its image, reading cells the table does not set, and every query would rank 1 (R@1 1.0)."""
    data, scorer, itr, tir = _world()
    assert rank_metrics(scorer, data, tir, "tir", progress=False) == _approx(TIR_EXPECTED)
    # and the other way round: the ITR queries read in the TIR direction all rank 1 (nothing set there)
    assert rank_metrics(scorer, data, itr, "tir", progress=False) == {"r1": 1.0, "r5": 1.0, "r10": 1.0}


def test_rank_at_k_counts_a_rank_of_exactly_k_and_not_k_plus_one():
    """The edge at K, one query each. Breaks caught: `<= k` -> `< k` (rank 10 not in the top 10) and
    `<= k` -> `<= k + 1` (rank 11 counted), and RANKS = (1, 5, 10) changed."""
    for rank, expected in ((1, (1.0, 1.0, 1.0)), (5, (0.0, 1.0, 1.0)), (6, (0.0, 0.0, 1.0)),
                           (10, (0.0, 0.0, 1.0)), (11, (0.0, 0.0, 0.0))):
        table: dict = {}
        queries = build_queries("q", "itr", [(rank - 1, 0, 12)], table)
        data = TableData([queries[0]["query"], *queries[0]["negatives"]])
        got = rank_metrics(TableScorer(data, table), data, queries, "itr", progress=False)
        assert (got["r1"], got["r5"], got["r10"]) == expected, (rank, got)


def test_rank_of_positive_is_one_based_and_pessimistic_on_ties():
    """Breaks caught: `1 +` dropped (0-based), `scores[1:]` -> `scores[:]` (the positive counted against itself),
    `>=` -> `>` (ties won by the positive)."""
    assert rank_of_positive(np.array([0.9, 0.1, 0.2, 0.3])) == 1
    assert rank_of_positive(np.array([0.1, 0.9, 0.2, 0.3])) == 4
    assert rank_of_positive(np.array([0.5] * 7)) == 7  # every negative tied: last
    assert rank_of_positive(np.array([0.5, 0.9, 0.5, 0.1, 0.5])) == 4
    assert rank_of_positive(np.array([0.3])) == 1  # no negatives


class TableDataset:
    """The DatasetDir surface `evaluate` uses: eval rows per kind, meta."""

    meta = {"synthetic": True}

    def __init__(self, rows: dict[str, list[dict]]):
        self.rows = rows

    def eval_rows(self, kind: str, split: str) -> list[dict]:
        assert split == "test"
        return self.rows[kind]


# pair cells (image, text) -> logit, and labels; the reversed cells (text record's image, image record's text) are
# not set, so scoring a pair the wrong way round reads BELOW everywhere (AUC 0.5, ACC = share of negatives)
PAIRS = [("a", "a", 1, 1.5), ("a", "b", 0, -1.0), ("b", "b", 1, 0.7), ("b", "c", 0, 0.7), ("c", "c", 1, -0.4),
         ("c", "a", 0, 0.9), ("d", "d", 1, 2.0), ("d", "e", 0, -0.4)]


def _pairs_world():
    data, scorer, itr, tir = _world()
    extra = sorted({r for p in PAIRS for r in p[:2]})
    data = TableData(data.ids + extra)
    scorer = TableScorer(data, scorer.table)
    for image, text, _, logit in PAIRS:
        scorer.table[(image, text)] = logit
    pairs = [{"split": "test", "image": i, "text": t, "label": y} for i, t, y, _ in PAIRS]
    return data, scorer, TableDataset({"pairs": pairs, "itr": itr, "tir": tir})


def _brute_auc(labels, scores) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_evaluate_puts_each_direction_under_its_own_key():
    """The whole `evaluate` on the hand-made world. Breaks caught: `rank_metrics(..., mode, ...)` given a fixed
    "itr"/"tir", `dataset.eval_rows(mode, ...)` given a fixed kind, `result[mode] =` under the other key; in
    score_pairs, `p["image"]` / `p["text"]` swapped (AUC and ACC change); `[:max_queries]` dropped;
    `n_negatives` taken from the last query instead of the largest."""
    data, scorer, dataset = _pairs_world()
    result = evaluate(scorer, dataset, data, "test", progress=False)
    assert result["itr"] == _approx(ITR_EXPECTED) and result["tir"] == _approx(TIR_EXPECTED)
    labels = [y for _, _, y, _ in PAIRS]
    assert result["auc"] == pytest.approx(_brute_auc(labels, [s for *_, s in PAIRS]), abs=1e-12)
    assert result["auc"] == pytest.approx(12 / 16, abs=1e-12)  # hand count: 4 x 4 pairs, 2 ties
    assert result["accuracy"] == pytest.approx(5 / 8)  # logit > 0 <=> probability > 0.5
    assert result["n_pairs"] == 8 and result["n_queries"] == 6 and result["n_negatives"] == 39
    # the first 3 queries only: ITR ranks 1, 2, 5; TIR ranks 1, 1, 1
    head = evaluate(scorer, dataset, data, "test", max_queries=3, tasks=("itr", "tir"), progress=False)
    assert head["itr"] == _approx({"r1": 1 / 3, "r5": 1.0, "r10": 1.0})
    assert head["tir"] == {"r1": 1.0, "r5": 1.0, "r10": 1.0}
    assert head["n_queries"] == 3 and head["n_negatives"] == 39 and "auc" not in head


def test_classification_accuracy_is_the_share_of_correct_decisions():
    """Breaks caught: `(scores > 0.5) == (labels == 1)` -> `!=` or `< 0.5` (0.4, not 0.6), `labels == 0`, and a
    mean over the matched pairs only."""
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.2, 0.3, 0.6, 0.51])
    assert classification_metrics(labels, scores)["accuracy"] == pytest.approx(0.6)


@pytest.mark.parametrize("seed", range(12))
def test_auc_equals_the_pairwise_count_with_heavy_ties(seed):
    """roc_auc against a brute-force count over all (positive, negative) pairs (win 1, tie 1/2) on scores drawn
    from 4 values (many ties across and within classes), in shuffled order, labels as ints and as bools.
    Breaks caught: the tie rank `(i + j) / 2.0 + 1.0` -> `i + 1.0` / `j + 1.0` / `(i + j) / 2.0`; the run scan
    `sorted_scores[j + 1] == sorted_scores[i]` -> `sorted_scores[j]`-less variants that stop early; the rank-sum
    correction `n_pos * (n_pos + 1) / 2` -> `n_pos * (n_pos - 1) / 2`; `ranks[labels]` -> `ranks[~labels]`."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 40))
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]  # both classes present
    rng.shuffle(labels)
    scores = rng.choice(np.array([0.1, 0.35, 0.35000000000000003, 0.8]), size=n)
    expected = _brute_auc(labels.tolist(), scores.tolist())
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(labels.astype(bool), scores) == pytest.approx(expected, abs=1e-12)


def test_auc_edge_tables():
    """All tied -> 0.5; perfectly separated -> 1 and reversed -> 0; one class only -> nan."""
    assert roc_auc(np.array([1, 0, 1, 0]), np.full(4, 0.5)) == 0.5
    assert roc_auc(np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.7, 0.2, 0.9, 0.8])) == 1.0
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.1, 0.7, 0.2, 0.9])) == 0.0
    assert np.isnan(roc_auc(np.array([0, 0]), np.array([0.1, 0.2])))
