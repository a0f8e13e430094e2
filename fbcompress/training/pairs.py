"""The mismatched pairs both objectives train on: which rows get another product's text, and which text.

The teacher's ITA loss and the student's hard-label loss see the same kind of negatives, drawn here, so the
student is distilled on the distribution the teacher was trained on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from fbcompress.core.errors import FbError
from fbcompress.data.loader import SplitData


class MismatchSampler:
    """Draws the text of a mismatched pair: another product of the same subcategory (the paper's rule) with
    probability `hard_share`, else any other product. Easy negatives early on give the alignment head a coarse
    signal (garment type) to start from on a short CPU budget; hard ones teach colours, patterns and details."""

    def __init__(self, data: SplitData, hard_share: float = 1.0):
        self.data = data
        self.hard_share = hard_share
        self.by_sub: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(data.records):
            self.by_sub[str(record["subcategory"])].append(i)
        if len(set(data.products)) < 2:
            raise FbError("the training split needs at least two products to draw mismatched pairs")

    def draw(self, row: int, rng: random.Random, candidates: int = 8) -> int:
        """Another product's text; among a few draws, the one closest in length to the row's own text.

        Batches are bucketed by text length (VSL), so a mismatched text of another length would stand out in
        its batch and leak the label; matching lengths removes that shortcut.
        """
        product = self.data.products[row]
        pool: Sequence[int] = self.by_sub[str(self.data.records[row]["subcategory"])]
        if self.hard_share < 1.0 and rng.random() >= self.hard_share:
            pool = range(len(self.data))
        drawn = [rng.choice(pool) for _ in range(candidates)]
        drawn = [other for other in drawn if self.data.products[other] != product]
        while not drawn:
            other = rng.randrange(len(self.data))
            if self.data.products[other] != product:
                drawn = [other]
        own = len(self.data.token_ids[row])
        return min(drawn, key=lambda other: abs(len(self.data.token_ids[other]) - own))


def pair_rows(
    sampler: MismatchSampler, rows: Sequence[int], mismatch_ratio: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Each image row's text row and label: with probability `mismatch_ratio` another product's text (label 0),
    else its own (label 1). One draw of `rng` per row, then the sampler's, in row order (runs reproduce)."""
    text_rows, labels = [], []
    for row in rows:
        if rng.random() < mismatch_ratio:
            text_rows.append(sampler.draw(row, rng))
            labels.append(0)
        else:
            text_rows.append(row)
            labels.append(1)
    return text_rows, labels
