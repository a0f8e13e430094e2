"""Calibration data: batches of real training pairs, each padded only to its own longest text (VSL).

The ranges a static quantizer picks are the activations it saw. FashionBERT's attention sees `[CLS] text [SEP]`
followed by 64 image tokens, with the text padding in the *middle* of the sequence; short and long texts give
different softmax and residual statistics. So the batches cover the training split's text lengths from short to
long (one length stratum per batch), and mix matched with mismatched pairs, as scoring does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from fbcompress.data.loader import SplitData


def calibration_batches(data: SplitData, n_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n_batches` model-input dicts (numpy) of `batch_size` pairs, ordered from the shortest texts to the longest.

    Half of each batch is matched (image and text of one record), half mismatched (the text of another record).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray([len(ids) for ids in data.token_ids])
    order = np.argsort(lengths, kind="stable")
    strata = [s for s in np.array_split(order, min(n_batches, len(order))) if len(s)]
    batches = []
    for index in range(n_batches):
        stratum = strata[index % len(strata)]
        texts = rng.choice(stratum, size=batch_size, replace=len(stratum) < batch_size)
        images = texts.copy()
        mismatched = np.arange(batch_size) % 2 == 1
        others = rng.integers(0, len(data), size=batch_size)
        images[mismatched] = np.where(
            others[mismatched] == texts[mismatched], (others[mismatched] + 1) % len(data), others[mismatched]
        )
        batch = data.batch([int(i) for i in images], [int(t) for t in texts])
        batches.append({name: value.numpy() for name, value in batch.items()})
    return batches


def describe_batches(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """What the calibration ran on, for the report."""
    texts = [int(b["input_ids"].shape[1]) for b in batches]
    real = [int(b["attention_mask"].sum()) for b in batches]
    pairs = sum(int(b["input_ids"].shape[0]) for b in batches)
    return {
        "batches": len(batches),
        "pairs": pairs,
        "text_lengths": texts,
        "padding_share": 1.0 - sum(real) / max(1, sum(int(b["attention_mask"].size) for b in batches)),
    }


class BatchReader(CalibrationDataReader):
    """ONNX Runtime's calibration protocol over a fixed list of batches (rewindable: calibration may run twice)."""

    def __init__(self, batches: list[dict[str, Any]], input_names: list[str] | None = None):
        self.batches = batches
        self.input_names = input_names
        self._iter = iter(self.batches)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._iter, None)
        if batch is None or self.input_names is None:
            return batch
        return {name: batch[name] for name in self.input_names}

    def rewind(self) -> None:
        self._iter = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
