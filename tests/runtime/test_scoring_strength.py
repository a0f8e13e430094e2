"""The VSL scoring loop (`scoring.scores_in_length_order`) and `match_scores`, tested so that a one-line break
fails: which items share a batch, where each score lands, what the model is given for each raw pair, and the
feature-model branch. Each test names the breaks it was run against (mutmut, bench/mutation.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig

from fbcompress.core.errors import FbError
from fbcompress.data.patches import image_to_patches
from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
from fbcompress.modeling.model import FashionBERT, PatchSpec, build_config
from fbcompress.runtime.scoring import TorchScorer, match_probability, match_scores, open_scorer, scores_in_length_order


class RecordingScorer:
    """Wraps a real scorer and keeps every batch it was given (the loop under test decides the batches)."""

    def __init__(self, inner):
        self.inner = inner
        self.backend, self.spec, self.tokenizer_dir, self.name = inner.backend, inner.spec, inner.tokenizer_dir, "rec"
        self.batches: list[dict] = []

    def logits(self, inputs):
        self.batches.append(inputs)
        return self.inner.logits(inputs)


class IndexScorer:
    """Logits that encode which item each row is: row i of a batch built from item k scores as item k."""

    def logits(self, inputs):
        items = np.asarray(inputs["items"], dtype=np.float64)
        return np.stack([np.zeros_like(items), np.log(items + 1.0) - np.log(1000.0)], axis=1)


def test_ties_keep_item_order_and_every_score_lands_on_its_item():
    """40 items of two lengths, batches of 8: items are batched by length and, among equal lengths, in item
    order (the same batches in every run, so batched numerics reproduce); each score is its own item's.
    Breaks caught: the argsort not stable (numpy's default introsort reorders ties beyond 16 items), scores
    written in batch order instead of item order, a batch size off by one."""
    lengths = [3 if i % 2 else 5 for i in range(40)]
    seen: list[list[int]] = []

    def batch_of(chunk: np.ndarray) -> dict:
        seen.append([int(i) for i in chunk])
        return {"items": chunk}

    scores = scores_in_length_order(IndexScorer(), lengths, batch_of, batch_size=8)
    odd, even = list(range(1, 40, 2)), list(range(0, 40, 2))
    assert seen == [(odd + even)[k : k + 8] for k in range(0, 40, 8)]
    expected = match_probability(IndexScorer().logits({"items": np.arange(40)}))
    np.testing.assert_array_equal(scores, expected)
    assert scores.dtype == np.float64


def _pair_by_hand(scorer, tokenizer, text: str, patches: np.ndarray) -> float:
    """One pair scored without match_scores: the tokenizer's own ids, truncated to the model's text length."""
    ids = tokenizer(text, truncation=True, max_length=scorer.spec.max_text_len)["input_ids"]
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long),
              "patches": torch.from_numpy(patches[None].astype(np.float32))}
    return float(match_probability(scorer.logits(inputs))[0])


TEXTS = ["a red shirt", "a blue dress with long sleeves", "green", "black " * 80]


def test_match_scores_gives_the_model_each_pair_as_written(trained_smoke):
    """Each pair's score equals that pair scored by hand through the model. Breaks caught: texts replaced
    (`str(None)`), the image of another pair, truncation dropped for the long text."""
    scorer = open_scorer(trained_smoke)
    tokenizer = load_tokenizer(scorer.tokenizer_dir)
    rng = np.random.default_rng(1)
    size = scorer.spec.image_size
    images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in TEXTS]
    expected = [_pair_by_hand(scorer, tokenizer, t, image_to_patches(i, scorer.spec.grid))
                for t, i in zip(TEXTS, images, strict=True)]
    np.testing.assert_allclose(match_scores(scorer, TEXTS, images), expected, atol=1e-5)
    assert len(set(np.round(expected, 6))) > 1, "the smoke model must tell these pairs apart for this test to bite"


def test_match_scores_batches_of_64_by_default_and_is_silent(trained_smoke, capfd):
    """A notebook call prints nothing (no progress bar) and scores 130 pairs as 64 + 64 + 2. Breaks caught:
    the progress bar on by default, the default batch size changed."""
    scorer = RecordingScorer(open_scorer(trained_smoke))
    size = scorer.spec.image_size
    images = [np.full((size, size, 3), i % 256, dtype=np.uint8) for i in range(130)]
    capfd.readouterr()
    scores = match_scores(scorer, [f"item {i}" for i in range(130)], images)
    captured = capfd.readouterr()
    assert scores.shape == (130,)
    assert sorted(len(b["input_ids"]) for b in scorer.batches) == [2, 64, 64]
    assert captured.err == "" and captured.out == ""


FEATURE_SPEC = PatchSpec(patch_encoder="features", patch_dim=6, num_patches=4, image_size=0, grid=0,
                         max_text_len=12)


@pytest.fixture(scope="module")
def feature_scorer() -> TorchScorer:
    torch.manual_seed(0)
    tokenizer_dir = packaged_minilm_dir()
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    return TorchScorer(FashionBERT(build_config(config, FEATURE_SPEC)).eval(), tokenizer_dir, "features-model")


def test_a_feature_model_scores_feature_arrays_as_float32(feature_scorer):
    """Feature models take [num_patches, D] arrays, here float64 nested lists as a notebook may hold them: they
    are converted to float32 and scored as given. Breaks caught: the features branch not taken (the array read
    as an image), the array dropped or not converted, the shape check inverted."""
    tokenizer = load_tokenizer(feature_scorer.tokenizer_dir)
    rng = np.random.default_rng(2)
    features = [rng.normal(size=(4, 6)) for _ in TEXTS]
    expected = [_pair_by_hand(feature_scorer, tokenizer, t, f) for t, f in zip(TEXTS, features, strict=True)]
    scores = match_scores(feature_scorer, TEXTS, [f.tolist() for f in features])
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_a_feature_array_of_the_wrong_shape_is_one_line(feature_scorer):
    """Breaks caught: the message dropped or not naming both shapes."""
    with pytest.raises(FbError, match=r"patch features of shape \(4, 5\), the model expects \(4, 6\)"):
        match_scores(feature_scorer, ["a shirt"], [np.zeros((4, 5))])


def test_every_session_widens_int8_kernels_that_saturate_without_vnni():
    """ORT's u8s8 kernels on AVX2 / AVX-512 without VNNI saturate on full 8-bit weights (the symmetric QDQ graphs
    for TensorRT): every session fbcompress opens asks for the widened kernels (tests/quantize shows the effect)."""
    from fbcompress.runtime.onnxruntime import session_options

    assert session_options().get_session_config_entry("session.x64quantprecision") == "1"
