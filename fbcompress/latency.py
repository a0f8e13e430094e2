"""Latency measurement as design.md defines it: p50/p90/p99 over ≥ 100 timed runs after warm-up.

The timer and the device synchronisation are injected, so the statistics can be tested on a fake clock and the
same code times PyTorch eager, ONNX Runtime and TensorRT (GPU runs pass `torch.cuda.synchronize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fbcompress.model import PatchSpec


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(durations_s: list[float]) -> LatencyStats:
    ms = np.asarray(durations_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()))


def time_callable(
    fn: Callable[[], object],
    runs: int = 100,
    warmup: int = 10,
    timer: Callable[[], float] = time.perf_counter,
    synchronize: Callable[[], None] | None = None,
) -> LatencyStats:
    if runs < 1:
        raise ValueError("runs must be at least 1")
    for _ in range(warmup):
        fn()
    if synchronize:
        synchronize()
    durations = []
    for _ in range(runs):
        start = timer()
        fn()
        if synchronize:
            synchronize()
        durations.append(timer() - start)
    return summarise(durations)


def example_inputs(spec: PatchSpec, batch: int, text_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of the design.md contract at a given shape: real tokens only (no padding), random patches."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (batch, text_len), generator=gen)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "patches": torch.randn(batch, spec.num_patches, spec.patch_dim, generator=gen),
    }


def padded_inputs(inputs: dict[str, torch.Tensor], to_length: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The same texts padded to a fixed length (what a model without VSL would run)."""
    text_len = inputs["input_ids"].shape[1]
    extra = to_length - text_len
    if extra <= 0:
        return inputs
    pad = lambda t, value: torch.nn.functional.pad(t, (0, extra), value=value)  # noqa: E731
    return {
        "input_ids": pad(inputs["input_ids"], pad_id),
        "attention_mask": pad(inputs["attention_mask"], 0),
        "token_type_ids": pad(inputs["token_type_ids"], 0),
        "patches": inputs["patches"],
    }
