import torch

from fbcompress.masking import mask_patches, whole_word_mask, word_spans


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
