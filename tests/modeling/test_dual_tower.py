"""The dual tower: continued from a cross-encoder, segments Q/T/I, pooling and VSL, and its checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig

from fbcompress.core.errors import FbError
from fbcompress.modeling.dual_tower import (
    QUERY_SEGMENT,
    TowerSpec,
    pool,
    tower_from_cross_encoder,
    zero_shot_tower,
)
from fbcompress.modeling.model import FashionBERT, PatchSpec, build_config

SPEC = PatchSpec("pixels", 12, 4, 4, 2, 16)


def cross_encoder() -> FashionBERT:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, type_vocab_size=2)
    model = FashionBERT(build_config(config, SPEC)).eval()
    with torch.no_grad():  # segment embeddings that differ, so a copied row is visible
        model.bert.embeddings.token_type_embeddings.weight.normal_()
    return model


def inputs(batch: int = 3, text: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (batch, text), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    return ids, mask, torch.zeros_like(ids), torch.randn(batch, 4, 12, generator=generator)


def test_the_tower_continues_the_cross_encoder_and_q_starts_as_t():
    teacher = cross_encoder()
    tower = tower_from_cross_encoder(teacher, TowerSpec(8, "mean", "title", 8)).eval()
    segments = tower.bert.embeddings.token_type_embeddings.weight
    source = teacher.bert.embeddings.token_type_embeddings.weight
    assert segments.shape[0] == 3
    assert torch.equal(segments[:2], source) and torch.equal(segments[QUERY_SEGMENT], source[0])
    assert torch.equal(tower.patch_proj.weight, teacher.patch_proj.weight)
    layer, source_layer = tower.bert.encoder.layer[1], teacher.bert.encoder.layer[1]
    assert torch.equal(layer.output.dense.weight, source_layer.output.dense.weight)
    assert tower.projection.weight.shape == (8, 16)
    ids, mask, types, patches = inputs()
    with torch.no_grad():
        query = tower.encode_query(ids, mask)
        product = tower.encode_product(ids, mask, types, patches)
    assert query.shape == product.shape == (3, 8)
    torch.testing.assert_close(query.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(product.norm(dim=1), torch.ones(3))


def test_the_zero_shot_tower_is_the_teachers_encoder_mean_pooled():
    """No projection: a product embedding is the normalised mean of the teacher's last hidden states over the real
    text tokens and the image tokens; a query's the same over its text alone (segment Q = T at the start)."""
    teacher = cross_encoder()
    tower = zero_shot_tower(teacher, "mean", "title", 8, space="s")
    ids, mask, types, patches = inputs()
    with torch.no_grad():
        out, full = teacher.encode_tokens(ids, mask, types, patches)
        expected = torch.nn.functional.normalize(pool(out.last_hidden_state, full, "mean"), dim=-1)
        torch.testing.assert_close(tower.encode_product(ids, mask, types, patches), expected)
        text_only, _ = teacher.encode_tokens(ids, mask, types, None)
        expected_query = torch.nn.functional.normalize(pool(text_only.last_hidden_state, mask, "mean"), dim=-1)
        torch.testing.assert_close(tower.encode_query(ids, mask), expected_query)
    assert tower.embedding_dim == 16 and tower.tower.space == "s"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_query_embeds_the_same_padded_or_not(pooling):
    """VSL: padding a query to a longer batch changes nothing, so a batch costs its real length only."""
    tower = tower_from_cross_encoder(cross_encoder(), TowerSpec(8, pooling, "title", 8)).eval()
    ids = torch.tensor([[2, 17, 23, 3]])
    padded = torch.tensor([[2, 17, 23, 3, 0, 0, 0]])
    with torch.no_grad():
        alone = tower.encode_query(ids, torch.ones_like(ids))
        inside = tower.encode_query(padded, torch.tensor([[1, 1, 1, 1, 0, 0, 0]]))
    torch.testing.assert_close(alone, inside, rtol=1e-5, atol=1e-6)


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_checkpoints_of_each_kind_refuse_the_other_loader(tmp_path):
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
    from fbcompress.modeling.checkpoint import load_model, load_tower, save_checkpoint

    tokenizer = load_tokenizer(packaged_minilm_dir())
    teacher = cross_encoder()
    tower = tower_from_cross_encoder(teacher, TowerSpec(8, "mean", "title", 8))
    save_checkpoint(tmp_path / "t", teacher, tokenizer, {"kind": "teacher"})
    save_checkpoint(tmp_path / "r", tower, tokenizer, {"kind": "retriever"})
    loaded, _ = load_tower(tmp_path / "r")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tower.state_dict().values(),
                                                 strict=True))
    assert loaded.tower == dataclasses.replace(tower.tower)
    with pytest.raises(FbError, match="dual-tower retriever checkpoint, not a cross-encoder"):
        load_model(tmp_path / "r")
    with pytest.raises(FbError, match="not a dual-tower retriever"):
        load_tower(tmp_path / "t")


def test_a_config_with_two_segments_cannot_be_a_tower():
    from fbcompress.modeling.dual_tower import TOWER_KEY, DualTower

    config = build_config(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, type_vocab_size=2), SPEC)
    setattr(config, TOWER_KEY, TowerSpec(8, "mean", "title", 8).to_dict())
    with pytest.raises(FbError, match="3 segment embeddings"):
        DualTower(config)
