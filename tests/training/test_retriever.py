"""train-retriever: the losses on hand-made cases, the batches it draws, and the command (resume, bad input)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import assert_one_line_error, run

from fbcompress.training.retriever import (
    RetrieverBatches,
    TrainQuery,
    contrastive_loss,
    masked_info_nce,
    score_distillation_loss,
)


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=-1)


def test_info_nce_leaves_other_relevant_products_out_of_the_negatives():
    """Query 0's positive is column 0; column 1 is relevant to it too (say "red dress" for the query "dress"): it
    must neither help nor hurt. The loss equals a hand-computed softmax over columns 0 and 2 only."""
    similarity = torch.tensor([[0.5, 0.9, 0.1]])
    excluded = torch.tensor([[False, True, False]])
    got = masked_info_nce(similarity, torch.tensor([0]), excluded, tau=0.5)
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.2)))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unmasked = masked_info_nce(similarity, torch.tensor([0]), torch.zeros_like(excluded), tau=0.5)
    assert unmasked.item() > got.item()  # without the mask the relevant column counts as a negative


def test_contrastive_loss_is_the_mean_of_both_directions():
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([1.0, 0.1], [0.3, 1.0], [0.0, 1.0], [1.0, 1.0])  # two candidates per query: positives at 0 and 2
    relevance = torch.tensor([[True, False, False, False], [False, False, True, False]])
    tau = 0.1
    sim = q @ p.T
    q2p = F.cross_entropy(sim / tau, torch.tensor([0, 2]))
    p2q = F.cross_entropy(sim[:, [0, 2]].T / tau, torch.tensor([0, 1]))
    got = contrastive_loss(q, p, relevance, candidates=2, tau=tau)
    assert got.item() == pytest.approx(0.5 * (q2p + p2q).item(), rel=1e-6)
    # a product relevant to the other query leaves that query's softmax, in both directions
    relevance[1, 0] = True
    masked_q2p = F.cross_entropy((sim / tau).masked_fill(torch.tensor([[False] * 4, [True, False, False, False]]),
                                                         float("-inf")), torch.tensor([0, 2]))
    masked_p2q = F.cross_entropy((sim[:, [0, 2]].T / tau).masked_fill(torch.tensor([[False, True], [False, False]]),
                                                                       float("-inf")), torch.tensor([0, 1]))
    assert contrastive_loss(q, p, relevance, 2, tau).item() == pytest.approx(0.5 * (masked_q2p + masked_p2q).item(),
                                                                             rel=1e-6)


def test_score_distillation_is_zero_only_when_the_tower_ranks_like_the_cross_encoder():
    q = unit([1.0, 0.0])
    p = unit([1.0, 0.0], [0.6, 0.8], [0.0, 1.0])
    own = (q @ p.T)[0]
    tau, teacher_tau = 0.05, 2.0
    matching = (own / tau * teacher_tau)[None]  # the same distribution at the teacher's temperature
    assert score_distillation_loss(q, p, matching, tau, teacher_tau).item() == pytest.approx(0.0, abs=1e-6)
    reversed_margins = matching.flip(-1)
    loss = score_distillation_loss(q, p, reversed_margins, tau, teacher_tau)
    target = F.softmax(reversed_margins / teacher_tau, -1)
    expected = (target * (target.log() - F.log_softmax(own[None] / tau, -1))).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 1.0


def _query(text: str, relevant: list[int], hard: list[int]) -> TrainQuery:
    return TrainQuery(text, [101, 102], set(relevant), relevant, [2] * len(relevant), hard)


def test_batches_take_a_relevant_positive_and_hard_negatives_first():
    from fbcompress.recipes import RetrieverSection

    section = RetrieverSection(batch_size=6, candidates=3, title_queries=0.0)
    queries = [_query("red dress", [0, 1], [2, 3, 4]), _query("dress", list(range(5)), [])]
    batches = RetrieverBatches(queries, [], rows=10, section=section)
    drawn, candidates = batches.draw(random.Random(0))
    assert batches.draw(random.Random(0)) == (drawn, candidates)  # a function of the random stream alone
    for query, rows in zip(drawn, candidates, strict=True):
        assert len(rows) == 3 and len(set(rows)) == 3
        assert rows[0] in query.relevant and not set(rows[1:]) & query.relevant
        if query.text == "red dress":
            assert set(rows[1:]) <= {2, 3, 4}  # its subcategory's non-relevant products
        else:
            assert set(rows[1:]) <= set(range(5, 10))  # nothing hard left: anything not relevant


def test_title_queries_make_up_their_share_of_a_batch():
    from fbcompress.recipes import RetrieverSection

    section = RetrieverSection(batch_size=400, candidates=1, title_queries=0.25)
    batches = RetrieverBatches([_query("s", [0], [])], [_query("t", [1], [])], rows=4, section=section)
    drawn, _ = batches.draw(random.Random(3))
    share = sum(q.text == "t" for q in drawn) / len(drawn)
    assert 0.18 < share < 0.32


def test_training_queries_keep_to_the_split(search_data):
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.data.search_sets import search_queries
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
    from fbcompress.modeling.model import PatchSpec
    from fbcompress.training.retriever import training_queries

    dataset = DatasetDir.open(search_data)
    tokenizer = load_tokenizer(packaged_minilm_dir())
    data = SplitData(dataset, "train", tokenizer, PatchSpec("pixels", 12, 64, 32, 8, 32))
    rows = training_queries(data, search_queries(dataset, "train"), tokenizer, 16)
    assert rows
    for query in rows:
        products = {data.products[r] for r in query.relevant}
        source = next(q for q in search_queries(dataset, "train") if q.text == query.text)
        assert products == set(source.relevant) & set(data.products)  # train products only, all of them
        assert all(data.records[r]["subcategory"] in {data.records[p]["subcategory"] for p in query.relevant}
                   and r not in query.relevant for r in query.hard)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_train_retriever_resumes_exactly_after_a_stop(search_teacher, search_data, tmp_path):
    """`--stop-after 3` then `--resume` ends with the weights of an uninterrupted run (steps are pure functions of
    the seed and the step), and the checkpoint says what it is."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["train-retriever", "-r", "smoke", "--teacher", search_teacher, "--data", search_data]
    assert run(*common, "--out", whole).exit_code == 0
    stopped = run(*common, "--out", parts, "--stop-after", "3")
    assert stopped.exit_code == 0, stopped.output
    assert json.loads((parts / "fbcompress.json").read_text())["step"] == 3
    resumed = run(*common, "--out", parts, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((whole / "fbcompress.json").read_text())
    assert meta["kind"] == "retriever" and meta["finished"] and "val_recall@10" in meta["metrics"]
    assert meta["training_queries"]["search"] > 0 and meta["training_queries"]["titles"] > 0
    log = [json.loads(line) for line in (whole / "train-log.jsonl").read_text().splitlines()]
    assert set(log[-1]["weights"]) == {"contrastive", "distill"}  # adaptive weights over both tasks
    assert sum(log[-1]["weights"].values()) == pytest.approx(1.0)


def test_train_retriever_bad_input_is_one_line(search_teacher, search_data, tiny_data, tmp_path):
    common = ["train-retriever", "-r", "smoke", "--out", tmp_path / "r"]
    assert_one_line_error(run(*common, "--teacher", tmp_path / "none", "--data", search_data), "not found")
    # a dataset without search queries (made by the writer alone, no eval-search.jsonl)
    assert_one_line_error(run(*common, "--teacher", search_teacher, "--data", tiny_data), "no search queries")
    assert_one_line_error(run(*common, "--teacher", search_teacher, "--data", search_data, "--set",
                              "retriever.candidates=1"), "needs retriever.candidates >= 2")
    assert not (tmp_path / "r").exists()


RANK_DRIVER = '''
import sys
from pathlib import Path
from fbcompress.recipes import load_recipe
from fbcompress.training.retriever import train_retriever
train_retriever(load_recipe("smoke"), Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), resume=False,
                force=False, device="cpu")
'''


@pytest.mark.slow
def test_train_retriever_under_two_torchrun_ranks(search_teacher, search_data, tmp_path):
    """DDP (gloo, CPU): each rank trains on its own batches, rank 0 alone writes one finished checkpoint."""
    from rank_helpers import run_ranks

    driver = tmp_path / "driver.py"
    driver.write_text(RANK_DRIVER)
    run_ranks([str(driver), str(search_teacher), str(search_data), str(tmp_path / "r")], timeout=240)
    meta = json.loads((tmp_path / "r" / "fbcompress.json").read_text())
    assert meta["world_size"] == 2 and meta["finished"] and meta["step"] == 6
