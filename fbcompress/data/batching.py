"""Variable-sequence-length batching shared by teacher training, distillation and evaluation order.

No batch is ever padded to a global maximum: texts of similar length are batched together and each batch is
padded only to its own longest text (see `loader.pad_texts`).
"""

from __future__ import annotations

import numpy as np

from fbcompress.core.errors import FbError
from fbcompress.data.loader import SplitData
from fbcompress.recipes import TrainSection


class LengthBucketedBatches:
    """VSL batches: per epoch, shuffle, cut into buckets of `bucket_batches` batches, sort each bucket by text
    length, cut it into batches and shuffle the batch order. Every example appears exactly once per epoch, and a
    batch's texts have similar lengths, so padding to the batch's own longest text wastes little.

    Batch g of a run is a pure function of (seed, g), so resume needs no sampler state; rank r of W processes
    takes global batch g·W + r, which splits every step's data across ranks like DistributedSampler does.
    """

    def __init__(self, lengths: list[int], batch_size: int, bucket_batches: int, seed: int):
        if not lengths:
            raise FbError("no examples to batch")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.bucket = batch_size * bucket_batches
        self.seed = seed
        self._cache: tuple[int, list[list[int]]] | None = None
        self.per_epoch = len(self.epoch_batches(0))

    @classmethod
    def for_split(cls, data: SplitData, train: TrainSection) -> LengthBucketedBatches:
        return cls([len(ids) for ids in data.token_ids], train.batch_size, train.bucket_batches, train.seed)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch, 17])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), self.bucket):
            bucket = order[start : start + self.bucket]
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            batches += [bucket[i : i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def rows(self, global_index: int) -> list[int]:
        epoch, index = divmod(global_index, self.per_epoch)
        return self.epoch_batches(epoch)[index]
