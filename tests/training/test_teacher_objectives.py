"""The optional teacher aids: patch-encoder warm start, ITC, all-occurrence masking, easy/hard negatives."""

from __future__ import annotations

import random

import pytest
import torch

from fbcompress.training.masking import group_repeated_words, whole_word_mask, word_spans
from fbcompress.training.patch_warmup import late_interaction_similarity


def test_late_interaction_similarity_prefers_the_image_that_holds_each_word():
    words = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one text: two words on the two axes
    mask = torch.tensor([[1, 1]])
    both = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])  # an image with patches for both words
    one = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0]])  # an image that only shows the first
    sim = late_interaction_similarity(words, mask, torch.stack([both, one]))
    assert sim.shape == (1, 2)
    assert float(sim[0, 0]) == 1.0 and float(sim[0, 1]) < 0.6


@pytest.mark.slow
def test_warm_start_lowers_its_loss(tiny_data, smoke_recipe):
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
    from fbcompress.training.patch_warmup import warm_start_patch_encoder
    from fbcompress.training.teacher import build_teacher, patch_spec_from_recipe

    tokenizer = load_tokenizer(packaged_minilm_dir())
    data = SplitData(DatasetDir.open(tiny_data), "train", tokenizer, patch_spec_from_recipe(smoke_recipe))
    torch.manual_seed(0)
    model = build_teacher(smoke_recipe, len(tokenizer))
    frozen = model.bert.embeddings.word_embeddings.weight.clone()
    curve = warm_start_patch_encoder(model, data, {101, 102, 0}, steps=60, batch_size=16, progress=False)
    assert sum(curve[-10:]) / 10 < sum(curve[:10]) / 10
    assert torch.equal(frozen, model.bert.embeddings.word_embeddings.weight), "word embeddings stay frozen"


def test_all_occurrence_masking_masks_every_repeat_of_a_word():
    tokens = [["[CLS]", "green", "shorts", ".", "shorts", "in", "green", ".", "[SEP]"]]
    groups = group_repeated_words(tokens[0], word_spans(tokens[0]))
    assert [1, 6] in groups and [2, 4] in groups
    ids = torch.arange(9)[None] + 1000
    for seed in range(10):
        _, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(seed),
                                    all_occurrences=True)
        picked = set((labels[0] != -100).nonzero().flatten().tolist())
        assert not ({1, 6} & picked) or {1, 6} <= picked
        assert not ({2, 4} & picked) or {2, 4} <= picked


def test_easy_negatives_come_from_other_subcategories(tiny_data):
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
    from fbcompress.recipes import load_recipe
    from fbcompress.training.pairs import MismatchSampler
    from fbcompress.training.teacher import patch_spec_from_recipe

    recipe = load_recipe("smoke")
    data = SplitData(DatasetDir.open(tiny_data), "train", load_tokenizer(packaged_minilm_dir()),
                     patch_spec_from_recipe(recipe))
    sub = [r["subcategory"] for r in data.records]
    rng = random.Random(0)
    hard = MismatchSampler(data, 1.0)
    assert all(sub[hard.draw(0, rng)] == sub[0] for _ in range(50))
    mixed = MismatchSampler(data, 0.0)
    draws = [mixed.draw(0, rng) for _ in range(200)]
    assert any(sub[d] != sub[0] for d in draws) and all(data.products[d] != data.products[0] for d in draws)


@pytest.mark.slow
def test_itc_task_joins_the_adaptive_weights(tiny_data, tmp_path):
    import json

    from click.testing import CliRunner

    from fbcompress.commands.cli import main

    out = tmp_path / "itc"
    result = CliRunner().invoke(main, ["train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out", str(out),
                                       "--set", "train.tasks=[mlm,mpm,ita,itc]", "--set", "train.patch_warmup_steps=5"])
    assert result.exit_code == 0, result.output
    last = json.loads((out / "train-log.jsonl").read_text().splitlines()[-1])
    assert set(last["weights"]) == {"mlm", "mpm", "ita", "itc"}
    assert abs(sum(last["weights"].values()) - 1) < 1e-5
    meta = json.loads((out / "fbcompress.json").read_text())
    assert len(meta["patch_warmup_loss"]) == 2


@pytest.mark.slow
def test_identity_pooler_replaces_minilms_untrained_pooler_and_passes_cls_through_tanh():
    from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
    from fbcompress.recipes import load_recipe
    from fbcompress.training.teacher import build_teacher

    vocab = len(load_tokenizer(packaged_minilm_dir()))
    shipped = build_teacher(load_recipe("smoke", {"teacher": {"backbone": "minilm"}}), vocab).bert.pooler.dense
    # what identity_pooler's docstring states of the packaged backbone: a pooler nobody trained
    assert float(shipped.bias.detach().abs().max()) == 0.0 and 0.005 < float(shipped.weight.detach().std()) < 0.015
    recipe = load_recipe("smoke", {"teacher": {"backbone": "minilm", "pooler_init": "identity"}})
    model = build_teacher(recipe, vocab)
    assert torch.equal(model.bert.pooler.dense.weight, torch.eye(384))
    hidden = torch.randn(2, 5, 384)
    assert torch.allclose(model.bert.pooler(hidden), torch.tanh(hidden[:, 0]))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       build_teacher(recipe, vocab).bert.encoder.layer[0].attention.self.query.weight)


def test_pooler_init_at_its_default_leaves_training_fingerprints_as_they_were_before_the_field():
    from fbcompress.recipes import load_recipe
    from fbcompress.training.loop import _recipe_fingerprint

    before_the_field = load_recipe("smoke").model_dump(mode="json")
    del before_the_field["teacher"]["pooler_init"]  # what checkpoints made before it stored
    del before_the_field["data"]["search_train_queries"]  # likewise (added with the search path)
    stored = {name: before_the_field[name] for name in ("data", "teacher", "train", "distill")}
    stored["train"] = {k: v for k, v in stored["train"].items() if k not in ("eval_every", "save_every")}
    assert _recipe_fingerprint(load_recipe("smoke")) == stored
    assert _recipe_fingerprint(load_recipe("smoke", {"teacher": {"pooler_init": "identity"}})) != stored
    assert _recipe_fingerprint(load_recipe("smoke", {"data": {"search_train_queries": 50}})) != stored
