import torch

from fbcompress.training.masking import mask_patches, whole_word_mask, word_spans


def test_word_spans_join_wordpieces_and_skip_specials():
    tokens = ["[CLS]", "str", "##ipe", "##d", "red", "shirt", "[SEP]", "[PAD]"]
    assert word_spans(tokens) == [[1, 2, 3], [4], [5]]


def test_whole_word_masking_masks_every_piece_of_a_picked_word():
    tokens = [["[CLS]"] + ["str", "##ipe", "##d", "red", "sh", "##irt", "with", "pockets"] * 3 + ["[SEP]"]]
    ids = torch.arange(len(tokens[0]))[None] + 1000
    for seed in range(20):
        masked, labels = whole_word_mask(ids, tokens, 0.15, mask_token_id=103, vocab_size=30522,
                                         generator=torch.Generator().manual_seed(seed))
        picked = set((labels[0] != -100).nonzero().flatten().tolist())
        assert picked, "at least one word is masked"
        for span in word_spans(tokens[0]):
            assert set(span) <= picked or not (set(span) & picked), f"partial word masked: {span}"
        assert 0 not in picked and len(tokens[0]) - 1 not in picked  # [CLS]/[SEP] never masked
        assert len(picked) <= round(24 * 0.15) + 3  # ~15% (a whole word may overshoot by its length)
        assert torch.equal(labels[0][list(picked)], ids[0][list(picked)])
        unpicked = [i for i in range(ids.shape[1]) if i not in picked]
        assert torch.equal(masked[0][unpicked], ids[0][unpicked])


def test_mask_token_used_about_eighty_percent():
    tokens = [["[CLS]"] + [f"w{i}" for i in range(200)] + ["[SEP]"]]
    ids = torch.arange(202)[None] + 1000
    masked, labels = whole_word_mask(ids, tokens, 0.5, 103, 30522, torch.Generator().manual_seed(0))
    where = labels != -100
    share = float((masked[where] == 103).float().mean())
    assert 0.65 < share < 0.95


def test_patch_masking_zeroes_about_ten_percent_and_at_least_one():
    patches = torch.ones(64, 64, 12)
    masked, chosen = mask_patches(patches, 0.1, torch.Generator().manual_seed(0))
    assert chosen.sum(dim=1).min() >= 1
    assert 0.05 < float(chosen.float().mean()) < 0.15
    assert torch.all(masked[chosen] == 0) and torch.all(masked[~chosen] == 1)
    assert torch.all(patches == 1), "input left untouched"


# --- exact behaviour: budgets, boundaries, determinism ------------------------------------------------------


def _ids_for(tokens: list[list[str]]) -> torch.Tensor:
    return torch.arange(len(tokens[0]) * len(tokens)).reshape(len(tokens), -1) + 1000


def _masked_positions(labels: torch.Tensor, row: int = 0) -> set[int]:
    return set((labels[row] != -100).nonzero().flatten().tolist())


def test_whole_word_mask_probability_zero_masks_nothing():
    tokens = [["[CLS]"] + [f"w{i}" for i in range(30)] + ["[SEP]"]] * 2
    ids = _ids_for(tokens)
    masked, labels = whole_word_mask(ids, tokens, 0.0, 103, 30522, torch.Generator().manual_seed(0))
    assert torch.all(labels == -100)
    assert torch.equal(masked, ids)


def test_whole_word_mask_row_without_words_does_not_stop_later_rows():
    tokens = [["[CLS]", "[SEP]", "[PAD]", "[PAD]", "[PAD]"], ["[CLS]", "red", "sh", "##irt", "[SEP]"]]
    ids = _ids_for(tokens)
    for seed in range(5):
        masked, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(seed))
        assert _masked_positions(labels, 0) == set()
        assert _masked_positions(labels, 1) in ({1}, {2, 3})  # budget round(3 * 0.15) -> at least 1: one word


def test_whole_word_mask_budget_rounds_to_at_least_one_token():
    tokens = [["[CLS]", "red", "cotton", "shirt", "[SEP]"]]  # round(3 * 0.15) == 0 -> budget 1
    ids = _ids_for(tokens)
    for seed in range(10):
        _, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(seed))
        assert len(_masked_positions(labels)) == 1


def test_whole_word_mask_masks_a_whole_word_even_when_it_exceeds_the_budget():
    tokens = [["[CLS]", "str", "##ipe", "##d", "[SEP]"]]  # budget 1, but the only word has 3 pieces
    ids = _ids_for(tokens)
    for seed in range(5):
        _, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(seed))
        assert _masked_positions(labels) == {1, 2, 3}


def _words(lengths: list[int]) -> list[str]:
    out = []
    for i, n in enumerate(lengths):
        out += [f"w{i}"] + [f"##p{i}_{k}" for k in range(n - 1)]
    return out


def test_whole_word_mask_covers_exactly_the_budget_when_single_piece_words_allow_it():
    # 10 one-piece + 3 three-piece + 3 two-piece words = 25 tokens; round(25 * 0.2) == 5 >= the longest word,
    # so words that would overshoot are skipped and one-piece words fill the budget exactly.
    lengths = [1, 3, 1, 2, 1, 1, 3, 1, 2, 1, 1, 3, 1, 2, 1, 1]
    tokens = [["[CLS]"] + _words(lengths) + ["[SEP]"]]
    ids = _ids_for(tokens)
    spans = word_spans(tokens[0])
    for seed in range(40):
        _, labels = whole_word_mask(ids, tokens, 0.2, 103, 30522, torch.Generator().manual_seed(seed))
        picked = _masked_positions(labels)
        assert len(picked) == 5, seed
        assert all(set(s) <= picked or not set(s) & picked for s in spans)


def test_whole_word_mask_never_overshoots_after_the_first_word():
    # round(12 / 6) == 2: either two one-piece words, or a single three-piece word that alone exceeds the budget.
    lengths = [1, 3, 1, 1, 3, 1, 1, 1]
    tokens = [["[CLS]"] + _words(lengths) + ["[SEP]"]]
    ids = _ids_for(tokens)
    spans = word_spans(tokens[0])
    seen = set()
    for seed in range(40):
        _, labels = whole_word_mask(ids, tokens, 1 / 6, 103, 30522, torch.Generator().manual_seed(seed))
        picked = _masked_positions(labels)
        words = [s for s in spans if set(s) <= picked]
        assert sum(len(s) for s in words) == len(picked), "no partial words"
        assert len(picked) == 2 or (len(words) == 1 and len(picked) == 3), (seed, picked)
        seen.add(len(picked))
    assert seen == {2, 3}


def test_whole_word_mask_all_occurrences_masks_repeats_together():
    tokens = [["[CLS]", "green", "green", "[SEP]"]]
    ids = _ids_for(tokens)
    _, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(0),
                                all_occurrences=True)
    assert _masked_positions(labels) == {1, 2}
    _, labels = whole_word_mask(ids, tokens, 0.15, 103, 30522, torch.Generator().manual_seed(0))
    assert len(_masked_positions(labels)) == 1

    tokens = [["[CLS]", "green", "sh", "##irt", "with", "green", "collar", "sh", "##irt", "[SEP]"]]
    ids = _ids_for(tokens)
    for seed in range(10):
        _, labels = whole_word_mask(ids, tokens, 0.3, 103, 30522, torch.Generator().manual_seed(seed),
                                    all_occurrences=True)
        picked = _masked_positions(labels)
        assert picked
        for group in ({1, 5}, {2, 3, 7, 8}, {4}, {6}):
            assert group <= picked or not group & picked, (seed, picked)


def test_whole_word_mask_replacement_split_includes_random_and_unchanged():
    tokens = [["[CLS]"] + [f"w{i}" for i in range(400)] + ["[SEP]"]]
    ids = _ids_for(tokens)
    masked, labels = whole_word_mask(ids, tokens, 0.5, 103, 30522, torch.Generator().manual_seed(0))
    where = labels != -100
    assert int(where.sum()) == 200
    kept = float((masked[where] == ids[where]).float().mean())
    replaced = float(((masked[where] != ids[where]) & (masked[where] != 103)).float().mean())
    assert 0.04 < kept < 0.2
    assert 0.04 < replaced < 0.2


def test_whole_word_mask_depends_only_on_the_generator():
    tokens = [["[CLS]"] + _words([1, 2, 1, 3, 1, 1, 2] * 6) + ["[SEP]"]] * 3
    ids = _ids_for(tokens)
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        results.append(whole_word_mask(ids, tokens, 0.5, 103, 30522, torch.Generator().manual_seed(7)))
        assert torch.equal(torch.get_rng_state(), state), "global RNG must not be consumed"
    (m1, l1), (m2, l2) = results
    assert torch.equal(m1, m2) and torch.equal(l1, l2)
    where = l1 != -100
    assert bool(((m1[where] != ids[where]) & (m1[where] != 103)).any()), "random replacements exercised"


def test_mask_patches_probability_zero_masks_nothing():
    patches = torch.ones(8, 16, 3)
    masked, chosen = mask_patches(patches, 0.0, torch.Generator().manual_seed(0))
    assert not chosen.any()
    assert torch.equal(masked, patches)


def test_mask_patches_chooses_draws_below_probability_and_forces_one_in_empty_rows():
    batch, n_patches, seed = 16, 8, 3
    replay = torch.Generator().manual_seed(seed)
    draws = torch.rand(batch, n_patches, generator=replay)
    # probability equal to a draw: that draw is not below it, so its patch is not chosen
    probability = float(draws[0].sort().values[1])
    below = draws < probability
    empty = ~below.any(dim=1)
    assert int(empty.sum()) >= 2 and int((~empty).sum()) >= 2, "test needs both kinds of rows"
    forced = torch.randint(n_patches, (int(empty.sum()),), generator=replay)

    patches = torch.arange(batch * n_patches * 2, dtype=torch.float32).reshape(batch, n_patches, 2) + 1
    masked, chosen = mask_patches(patches, probability, torch.Generator().manual_seed(seed))
    assert chosen.dtype == torch.bool and chosen.shape == (batch, n_patches)
    assert int(chosen[0].sum()) == 1 and bool(chosen[0, draws[0].argmin()])
    assert torch.equal(chosen[~empty], below[~empty])
    assert torch.equal(chosen[empty].sum(dim=1), torch.ones(int(empty.sum()), dtype=torch.long))
    assert torch.equal(chosen[empty].float().argmax(dim=1), forced)
    assert torch.all(masked[chosen] == 0) and torch.equal(masked[~chosen], patches[~chosen])


def test_mask_patches_depends_only_on_the_generator():
    patches = torch.ones(32, 8, 2)
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        results.append(mask_patches(patches, 0.05, torch.Generator().manual_seed(11)))
        assert torch.equal(torch.get_rng_state(), state), "global RNG must not be consumed"
    (m1, c1), (m2, c2) = results
    assert torch.equal(c1, c2) and torch.equal(m1, m2)
    assert torch.all(c1.sum(dim=1) >= 1)


def test_mask_patches_returns_results_on_the_patches_device():
    patches = torch.ones(4, 8, 3, device="meta")
    masked, chosen = mask_patches(patches, 0.25, torch.Generator().manual_seed(0))
    assert masked.device == patches.device and chosen.device == patches.device
    assert chosen.shape == (4, 8) and chosen.dtype == torch.bool
