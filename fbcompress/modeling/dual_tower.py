"""The dual tower: FashionBERT as production search runs it, one shared BERT for queries and products.

Three segment types share the encoder (the FashionBERT write-ups' Query / Title / Image):

* query   = `[CLS] query [SEP]`, segment Q (2), no image tokens: encoded online, for every search;
* product = `[CLS] title [SEP]` (segment T, 0) + 64 image tokens (segment I, 1): encoded offline into the index.

Each side is pooled (mean over the real tokens, or `[CLS]`), projected to `embedding_dim` and L2-normalised, so the
inner product of a query and a product embedding is their cosine similarity. Q's segment embedding starts as a copy
of T's: a query is text, and the tower starts from what the cross-encoder knows about text.

A tower built from a cross-encoder checkpoint without a projection (`zero_shot_tower`) is the baseline that
retriever training must beat: the teacher's encoder used as both towers, as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from fbcompress.core.errors import FbError
from fbcompress.modeling.model import FASHIONBERT_KEY, ImageTextBert, patch_spec_of

TOWER_KEY = "dual_tower"
QUERY_SEGMENT = 2
TEXT_SEGMENT = 0
SEGMENTS = 3  # T, I, Q


@dataclass(frozen=True)
class TowerSpec:
    """How the tower embeds; stored in config.json under `dual_tower`.

    `embedding_dim` None: no projection (the zero-shot tower's embedding is its pooled hidden state).
    `space`: the id of the embedding space, the sha256 of the product tower's weights that made it: an index holds
    embeddings of one space, and a query encoder (this tower, its ONNX export, or a distilled one) may search an
    index only of its own space. None in a retriever checkpoint (its own weights' sha256, known once saved); a
    query encoder distilled from it records its parent's.
    """

    embedding_dim: int | None
    pooling: str  # "mean" | "cls"
    product_text: str  # "title" | "text": the record field the product side reads
    max_query_len: int  # wordpieces of a query, [CLS]/[SEP] included
    space: str | None = None
    role: str = "both"  # "query": a query encoder distilled from a tower; its product side is the parent's

    @property
    def query_only(self) -> bool:
        return self.role == "query"

    def to_dict(self) -> dict:
        return asdict(self)


def tower_spec_of(config: BertConfig) -> TowerSpec:
    entry = getattr(config, TOWER_KEY, None)
    if not isinstance(entry, dict):
        raise FbError("config.json has no dual_tower section: not a retriever checkpoint")
    return TowerSpec(**entry)


def is_tower_config(config: BertConfig) -> bool:
    return isinstance(getattr(config, TOWER_KEY, None), dict)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, S, H] → [B, H]: the mean over real tokens (mask 1), or the first ([CLS]) token."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class DualTower(ImageTextBert):
    """Query and product towers with shared parameters (see the module doc)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.type_vocab_size < SEGMENTS:
            raise FbError(f"a dual tower needs {SEGMENTS} segment embeddings (T, I, Q), the config has "
                          f"{config.type_vocab_size}")
        self.config = config
        self.tower = tower_spec_of(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self._build_patch_encoder(config.hidden_size)
        dim = self.tower.embedding_dim
        self.projection = nn.Linear(config.hidden_size, dim) if dim is not None else nn.Identity()
        for module in (self.patch_proj, self.patch_position, self.projection):
            module.apply(self.bert._init_weights)

    @property
    def embedding_dim(self) -> int:
        return self.tower.embedding_dim or self.config.hidden_size

    def _embed(self, input_ids, attention_mask, token_type_ids, patches) -> torch.Tensor:
        out, mask = self.encode_tokens(input_ids, attention_mask, token_type_ids, patches)
        return F.normalize(self.projection(pool(out.last_hidden_state, mask, self.tower.pooling)).float(), dim=-1)

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E] L2-normalised query embeddings; `token_type_ids` default to segment Q."""
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, QUERY_SEGMENT)
        return self._embed(input_ids, attention_mask, token_type_ids, None)

    def encode_product(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                       patches: torch.Tensor) -> torch.Tensor:
        """[B, E] L2-normalised product embeddings from the title (segment T) and the image tokens (segment I)."""
        return self._embed(input_ids, attention_mask, token_type_ids, patches)


def tower_config(cross_encoder: BertConfig, spec: TowerSpec) -> BertConfig:
    """A cross-encoder's config with a third segment and the tower's spec."""
    config = BertConfig.from_dict(cross_encoder.to_dict())
    config.type_vocab_size = max(SEGMENTS, cross_encoder.type_vocab_size)
    setattr(config, TOWER_KEY, spec.to_dict())
    setattr(config, FASHIONBERT_KEY, patch_spec_of(cross_encoder).to_dict())
    config.architectures = ["FashionBERTDualTower"]
    return config


def tower_from_cross_encoder(cross_encoder: ImageTextBert, spec: TowerSpec) -> DualTower:
    """A dual tower continued from a cross-encoder: its encoder and patch encoder copied (the pooler and the task
    heads are the cross-encoder's own), segment Q initialised from segment T, a fresh projection."""
    tower = DualTower(tower_config(cross_encoder.config, spec))
    source = cross_encoder.state_dict()
    state = tower.state_dict()
    for name in state:
        if name.startswith("projection."):
            continue
        if name == "bert.embeddings.token_type_embeddings.weight":
            segments = source[name]
            state[name] = torch.cat([segments, segments[TEXT_SEGMENT:TEXT_SEGMENT + 1].expand(
                state[name].shape[0] - segments.shape[0], -1)], dim=0)
        else:
            state[name] = source[name].clone()
    tower.load_state_dict(state)
    return tower


def zero_shot_tower(cross_encoder: ImageTextBert, pooling: str, product_text: str, max_query_len: int,
                    space: str) -> DualTower:
    """The baseline: a cross-encoder's encoder used as both towers without retriever training (no projection)."""
    spec = TowerSpec(embedding_dim=None, pooling=pooling, product_text=product_text, max_query_len=max_query_len,
                     space=space)
    return tower_from_cross_encoder(cross_encoder, spec).eval()
