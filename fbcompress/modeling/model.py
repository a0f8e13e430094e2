"""FashionBERT: one BERT reads `[CLS] text [SEP]` followed by 64 image tokens (one per patch).

The text part is the tokenizer's own output (`[CLS] ... [SEP]`, right-padded only to the batch's longest text);
the model appends the patch tokens inside, with their own position embeddings and segment id 1. Because patch
positions do not depend on the text length and padded text positions are masked out, a text scores the same
whether it is padded or not: this is what makes variable sequence length (VSL) exact.

Heads:
* ITA (text-image alignment): 2-way classifier on the pooled `[CLS]`; `logits[:, 1]` is the match score.
* MLM: tied to the word embeddings, computed only at the masked positions (the vocabulary projection is the
  costliest matmul of the model; unmasked positions would only be thrown away).
* MPM: predicts a masked patch's feature distribution; trained with KL to the softmax of the original patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

FASHIONBERT_KEY = "fashionbert"


@dataclass(frozen=True)
class PatchSpec:
    """How images become image tokens; stored in config.json under `fashionbert`."""

    patch_encoder: str  # "pixels" | "features"
    patch_dim: int  # 3*p*p raw pixels, or the feature size
    num_patches: int
    image_size: int
    grid: int
    max_text_len: int
    # features made by `data features`: the image encoder's sha256, its mode and input size (ImageEncoder), so that
    # a model refuses features of another encoder or mode, and export can rebuild the encoder for the bundle
    feature_encoder: str | None = None
    feature_mode: str | None = None
    feature_input_size: int | None = None

    def to_dict(self) -> dict:
        """The spec as stored (config.json, bundle manifest); pixel models and legacy one-.npy-per-record features
        have no encoder, and their stored spec has no feature_* keys at all."""
        return {k: v for k, v in self.__dict__.items() if not (k.startswith("feature_") and v is None)}

    def encoder_matches(self, identity: dict) -> bool:
        """Whether an encoder identity (`EncoderIdentity.to_dict()`) made the features this model reads."""
        return (identity.get("sha256"), identity.get("mode"), identity.get("input_size")) == (
            self.feature_encoder, self.feature_mode, self.feature_input_size)


def patch_spec_of(config: BertConfig) -> PatchSpec:
    return PatchSpec(**getattr(config, FASHIONBERT_KEY))


@dataclass
class EncoderOutput:
    sequence: torch.Tensor  # [B, T+P, H]
    pooled: torch.Tensor  # [B, H]
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings output + one per layer
    attentions: tuple[torch.Tensor, ...] | None  # one [B, heads, S, S] per layer


class ImageTextBert(nn.Module):
    """A BERT that reads `[CLS] text [SEP]` and, optionally, 64 image tokens: the embedding and encoder shared by
    the cross-encoder (FashionBERT) and the dual tower (modeling/dual_tower.py). Subclasses create the parameters
    in their own order (it fixes their random initialisation) and call `_build_patch_encoder`."""

    config: BertConfig
    bert: BertModel
    patch_proj: nn.Linear
    patch_position: nn.Embedding

    def _build_patch_encoder(self, hidden: int) -> None:
        spec = patch_spec_of(self.config)
        self.patch_proj = nn.Linear(spec.patch_dim, hidden)
        self.patch_position = nn.Embedding(spec.num_patches, hidden)

    @property
    def spec(self) -> PatchSpec:
        return patch_spec_of(self.config)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, patches: torch.Tensor | None
              ) -> torch.Tensor:
        """Token embeddings of the text and, unless `patches` is None (a query), of the image tokens (segment 1,
        their own positions)."""
        emb = self.bert.embeddings
        text_pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        text = emb.word_embeddings(input_ids) + emb.position_embeddings(text_pos)[None]
        text = text + emb.token_type_embeddings(token_type_ids)
        if patches is not None:
            patch_pos = torch.arange(patches.shape[1], device=input_ids.device)
            image_type = torch.ones_like(patch_pos)
            image = self.patch_proj(patches) + self.patch_position(patch_pos)[None]
            image = image + emb.token_type_embeddings(image_type)[None]
            text = torch.cat([text, image], dim=1)
        return emb.dropout(emb.LayerNorm(text))

    def encode_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        patches: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Any, torch.Tensor]:
        """The encoder's output over text (+ image) tokens, and the full 0/1 mask [B, S] it attended with."""
        hidden = self.embed(input_ids, token_type_ids, patches)
        mask = attention_mask
        if patches is not None:
            image_mask = torch.ones(patches.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
            mask = torch.cat([attention_mask, image_mask], dim=1)
        out = self.bert.encoder(
            hidden,
            attention_mask=additive_mask(mask, hidden.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return out, mask


class FashionBERT(ImageTextBert):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        spec = patch_spec_of(config)
        hidden = config.hidden_size
        self.bert = BertModel(config, add_pooling_layer=True)
        self._build_patch_encoder(hidden)
        self.mlm_transform = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        )
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.mpm_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=config.layer_norm_eps),
            nn.Linear(hidden, spec.patch_dim),
        )
        self.ita_head = nn.Linear(hidden, 2)
        for module in (self.patch_proj, self.patch_position, self.mlm_transform, self.mpm_head, self.ita_head):
            module.apply(self.bert._init_weights)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        patches: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        out, _ = self.encode_tokens(input_ids, attention_mask, token_type_ids, patches, output_hidden_states,
                                    output_attentions)
        pooled = self.bert.pooler(out.last_hidden_state)
        return EncoderOutput(out.last_hidden_state, pooled, out.hidden_states, out.attentions)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        patches: torch.Tensor,
    ) -> torch.Tensor:
        """The scoring contract of every backend: alignment logits [B, 2]."""
        return self.ita_head(self.encode(input_ids, attention_mask, token_type_ids, patches).pooled)

    def attention_probs(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention probabilities [B, heads, S, S] of encoder layer `layer` from its input `hidden` and the
        full (text + image) 0/1 `mask`, before attention dropout.

        Why not `encode(output_attentions=True)`: that switches every layer from SDPA to the eager kernel, which
        materialises all the maps. Distillation needs one layer's map; recomputing it from that layer's input
        (Q·Kᵀ and a softmax) made an H128 distillation step 7% cheaper on a 2-core CPU (0.853 -> 0.796 s)."""
        attention = self.bert.encoder.layer[layer].attention.self
        batch, length, _ = hidden.shape
        heads, size = attention.num_attention_heads, attention.attention_head_size
        query = attention.query(hidden).view(batch, length, heads, size).transpose(1, 2)
        key = attention.key(hidden).view(batch, length, heads, size).transpose(1, 2)
        scores = query @ key.transpose(-1, -2) / math.sqrt(size)
        return (scores + additive_mask(mask, scores.dtype)).softmax(-1)

    def mlm_logits(self, sequence: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at `positions` (a [N, 2] index of (row, column)) only."""
        picked = sequence[positions[:, 0], positions[:, 1]]
        return F.linear(self.mlm_transform(picked), self.bert.embeddings.word_embeddings.weight, self.mlm_bias)

    def mpm_logits(self, sequence: torch.Tensor, text_len: int, positions: torch.Tensor) -> torch.Tensor:
        """Predicted patch-feature logits at masked patch `positions` ([N, 2]: row, patch index)."""
        picked = sequence[positions[:, 0], text_len + positions[:, 1]]
        return self.mpm_head(picked)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] 0/1 → [B, 1, 1, S] additive attention mask (0 where attended, the dtype's minimum where masked)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def build_config(backbone: BertConfig, spec: PatchSpec) -> BertConfig:
    config = BertConfig.from_dict(backbone.to_dict())
    setattr(config, FASHIONBERT_KEY, spec.to_dict())
    config.architectures = ["FashionBERT"]
    return config
