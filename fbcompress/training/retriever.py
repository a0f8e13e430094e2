"""`fbcompress train-retriever`: the dual tower (modeling/dual_tower.py) continued from the cross-encoder teacher.

What a step learns from (the recipe's `retriever` section):

* **Queries**: the train split's search queries (`eval-search.jsonl` or an import's search logs), each relevant to
  the train products among its graded relevant ones, and a share of product titles used as queries (relevant: the
  products of that title). Val and test products are never seen.
* **Candidates**: each query brings one relevant product (grade 2 twice as likely as grade 1) and candidates-1
  hard negatives, products of the same subcategory that are not relevant to it (elsewhere only when its
  subcategory has none).
* **Contrastive**: symmetric in-batch InfoNCE over every product of the batch, temperature τ. Products relevant to
  a query are taken out of its negatives (a batch with "dress" and "red dress" must not teach that a red dress is
  not a dress), likewise queries relevant to a product in the product→query direction.
* **Distillation**: over each query's own candidates, the KL from the cross-encoder's match scores (softmax of
  its logit margin at `distill_temperature`) to the tower's (softmax of similarity / τ): the cross-encoder reads
  query and image together and knows fine-grained attributes that in-batch negatives rarely test. The scores come
  from the teacher itself, or from any scorer (`--scores-from`: a student bundle is ~20x cheaper on a CPU).

Task weights: the adaptive loss re-solved at every step, as the teacher's (or fixed, for the ablation). Batches,
like the teacher's, are a pure function of (seed, global index), so resume is exact and DDP ranks take their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.loader import SplitData, pad_texts
from fbcompress.data.search_sets import SearchQuery, search_queries
from fbcompress.evaluation.retrieval import retrieval_metrics
from fbcompress.modeling.dual_tower import DualTower, TowerSpec, tower_from_cross_encoder
from fbcompress.recipes import Recipe, RetrieverSection
from fbcompress.runtime.embedding import (
    TowerEncoder,
    embed_products,
    embed_queries,
    product_texts,
    query_inputs,
    tokenize_queries,
)
from fbcompress.runtime.scoring import Scorer

SECTIONS = ("data", "teacher", "train", "retriever")  # what a retriever's weights depend on (resume compares them)
NEW_PARAMETERS = ("projection.",)  # trained at retriever.projection_lr; the rest continues the teacher's encoder


@dataclass
class TrainQuery:
    """A query with its relevant train rows, the positives' draw weights (grades) and its hard negatives."""

    text: str
    token_ids: list[int]
    relevant: set[int]
    positives: list[int]
    grades: list[int]
    hard: list[int]


def _rows_of_products(data: SplitData) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for row, product in enumerate(data.products):
        rows.setdefault(product, []).append(row)
    return rows


def title_queries(data: SplitData, field_texts: list[str]) -> list[SearchQuery]:
    """Each distinct title of the split as a query, relevant (grade 2): the products that bear it."""
    by_title: dict[str, set[str]] = {}
    for row, text in enumerate(field_texts):
        by_title.setdefault(" ".join(text.lower().split()), set()).add(data.products[row])
    return [SearchQuery(text, dict.fromkeys(sorted(products), 2)) for text, products in sorted(by_title.items())]


def training_queries(data: SplitData, queries: list[SearchQuery], tokenizer: Any, max_query_len: int
                     ) -> list[TrainQuery]:
    """The queries that have a relevant product in the split, with their rows and hard negatives."""
    rows_of = _rows_of_products(data)
    by_sub: dict[str, list[int]] = {}
    for row, record in enumerate(data.records):
        by_sub.setdefault(str(record["subcategory"]), []).append(row)
    kept = [(q, [(row, g) for p, g in q.relevant.items() for row in rows_of.get(p, ())]) for q in queries]
    kept = [(q, rows) for q, rows in kept if rows]
    if not kept:
        return []
    ids = tokenize_queries(tokenizer, [q.text for q, _ in kept], max_query_len)
    out = []
    for (query, rows), token_ids in zip(kept, ids, strict=True):
        relevant = {row for row, _ in rows}
        subcategories = sorted({str(data.records[row]["subcategory"]) for row in relevant})
        hard = [r for sub in subcategories for r in by_sub[sub] if r not in relevant]
        out.append(TrainQuery(query.text, token_ids, relevant, [row for row, _ in rows], [g for _, g in rows], hard))
    return out


class RetrieverBatches:
    """The batch of a global index: `batch_size` queries, each with `candidates` train rows (positive first)."""

    def __init__(self, searches: list[TrainQuery], titles: list[TrainQuery], rows: int, section: RetrieverSection):
        if not searches and not titles:
            raise FbError("no training queries: no search query of the train split names a train product")
        self.searches, self.titles, self.rows, self.section = searches, titles, rows, section
        if rows < 2:
            raise FbError("the train split needs at least two products to train a retriever")

    def draw(self, rng: random.Random) -> tuple[list[TrainQuery], list[list[int]]]:
        queries, candidates = [], []
        share = self.section.title_queries if self.searches else 1.0
        for _ in range(self.section.batch_size):
            pool = self.titles if self.titles and rng.random() < share else self.searches or self.titles
            query = rng.choice(pool)
            positive = rng.choices(query.positives, weights=query.grades)[0]
            candidates.append([positive, *self._negatives(query, self.section.candidates - 1, rng)])
            queries.append(query)
        return queries, candidates

    def _negatives(self, query: TrainQuery, n: int, rng: random.Random) -> list[int]:
        if n <= 0:
            return []
        if len(query.hard) >= n:
            return rng.sample(query.hard, n)
        chosen = list(query.hard)
        if len(query.relevant) + len(chosen) >= self.rows:
            return chosen  # every row is relevant or already chosen
        while len(chosen) < n:  # the subcategory has too few: others from anywhere
            row = rng.randrange(self.rows)
            if row not in query.relevant and row not in chosen:
                chosen.append(row)
        return chosen


def masked_info_nce(similarity: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor, tau: float
                    ) -> torch.Tensor:
    """Cross-entropy of rows of `similarity` [N, M] / tau against `targets` [N], with `excluded` [N, M] entries
    (other positives) taken out of the softmax."""
    logits = (similarity / tau).masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, targets)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, relevance: torch.Tensor, candidates: int, tau: float
                     ) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. q [B, E] queries, p [B*C, E] products (query i's positive at column i*C),
    relevance [B, B*C] bool: product j is relevant to query i (and then never its negative)."""
    batch = q.shape[0]
    similarity = q @ p.T
    targets = torch.arange(batch, device=q.device) * candidates
    own = torch.zeros_like(relevance)
    own[torch.arange(batch), targets] = True
    query_to_product = masked_info_nce(similarity, targets, relevance & ~own, tau)
    positives = similarity[:, targets].T  # [B products, B queries]
    pos_relevance = relevance[:, targets].T
    eye = torch.eye(batch, dtype=torch.bool, device=q.device)
    product_to_query = masked_info_nce(positives, torch.arange(batch, device=q.device), pos_relevance & ~eye, tau)
    return 0.5 * (query_to_product + product_to_query)


def score_distillation_loss(q: torch.Tensor, p: torch.Tensor, teacher_margin: torch.Tensor, tau: float,
                            teacher_tau: float) -> torch.Tensor:
    """KL(cross-encoder ‖ tower) over each query's own candidates. q [B, E], p [B*C, E], teacher_margin [B, C]."""
    batch, candidates = teacher_margin.shape
    own = (q[:, None, :] * p.view(batch, candidates, -1)).sum(-1)  # [B, C]
    target = F.softmax(teacher_margin / teacher_tau, dim=-1)
    return F.kl_div(F.log_softmax(own / tau, dim=-1), target, reduction="batchmean")


def cross_encoder_margins(scorer: Scorer, tokenizer: Any, data: SplitData, queries: list[TrainQuery],
                          candidates: list[list[int]]) -> torch.Tensor:
    """The cross-encoder's logit margin (match − no match) of every (query, candidate image) pair: [B, C]."""
    texts = [q.text for q, rows in zip(queries, candidates, strict=True) for _ in rows]
    ids = tokenizer(texts, truncation=True, max_length=scorer.spec.max_text_len)["input_ids"]
    text = pad_texts(ids, int(tokenizer.pad_token_id))
    patches = torch.from_numpy(np.stack([data.patches(r) for rows in candidates for r in rows]))
    logits = scorer.logits({"input_ids": text.input_ids, "attention_mask": text.attention_mask,
                            "token_type_ids": text.token_type_ids, "patches": patches})
    return torch.from_numpy(np.asarray(logits[:, 1] - logits[:, 0], dtype=np.float32)).view(len(queries), -1)


class RetrieverObjective(nn.Module):
    """forward(global batch index) → {"contrastive", "distill"} task losses; a Module so DDP can wrap it."""

    def __init__(self, tower: DualTower, data: SplitData, product_ids: list[list[int]], batches: RetrieverBatches,
                 recipe: Recipe, scorer: Scorer | None, scorer_tokenizer: Any | None, pad_id: int):
        super().__init__()
        self.tower = tower
        self.data = data
        self.product_ids = product_ids
        self.batches = batches
        self.recipe = recipe
        self.scorer = scorer  # not a Module: frozen, outside autograd and DDP
        self.scorer_tokenizer = scorer_tokenizer
        self.pad_id = pad_id

    def forward(self, global_index: int) -> dict[str, torch.Tensor]:
        from fbcompress.training.loop import seeded_streams

        section = self.recipe.retriever
        rng, _ = seeded_streams(self.recipe.train.seed, global_index)
        queries, candidates = self.batches.draw(rng)
        device = next(self.tower.parameters()).device
        rows = [r for group in candidates for r in group]
        q_in = query_inputs([q.token_ids for q in queries], self.pad_id)
        text = pad_texts([self.product_ids[r] for r in rows], self.pad_id)
        patches = torch.from_numpy(np.stack([self.data.patches(r) for r in rows]))
        q = self.tower.encode_query(**{k: v.to(device) for k, v in q_in.items()})
        p = self.tower.encode_product(text.input_ids.to(device), text.attention_mask.to(device),
                                      text.token_type_ids.to(device), patches.to(device))
        relevance = torch.tensor([[r in query.relevant for r in rows] for query in queries], device=device)
        losses = {}
        if "contrastive" in section.tasks:
            losses["contrastive"] = contrastive_loss(q, p, relevance, section.candidates, section.temperature)
        if self.scorer is not None:
            with torch.no_grad():
                margins = cross_encoder_margins(self.scorer, self.scorer_tokenizer, self.data, queries,
                                                candidates).to(device)
            losses["distill"] = score_distillation_loss(q, p, margins, section.temperature,
                                                        section.distill_temperature)
        return losses


def validate_retriever(model: nn.Module, setup: Any, ctx: Any) -> dict[str, float]:
    """Recall@10, nDCG@10 and MRR of the val split's queries over the val products (exact search): the cheap
    signal during training; `eval-retrieval` measures over the whole catalogue."""
    assert isinstance(model, DualTower)
    data: SplitData = setup.val_data
    section = setup.recipe.retriever
    encoder = TowerEncoder(model, setup.out, "training", ctx.device)
    queries = [q for q in search_queries(setup.dataset, "val") if set(q.relevant) & set(data.products)]
    queries = queries[:section.val_queries]
    if not queries:
        return {}
    texts = product_texts(data.records, model.tower.product_text)
    token_ids = setup.tokenizer(texts, truncation=True, max_length=data.spec.max_text_len)["input_ids"]
    products = embed_products(encoder, data, range(len(data)), token_ids, section.encode_batch_size)
    query_vectors = embed_queries(encoder, [q.text for q in queries], tokenizer=setup.tokenizer)
    top = np.argsort(-(query_vectors @ products.T), axis=1, kind="stable")[:, :10]
    rankings = [list(dict.fromkeys(data.products[j] for j in row)) for row in top]
    own = set(data.products)
    metrics = retrieval_metrics(rankings, [{p: g for p, g in q.relevant.items() if p in own} for q in queries],
                                ks=(10,))
    return {f"val_{k}": float(metrics[k]) for k in ("recall@10", "ndcg@10", "mrr")}


def freeze_bottom(tower: DualTower, layers: int) -> None:
    """No gradient for the embeddings, the patch encoder and the first `layers` encoder layers (shared by both
    towers): they stay the teacher's, and a step skips their backward pass."""
    total = tower.config.num_hidden_layers
    if layers > total:
        raise FbError(f"retriever.frozen_layers {layers} exceeds the teacher's {total} layers")
    if layers == 0:
        return
    frozen = [tower.bert.embeddings, tower.patch_proj, tower.patch_position, *tower.bert.encoder.layer[:layers]]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)


def tower_spec(section: RetrieverSection, max_text_len: int) -> TowerSpec:
    if section.max_query_len > max_text_len:
        raise FbError(f"retriever.max_query_len {section.max_query_len} exceeds the model's {max_text_len} text "
                      "positions")
    return TowerSpec(embedding_dim=section.embedding_dim, pooling=section.pooling, product_text=section.product_text,
                     max_query_len=section.max_query_len)


def train_retriever(recipe: Recipe, teacher_dir: Path, data_dir: Path, out: Path, resume: bool, force: bool,
                    device: str | None = None, stop_after: int | None = None, scores_from: Path | None = None
                    ) -> dict[str, Any]:
    """`fbcompress train-retriever`: build (or resume) the dual tower from the teacher and train it."""
    from fbcompress.core import distributed
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model
    from fbcompress.runtime.scoring import TorchScorer, open_scorer
    from fbcompress.training.loop import TrainSetup, run_training

    section = recipe.retriever
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    ctx = distributed.setup(device)
    try:
        teacher, teacher_ckpt = load_model(teacher_dir, ctx.device)
        dataset = DatasetDir.open(data_dir)
        tokenizer = load_tokenizer(teacher_ckpt.directory)
        spec = teacher.spec
        train_data = SplitData(dataset, "train", tokenizer, spec, recipe.data.cache_images)
        val_data = SplitData(dataset, "val", tokenizer, spec, recipe.data.cache_images)
        texts = product_texts(train_data.records, section.product_text)
        product_ids = tokenizer(texts, truncation=True, max_length=spec.max_text_len)["input_ids"]
        searches = training_queries(train_data, search_queries(dataset, "train"), tokenizer, section.max_query_len)
        titles = training_queries(train_data, title_queries(train_data, texts), tokenizer, section.max_query_len) \
            if section.title_queries > 0 else []
        batches = RetrieverBatches(searches, titles, len(train_data), section)
        torch.manual_seed(recipe.train.seed)
        tower = tower_from_cross_encoder(teacher, tower_spec(section, spec.max_text_len))
        freeze_bottom(tower, section.frozen_layers)
        scorer, scorer_tokenizer = None, None
        if "distill" in section.tasks and section.candidates < 2:
            raise FbError("retriever.tasks has 'distill', which ranks each query's candidates: it needs "
                          f"retriever.candidates >= 2 (got {section.candidates})")
        if "distill" in section.tasks:
            if scores_from is None:
                scorer = TorchScorer(teacher, teacher_ckpt.directory, str(teacher_dir), str(ctx.device))
            else:
                scorer = open_scorer(scores_from, "cpu" if ctx.device.type == "cpu" else str(ctx.device))
            scorer_tokenizer = load_tokenizer(Path(scorer.tokenizer_dir))
            if scorer.spec.to_dict() != spec.to_dict():
                raise FbError(f"--scores-from {scores_from} reads other image tokens than the teacher "
                              f"({scorer.spec.patch_encoder}, {scorer.spec.patch_dim} values per patch)")
        objective = RetrieverObjective(tower, train_data, product_ids, batches, recipe, scorer, scorer_tokenizer,
                                       int(tokenizer.pad_token_id))
        setup = TrainSetup(
            kind="retriever",
            recipe=recipe,
            model=tower,
            objective=objective,
            tokenizer=tokenizer,
            dataset=dataset,
            val_data=val_data,
            out=Path(out),
            weighting=section.loss_weighting,
            fixed_weights=section.fixed_weights.model_dump(),
            extra_meta={"teacher": str(teacher_dir), "teacher_sha256": teacher_ckpt.weights_sha256,
                        "scores_from": _scorer_identity(scorer, teacher_ckpt.weights_sha256, scores_from)},
            info_meta={"training_queries": {"search": len(searches), "titles": len(titles)}},
            lr=section.lr,
            new_lr=section.projection_lr,
            new_prefixes=NEW_PARAMETERS,
            steps=section.steps,
            sections=SECTIONS,
            validator=validate_retriever,
        )
        return run_training(setup, ctx, resume=resume, force=force, stop_after=stop_after)
    finally:
        distributed.teardown(ctx)


def _scorer_identity(scorer: Scorer | None, teacher_sha: str, scores_from: Path | None) -> str | None:
    """What gave the distillation scores: the teacher's weights, another scorer's path, or nothing."""
    if scorer is None:
        return None
    return f"teacher:{teacher_sha}" if scores_from is None else f"scorer:{Path(scores_from).resolve()}"
