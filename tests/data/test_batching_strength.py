"""The VSL sampler (data/batching.py), its padding (data/loader.py) and how the trainers consume it.

Each test names, in its docstring, the one-line break of the product code it is there to catch; each was run
against a scratch copy with that break applied and failed there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fbcompress.data.batching import LengthBucketedBatches

# 203 examples, batch 8, buckets of 4 batches: 6 full buckets + one of 11 rows (one full batch and a partial of 3)
LENGTHS = [5 + (i * 37) % 40 for i in range(203)]


def _flat(batches: list[list[int]]) -> list[int]:
    return [row for batch in batches for row in batch]


@pytest.fixture(scope="module")
def smoke():
    from fbcompress.recipes import load_recipe

    return load_recipe("smoke")


@pytest.fixture(scope="module")
def varied_train(varied_data, smoke):
    """The train split of `varied_data`, tokenized as the smoke teacher does."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer, tokenizer_dir_for
    from fbcompress.training.teacher import patch_spec_from_recipe

    tokenizer = load_tokenizer(tokenizer_dir_for(smoke.teacher.backbone))
    data = SplitData(DatasetDir.open(varied_data), "train", tokenizer, patch_spec_from_recipe(smoke))
    lengths = [len(ids) for ids in data.token_ids]
    assert min(lengths) <= 5 and max(lengths) >= 30, f"the fixture's texts must really differ in length: {lengths}"
    return data


def test_each_epoch_has_its_own_order():
    """Catches dropping the epoch from the seed (`default_rng([self.seed, epoch, 17])` → `[self.seed, 17]`) and
    `rows()` always reading epoch 0 (`epoch, index = divmod(...)` → `epoch, index = 0, global_index % per_epoch`):
    then every epoch replays the same batches in the same order."""
    sampler = LengthBucketedBatches(LENGTHS, batch_size=8, bucket_batches=4, seed=3)
    epochs = [sampler.epoch_batches(e) for e in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert epochs[a] != epochs[b], f"epochs {a} and {b} have the same batch order"
            groups_a = {frozenset(batch) for batch in epochs[a]}
            groups_b = {frozenset(batch) for batch in epochs[b]}
            assert groups_a != groups_b, f"epochs {a} and {b} group the same rows together"
    # what the trainers read, rows(global index), walks the same per-epoch orders
    n = sampler.per_epoch
    via_rows = [[sampler.rows(e * n + i) for i in range(n)] for e in range(3)]
    assert via_rows == [LengthBucketedBatches(LENGTHS, 8, 4, seed=3).epoch_batches(e) for e in range(3)]
    # and another seed gives another run
    assert LengthBucketedBatches(LENGTHS, 8, 4, seed=4).epoch_batches(0) != epochs[0]


def test_random_access_in_any_order_matches_a_fresh_sampler():
    """Catches the epoch cache keyed wrongly (`self._cache = (epoch, batches)` → `(0, batches)`, or the check
    `self._cache[0] == epoch` dropped): a resumed run that jumps between epochs would get another epoch's batches.
    """
    sampler = LengthBucketedBatches(LENGTHS, batch_size=8, bucket_batches=4, seed=3)
    n = sampler.per_epoch
    fresh = [LengthBucketedBatches(LENGTHS, 8, 4, seed=3).epoch_batches(e) for e in range(3)]
    assert fresh[0] != fresh[1] and fresh[1] != fresh[2] and fresh[0] != fresh[2], "an epoch served from the cache"
    for g in [n + 1, 0, 2 * n + 5, 3, n + 2, 2 * n, 1, n - 1, 2 * n - 1]:
        epoch, index = divmod(g, n)
        assert sampler.rows(g) == fresh[epoch][index], f"global batch {g} (epoch {epoch})"


def test_batch_order_is_shuffled_not_sorted_by_length():
    """Catches dropping the final shuffle of the batch order (`batches = [batches[i] for i in rng.permutation(...)]`
    deleted): the batches then come shortest first, in bucket order, so every epoch's steps run short → long.
    One bucket (bucket_batches ≥ batches per epoch) makes the unshuffled order exactly sorted."""
    for seed in range(3):
        sampler = LengthBucketedBatches(LENGTHS, batch_size=8, bucket_batches=64, seed=seed)
        for epoch in range(3):
            batches = sampler.epoch_batches(epoch)
            shortest = [min(LENGTHS[i] for i in batch) for batch in batches]
            assert len(batches) == 26
            assert shortest != sorted(shortest), f"seed {seed} epoch {epoch}: batches run in length order"
            assert shortest != sorted(shortest, reverse=True), f"seed {seed} epoch {epoch}: batches run long → short"
            # the partial batch (3 rows) is not pinned to the end of the epoch in every epoch
        ends = {len(sampler.epoch_batches(epoch)[-1]) for epoch in range(6)}
        assert ends != {3}, f"seed {seed}: the partial batch is always last"
    # and within a batch the rows still share a length range (sorted before cutting)
    one = LengthBucketedBatches(LENGTHS, batch_size=8, bucket_batches=64, seed=0).epoch_batches(0)
    assert max(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in one) <= 3


@pytest.mark.parametrize("batch_size, bucket_batches", [(8, 4), (8, 64), (5, 3), (1, 1), (300, 1)])
def test_every_row_exactly_once_per_epoch_partial_batch_kept(batch_size, bucket_batches):
    """Catches skipping the last partial batch (`range(0, len(bucket), self.batch_size)` →
    `range(0, len(bucket) - self.batch_size + 1, self.batch_size)`), a bucket slice that drops or repeats rows
    (`order[start : start + self.bucket - 1]`, `range(0, len(order), self.bucket - 1)`), buckets that are not a
    whole number of batches (`self.bucket = batch_size * bucket_batches + 1` makes a partial batch per bucket) and
    `rows()` walking epochs with the wrong period (`divmod(global_index, self.per_epoch - 1)`).
    By design the partial batch is kept: exactly one batch per epoch is short, of N mod batch_size rows."""
    n = len(LENGTHS)
    sampler = LengthBucketedBatches(LENGTHS, batch_size, bucket_batches, seed=11)
    full, rest = divmod(n, batch_size)
    assert sampler.per_epoch == full + (rest > 0), "batches per epoch: the full ones and one partial"
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert sorted(_flat(batches)) == list(range(n)), f"epoch {epoch}: not every row exactly once"
        sizes = sorted(len(b) for b in batches)
        assert sizes == sorted([batch_size] * full + ([rest] if rest else [])), f"epoch {epoch}: sizes {sizes}"
    per = sampler.per_epoch
    for epoch in range(3):
        seen = _flat([sampler.rows(epoch * per + i) for i in range(per)])
        assert sorted(seen) == list(range(n)), f"rows() over epoch {epoch} loses or repeats rows"


def test_real_split_every_row_once_with_the_partial_batch(varied_train, smoke):
    """The smoke recipe on a real split (84 rows, batch 8: ten full batches and one of 4), as the trainers build it
    (`LengthBucketedBatches.for_split`). Catches the same losses as above on the shipped configuration, and
    `for_split` passing the wrong sizes (`train.batch_size` → `train.batch_size * 2`, `train.seed` → `0`)."""
    sampler = LengthBucketedBatches.for_split(varied_train, smoke.train)
    n = len(varied_train)
    assert n % smoke.train.batch_size, "the fixture must leave a partial batch"
    assert sampler.per_epoch == -(-n // smoke.train.batch_size)
    for epoch in range(2):
        batches = sampler.epoch_batches(epoch)
        assert sorted(_flat(batches)) == list(range(n))
        assert sorted(len(b) for b in batches)[0] == n % smoke.train.batch_size
        assert max(len(b) for b in batches) == smoke.train.batch_size
    other_seed = smoke.train.model_copy(update={"seed": smoke.train.seed + 1})
    assert LengthBucketedBatches.for_split(varied_train, other_seed).epoch_batches(0) != sampler.epoch_batches(0)


def test_vsl_pads_far_less_than_fixed_length_or_unsorted_batches(varied_train, smoke):
    """On texts of 4 to 32 tokens, one epoch of length-bucketed batches, each padded to its own longest text,
    wastes little. Catches dropping the sort inside a bucket (`bucket = bucket[np.argsort(...)]` deleted: batches
    become random mixes of lengths), `for_split` measuring the wrong lengths (`len(ids)` → a constant), and
    `pad_texts` padding past the batch's longest text (`longest = max(...)` → `max(...) + 1`).
    """
    sampler = LengthBucketedBatches.for_split(varied_train, smoke.train)
    lengths = [len(ids) for ids in varied_train.token_ids]
    assert sampler.lengths.tolist() == lengths
    real = padded = 0
    for rows in sampler.epoch_batches(0):
        mask = varied_train.batch(rows, rows)["attention_mask"]
        assert mask.shape == (len(rows), max(lengths[i] for i in rows)), "padded past the batch's longest text"
        assert mask.sum(1).tolist() == [lengths[i] for i in rows]
        real += int(mask.sum())
        padded += mask.numel()
    vsl_share = 1 - real / padded
    fixed_share = 1 - real / (len(lengths) * smoke.data.max_text_len)
    # the same batch sizes, rows drawn in random order (what the sampler would do without its sort)
    order = np.random.default_rng(0).permutation(len(lengths))
    cuts = [order[i : i + smoke.train.batch_size] for i in range(0, len(order), smoke.train.batch_size)]
    unsorted = sum(len(c) * max(lengths[i] for i in c) for c in cuts)
    unsorted_share = 1 - real / unsorted
    assert fixed_share > 0.35 and unsorted_share > 0.25, (fixed_share, unsorted_share)  # the data really varies
    assert vsl_share < 0.1, f"VSL wastes {vsl_share:.1%} of its tokens on padding"
    assert vsl_share < fixed_share / 4 and vsl_share < unsorted_share / 3, (vsl_share, fixed_share, unsorted_share)


def test_teacher_objective_trains_on_sampler_batch_g(varied_train, smoke, monkeypatch):
    """TeacherObjective.forward(g) builds its pairs from the sampler's batch g, whose images are exactly those rows.
    Catches `rows = self.order.rows(global_index)` → `self.order.rows(0)` (or any other index), and
    make_pair_batch pairing images with other rows (`data.batch(rows, text_rows)` → `data.batch(text_rows, ...)`)."""
    import fbcompress.training.teacher as teacher_module
    from fbcompress.modeling.backbone import load_tokenizer, tokenizer_dir_for

    tokenizer = load_tokenizer(tokenizer_dir_for(smoke.teacher.backbone))
    torch.manual_seed(0)
    model = teacher_module.build_teacher(smoke, len(tokenizer))
    objective = teacher_module.TeacherObjective(model, varied_train, tokenizer, smoke)
    seen: list[list[int]] = []
    real_make = teacher_module.make_pair_batch

    def spy(data, sampler, rows, ratio, rng):
        batch = real_make(data, sampler, rows, ratio, rng)
        images = torch.from_numpy(np.stack([data.patches(i) for i in rows]))
        assert torch.equal(batch.inputs["patches"], images), "the batch's images are not its rows' images"
        assert batch.image_rows == list(rows)
        seen.append(list(rows))
        return batch

    monkeypatch.setattr(teacher_module, "make_pair_batch", spy)
    reference = LengthBucketedBatches.for_split(varied_train, smoke.train)
    indices = [0, 1, 5, reference.per_epoch + 2]
    with torch.no_grad():
        for g in indices:
            objective(g)
    assert seen == [reference.rows(g) for g in indices]


def test_distill_objective_trains_on_sampler_batch_g_and_counts_padding(varied_train, smoke, monkeypatch):
    """DistillObjective.forward(g) scores the sampler's batch g, and its padding log (`pad_share` against
    `pad_share_fixed_length`) is exactly the share of padded positions. Catches `self.batches.rows(global_index)` →
    another index, and a one-line slip in `_count_padding` (`self.padding["fixed"] += mask.shape[0] *
    max_text_len` → `mask.numel()`, `real = int(mask.sum())` → `mask.numel()`)."""
    from fbcompress.modeling.backbone import load_tokenizer, tokenizer_dir_for
    from fbcompress.training.distill import DistillObjective
    from fbcompress.training.teacher import build_teacher

    tokenizer = load_tokenizer(tokenizer_dir_for(smoke.teacher.backbone))
    torch.manual_seed(0)
    student = build_teacher(smoke, len(tokenizer))
    objective = DistillObjective(student, None, None, [], varied_train, smoke)  # no teacher: the hard loss only
    seen: list[tuple[list[int], list[int]]] = []
    real_batch = varied_train.batch

    def spy(image_rows, text_rows):
        seen.append((list(image_rows), list(text_rows)))
        return real_batch(image_rows, text_rows)

    monkeypatch.setattr(varied_train, "batch", spy)
    reference = LengthBucketedBatches.for_split(varied_train, smoke.train)
    per = reference.per_epoch
    with torch.no_grad():
        for g in range(per, 2 * per):  # the whole second epoch
            objective(g)
    assert [images for images, _ in seen] == [reference.rows(g) for g in range(per, 2 * per)]
    lengths = [len(ids) for ids in varied_train.token_ids]
    # what is padded is the text side; a mismatched pair carries another row's text
    real = sum(lengths[i] for _, texts in seen for i in texts)
    padded = sum(len(texts) * max(lengths[i] for i in texts) for _, texts in seen)
    log = objective.padding_log()
    assert log["pad_share"] == pytest.approx(1 - real / padded, abs=1e-4)
    assert log["pad_share_fixed_length"] == pytest.approx(1 - real / (len(lengths) * smoke.data.max_text_len),
                                                          abs=1e-4)
    assert log["pad_share"] < log["pad_share_fixed_length"] / 2


def test_an_empty_split_is_one_clear_error():
    """Break (mutation testing): the message replaced or emptied; a user sees `error: no examples to batch`."""
    from fbcompress.core.errors import FbError

    with pytest.raises(FbError, match="^no examples to batch$"):
        LengthBucketedBatches([], batch_size=8, bucket_batches=4, seed=0)
