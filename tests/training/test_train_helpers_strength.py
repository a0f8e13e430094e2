"""The training loop's small rules (fbcompress/training/loop.py) that resume exactness and the optimiser depend on.

Each test names the one-line breaks of train.py it was seen to fail on (mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fbcompress.training.loop import _combine, _fused_adamw, _recipe_fingerprint, param_groups, seeded_streams


def test_seeded_streams_are_a_fixed_function_of_seed_and_index():
    """A resumed run (maybe by a newer fbcompress) must draw exactly the batches the first run would have: the
    streams are pinned to (seed · 1_000_003 + index) mod 2^63, for python, torch and the dropout seed. Breaks
    caught: any change of the mixing (constant, `+` -> `-`, the modulus), a stream not seeded with it."""
    rng, generator = seeded_streams(7, 3)
    mixed = 7 * 1_000_003 + 3
    reference = random.Random(mixed)
    assert [rng.random() for _ in range(3)] == [reference.random() for _ in range(3)]
    expected = torch.rand(4, generator=torch.Generator().manual_seed(mixed))
    assert torch.equal(torch.rand(4, generator=generator), expected)
    assert torch.initial_seed() == mixed  # dropout draws from the global stream
    big = 2**62 + 1  # seed * 1_000_003 overflows 2^63: the modulus matters
    rng, _ = seeded_streams(big, 0)
    assert rng.random() == random.Random((big * 1_000_003) % 2**63).random()
    assert seeded_streams(1, 0)[0].random() != seeded_streams(0, 1)[0].random()


class _Tiny(nn.Module):
    """Parameter names like FashionBERT's: a backbone under `bert.`, new parts beside it."""

    def __init__(self):
        super().__init__()
        self.bert = nn.Module()
        self.bert.dense = nn.Linear(2, 2)
        self.bert.LayerNorm = nn.LayerNorm(2)
        self.frozen = nn.Linear(2, 2)  # between trained parts: skipping it must not stop the walk
        self.frozen.requires_grad_(False)
        self.patch_proj = nn.Linear(2, 2)


def test_param_groups_split_backbone_from_new_parts_and_decay_from_norms():
    """Breaks caught: the backbone test (`startswith("bert.")`), the lr of either side, decay on biases and
    norms (or none on weights), frozen parameters optimised."""
    model = _Tiny()
    groups = param_groups(model, lr=1e-4, new_lr=1e-3, weight_decay=0.01)
    by_name = {id(p): n for n, p in model.named_parameters()}
    seen = {by_name[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert seen == {
        "bert.dense.weight": (1e-4, 0.01), "bert.dense.bias": (1e-4, 0.0),
        "bert.LayerNorm.weight": (1e-4, 0.0), "bert.LayerNorm.bias": (1e-4, 0.0),
        "patch_proj.weight": (1e-3, 0.01), "patch_proj.bias": (1e-3, 0.0),
    }


def test_the_recipe_fingerprint_is_the_training_sections_without_the_cadence():
    """What a checkpoint's weights depend on. Breaks caught: a training section left out, a release section
    (export, quantize, check) let in, eval_every / save_every kept (changing the cadence would refuse a resume)."""
    import json

    from fbcompress.recipes import load_recipe, merged_overrides

    base = _recipe_fingerprint(load_recipe("smoke"))
    assert set(base) == {"data", "teacher", "train", "distill"}
    assert base == json.loads(json.dumps(base))  # as the checkpoint stores it: lists, not tuples
    assert "eval_every" not in base["train"] and "save_every" not in base["train"] and "lr" in base["train"]
    for setting in ("train.eval_every=3", "train.save_every=3", "check.max_auc_drop=0.5", "export.opset=18"):
        assert _recipe_fingerprint(load_recipe("smoke", merged_overrides([setting]))) == base, setting
    for setting in ("train.lr=0.5", "data.max_text_len=20", "distill.hidden_size=64"):
        assert _recipe_fingerprint(load_recipe("smoke", merged_overrides([setting]))) != base, setting


def test_fused_adamw_only_where_it_exists():
    """Breaks caught: the device list (`("cpu", "cuda")`), the float check (`all` -> `any`, dropped)."""
    floats = [nn.Parameter(torch.zeros(2))]
    assert _fused_adamw(torch.device("cpu"), floats) and _fused_adamw(torch.device("cuda"), floats)
    assert not _fused_adamw(torch.device("mps"), floats) and not _fused_adamw(torch.device("meta"), floats)
    complex_param = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    assert not _fused_adamw(torch.device("cpu"), [*floats, complex_param])


def test_sum_weighting_uses_the_fixed_weights_with_a_default_of_one():
    """Breaks caught: `weighting == "sum"` changed, the default weight 1.0, the weights not reported."""
    losses = {"mlm": torch.tensor(2.0), "ita": torch.tensor(3.0)}
    setup = SimpleNamespace(weighting="sum", fixed_weights={"ita": 0.5})
    total, weights = _combine(losses, setup)
    assert float(total) == pytest.approx(2.0 + 1.5) and weights == {"mlm": 1.0, "ita": 0.5}
    fixed = SimpleNamespace(weighting="fixed", fixed_weights={"mlm": 1.0, "ita": 1.0})
    total, weights = _combine(losses, fixed)
    assert set(weights) == {"mlm", "ita"} and float(total) > 0
