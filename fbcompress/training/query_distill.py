"""`fbcompress distill --retriever`: the online query encoder, a 2-layer VSL student of the retriever's query tower.

What every search pays online is the query's encoding; queries are a few wordpieces, where a shallow encoder with
variable sequence length is cheapest. The student embeds into the retriever's own space and the product tower is
kept as is, so the index built with the retriever stays valid: shipping a faster query encoder never re-encodes the
catalogue.

* **Student**: `query_encoder.layers` layers copied from the tower (evenly spaced by default), or, narrower, cut out
  of them (modeling/width_pruning.py, channels ranked on training queries); the projection keeps the embedding
  size. Its checkpoint is a dual-tower directory with `role: query` and the retriever's `space`.
* **Losses** over the train split's search queries and titles (training/retriever.py's batches): the embedding term
  1 − cos(student, tower) per query, and the listwise term, the KL from the tower's to the student's softmax of
  similarities / τ over every candidate product of the batch (each query brings one relevant product and hard
  negatives). The products' embeddings come from the tower's product side, once, before training.
* Batches are padded to their own longest query (VSL); steps are pure functions of (seed, step), so resume is exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.loader import SplitData
from fbcompress.data.search_sets import search_queries
from fbcompress.evaluation.retrieval import retrieval_metrics
from fbcompress.modeling.dual_tower import TOWER_KEY, DualTower
from fbcompress.modeling.width_pruning import measure_importance, prune_into
from fbcompress.recipes import QueryEncoderSection, Recipe
from fbcompress.runtime.embedding import TowerEncoder, embed_products, embed_queries, product_texts, query_inputs
from fbcompress.training.distill import copy_layers, student_config, student_layer_map
from fbcompress.training.retriever import RetrieverBatches, title_queries, training_queries

KEY = "query_encoder"
SECTIONS = ("data", "teacher", "train", "retriever", KEY)
PRUNING_BATCHES = 8


def build_query_student(tower: DualTower, section: QueryEncoderSection, batches: list[dict[str, torch.Tensor]]
                        ) -> tuple[DualTower, list[int]]:
    """The student query encoder and its layer map: tower layers copied, or a narrower slice cut out of them."""
    layer_map = student_layer_map(tower.config.num_hidden_layers, section.layers, section.layer_map, KEY)
    config = student_config(tower.config, section, KEY)
    spec = dataclasses.replace(tower.tower, role="query")
    setattr(config, TOWER_KEY, spec.to_dict())
    student = DualTower(config)
    if config.hidden_size == tower.config.hidden_size:
        copy_layers(student, tower, layer_map)
    else:
        prune_into(student, tower, layer_map, measure_importance(tower, batches))
    return student, layer_map


def listwise_loss(student: torch.Tensor, teacher: torch.Tensor, products: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(tower ‖ student) of the softmax of query·product similarities / τ over `products` [M, E], per query."""
    return F.kl_div(F.log_softmax(student @ products.T / tau, dim=-1), F.softmax(teacher @ products.T / tau, dim=-1),
                    reduction="batchmean")


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cosine of unit vectors."""
    return (1.0 - (student * teacher).sum(-1)).mean()


class QueryDistillObjective(nn.Module):
    """forward(global batch index) → {"embedding", "listwise"}; a Module so DDP can wrap it (the tower is frozen)."""

    def __init__(self, student: DualTower, tower: DualTower, products: torch.Tensor, batches: RetrieverBatches,
                 recipe: Recipe, pad_id: int):
        super().__init__()
        self.student = student
        self.tower = tower.eval()
        for param in tower.parameters():
            param.requires_grad_(False)
        self.register_buffer("products", products, persistent=False)
        self.batches = batches
        self.recipe = recipe
        self.pad_id = pad_id
        self.padding = {"real": 0, "batch": 0}

    def forward(self, global_index: int) -> dict[str, torch.Tensor]:
        from fbcompress.training.loop import seeded_streams

        section = self.recipe.query_encoder
        rng, _ = seeded_streams(self.recipe.train.seed, global_index)
        queries, candidates = self.batches.draw(rng)
        device = self.products.device
        inputs = {k: v.to(device) for k, v in query_inputs([q.token_ids for q in queries], self.pad_id).items()}
        self.padding["real"] += int(inputs["attention_mask"].sum())
        self.padding["batch"] += inputs["attention_mask"].numel()
        with torch.no_grad():
            teacher = self.tower.encode_query(**inputs)
        student = self.student.encode_query(**inputs)
        rows = torch.tensor(sorted({r for group in candidates for r in group}), device=device)
        weights = section.weights
        losses = {}
        if weights.embedding > 0:
            losses["embedding"] = embedding_loss(student, teacher)
        if weights.listwise > 0:
            losses["listwise"] = listwise_loss(student, teacher, self.products[rows], section.temperature)
        return losses

    def padding_log(self) -> dict[str, Any]:
        return {"pad_share": round(1 - self.padding["real"] / max(1, self.padding["batch"]), 4)}


class QueryValidator:
    """Recall@10 / nDCG@10 / MRR of the val queries over the val products (embedded once by the tower's product
    side), for the student's queries and, once, the tower's own: how much of the tower the student keeps."""

    def __init__(self, tower: DualTower, data: SplitData, dataset: DatasetDir, tokenizer: Any, batch_size: int,
                 limit: int, device: torch.device):
        own = set(data.products)
        self.queries = [q for q in search_queries(dataset, "val") if set(q.relevant) & own][:limit]
        self.relevance = [{p: g for p, g in q.relevant.items() if p in own} for q in self.queries]
        self.data, self.tokenizer = data, tokenizer
        texts = product_texts(data.records, tower.tower.product_text)
        ids = tokenizer(texts, truncation=True, max_length=data.spec.max_text_len)["input_ids"]
        encoder = TowerEncoder(tower, Path("."), "tower", device)
        self.products = embed_products(encoder, data, range(len(data)), ids, batch_size) if self.queries else None
        self.tower_metrics = self._score(encoder) if self.queries else {}

    def _score(self, encoder: Any) -> dict[str, float]:
        vectors = embed_queries(encoder, [q.text for q in self.queries], tokenizer=self.tokenizer)
        top = np.argsort(-(vectors @ self.products.T), axis=1, kind="stable")[:, :10]
        rankings = [list(dict.fromkeys(self.data.products[j] for j in row)) for row in top]
        metrics = retrieval_metrics(rankings, self.relevance, ks=(10,))
        return {k: float(metrics[k]) for k in ("recall@10", "ndcg@10", "mrr")}

    def __call__(self, model: nn.Module, setup: Any, ctx: Any) -> dict[str, float]:
        if not self.queries:
            return {}
        assert isinstance(model, DualTower)
        student = self._score(TowerEncoder(model, setup.out, "student", ctx.device))
        tower = {f"tower_{k}": v for k, v in self.tower_metrics.items()}
        return {**{f"val_{k}": v for k, v in student.items()}, **tower}


def distill_query_encoder(recipe: Recipe, retriever_dir: Path, data_dir: Path, out: Path, resume: bool, force: bool,
                          device: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """`fbcompress distill --retriever`: build (or resume) the query encoder and train it (see the module doc)."""
    from fbcompress.core import distributed
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_tower
    from fbcompress.training.loop import TrainSetup, run_training

    section = recipe.query_encoder
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    ctx = distributed.setup(device)
    try:
        tower, ckpt = load_tower(retriever_dir, ctx.device)
        if tower.tower.query_only:
            raise FbError(f"{retriever_dir} is a query encoder already; distill from the retriever it came from")
        space = tower.tower.space or f"retriever:{ckpt.weights_sha256}"
        tower.tower = dataclasses.replace(tower.tower, space=space)
        dataset = DatasetDir.open(data_dir)
        tokenizer = load_tokenizer(ckpt.directory)
        spec = tower.spec
        train_data = SplitData(dataset, "train", tokenizer, spec, recipe.data.cache_images)
        val_data = SplitData(dataset, "val", tokenizer, spec, recipe.data.cache_images)
        texts = product_texts(train_data.records, tower.tower.product_text)
        max_len = tower.tower.max_query_len
        searches = training_queries(train_data, search_queries(dataset, "train"), tokenizer, max_len)
        titles = training_queries(train_data, title_queries(train_data, texts), tokenizer, max_len) \
            if recipe.retriever.title_queries > 0 else []
        batches = RetrieverBatches(searches, titles, len(train_data), recipe.retriever.model_copy(
            update={"batch_size": section.batch_size, "candidates": section.candidates}))
        pad = int(tokenizer.pad_token_id)
        pruning = [query_inputs([q.token_ids for q in (searches + titles)[i::PRUNING_BATCHES]][:section.batch_size],
                                pad) for i in range(PRUNING_BATCHES)]
        torch.manual_seed(recipe.train.seed)
        student, layer_map = build_query_student(tower, section, pruning)
        ids = tokenizer(texts, truncation=True, max_length=spec.max_text_len)["input_ids"]
        products = torch.from_numpy(embed_products(TowerEncoder(tower, ckpt.directory, "tower", ctx.device),
                                                   train_data, range(len(train_data)), ids,
                                                   recipe.retriever.encode_batch_size)).to(ctx.device)
        objective = QueryDistillObjective(student, tower, products, batches, recipe, pad)
        setup = TrainSetup(
            kind="query-encoder",
            recipe=recipe,
            model=student,
            objective=objective,
            tokenizer=tokenizer,
            dataset=dataset,
            val_data=val_data,
            out=Path(out),
            weighting="sum",
            fixed_weights=section.weights.model_dump(),
            extra_meta={"retriever": str(retriever_dir), "retriever_sha256": ckpt.weights_sha256, "space": space,
                        "layer_map": layer_map, "student_layers": student.config.num_hidden_layers,
                        "student_hidden": student.config.hidden_size},
            log_extras=objective.padding_log,
            lr=section.lr,
            steps=section.steps,
            sections=SECTIONS,
            validator=QueryValidator(tower, val_data, dataset, tokenizer, recipe.retriever.encode_batch_size,
                                     recipe.retriever.val_queries, ctx.device),
        )
        result = run_training(setup, ctx, resume=resume, force=force, stop_after=stop_after)
        result["padding"] = objective.padding_log()
        return result
    finally:
        distributed.teardown(ctx)
