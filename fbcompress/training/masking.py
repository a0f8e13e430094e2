"""Input corruption for pre-training: whole-word masking of text and zeroing of patches.

Whole-word masking picks *words* (a WordPiece plus its `##` continuations) until about `probability` of the
real text tokens are covered, then masks every piece of each picked word, so the model cannot guess a masked
piece from the rest of its own word. Replacement follows BERT: 80% [MASK], 10% random token, 10% unchanged.
"""

from __future__ import annotations

import torch


def group_repeated_words(token_strings: list[str], spans: list[list[int]]) -> list[list[int]]:
    """Merge the spans of a word that occurs several times into one unit (all occurrences masked together)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for span in spans:
        key = tuple(token_strings[p] for p in span)
        groups.setdefault(key, []).extend(span)
    return list(groups.values())


def word_spans(token_strings: list[str]) -> list[list[int]]:
    """Group positions into words: a `##` piece joins the previous word. Special tokens are never included."""
    spans: list[list[int]] = []
    for pos, tok in enumerate(token_strings):
        if tok in ("[CLS]", "[SEP]", "[PAD]") or tok is None:
            continue
        if tok.startswith("##") and spans and spans[-1][-1] == pos - 1:
            spans[-1].append(pos)
        else:
            spans.append([pos])
    return spans


def whole_word_mask(
    input_ids: torch.Tensor,
    token_strings: list[list[str]],
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    all_occurrences: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input_ids, labels) where labels are -100 except at masked positions.

    With `all_occurrences`, a picked word is masked wherever it occurs in the text. Catalogue texts repeat their
    attributes (title and description both say "green"), so masking one occurrence lets the model copy it from
    the other and never look at the image; masking all of them makes the image the only evidence.
    """
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    for row, tokens in enumerate(token_strings):
        spans = word_spans(tokens)
        n_tokens = sum(len(s) for s in spans)
        if all_occurrences:
            spans = group_repeated_words(tokens, spans)
        if not spans or probability <= 0:
            continue
        budget = max(1, round(n_tokens * probability))
        order = torch.randperm(len(spans), generator=generator).tolist()
        covered = 0
        for index in order:
            span = spans[index]
            if covered + len(span) > budget and covered > 0:
                continue
            for pos in span:
                labels[row, pos] = input_ids[row, pos]
                draw = torch.rand((), generator=generator).item()
                if draw < 0.8:
                    masked[row, pos] = mask_token_id
                elif draw < 0.9:
                    masked[row, pos] = int(torch.randint(vocab_size, (), generator=generator))
            covered += len(span)
            if covered >= budget:
                break
    return masked, labels


def mask_patches(
    patches: torch.Tensor, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero about `probability` of each row's patches (at least one). Returns (masked patches, bool mask [B, P])."""
    batch, n_patches = patches.shape[:2]
    chosen = torch.rand(batch, n_patches, generator=generator) < probability
    if probability > 0:
        empty = ~chosen.any(dim=1)
        if empty.any():
            forced = torch.randint(n_patches, (int(empty.sum()),), generator=generator)
            chosen[empty.nonzero(as_tuple=True)[0], forced] = True
    masked = patches.clone()
    masked[chosen.to(patches.device)] = 0.0
    return masked, chosen.to(patches.device)
