"""Which INT8 graph ships as the CPU file `model.int8.onnx`: static QDQ or dynamic INT8, decided by measuring both.

Why measured and not assumed: which one is faster depends on the model's width and on the CPU. On a probe model
(2 layers, H384, AVX2 without VNNI) static U8S8 QDQ and dynamic INT8 ran alike (2.0 vs 1.9 ms, FP32 4.0). On the
quickstart student (2 layers, H128) on the same kind of CPU, the static file ran at 0.94-0.97x the speed of FP32
at batch 1, while dynamic INT8 ran at 1.09-1.12x: with 128-wide matrices, the per-tensor QuantizeLinear /
DequantizeLinear pairs around every MatMul cost about what the INT8 GEMMs save, and dynamic INT8 fuses the
activation quantization into its MatMulInteger path. On VNNI or AMX servers, native S8S8 GEMMs tilt it back
towards static. So `quantize.cpu_file: auto` builds both from the same FP32 graph (with the same nodes kept FP),
scores both on val against the recipe's tolerance, times both here in alternating blocks (a shared machine's slow
spell hits both alike), and ships the faster one of those within tolerance; the report keeps both candidates'
numbers. `static` or `dynamic` pins the choice (e.g. to build on one machine for another).

Order of work under auto (`pipeline._dynamic_first`): both graphs are first built with only the nodes kept FP by
design and raced; when dynamic is ahead and within tolerance on val, it ships at once, the static CPU graph is not
scored, and the accuracy fall-back serves the TensorRT file alone. Otherwise the static files go through the
fall-back together and `choose` below decides between the static graph and a dynamic one with the same FP nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATIC = "static-qdq"
DYNAMIC = "dynamic"
MODES = ("auto", "static", "dynamic")


@dataclass
class Candidate:
    """One graph that could ship as the CPU file, with what was measured of it."""

    name: str  # STATIC | DYNAMIC
    path: Path
    settings: dict[str, Any]
    val: dict[str, Any] | None = None  # {"passed", "auc", "fp32_auc", "breaks"} from the val check
    latency: list[dict[str, Any]] = field(default_factory=list)  # one case per text length (batch 1)

    @property
    def passed(self) -> bool:
        return self.val is None or bool(self.val.get("passed"))

    @property
    def mean_p50_ms(self) -> float:
        return sum(c["p50_ms"] for c in self.latency) / len(self.latency) if self.latency else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.settings.get("format"),
            "activations": self.settings.get("activations"),
            "val": self.val,
            "latency": self.latency,
            "mean_p50_ms": None if not self.latency else self.mean_p50_ms,
        }


def pick(candidates: list[Candidate]) -> tuple[Candidate, str, str]:
    """The fastest candidate within tolerance on val (the first one if none is: the guard will then refuse it).
    Returns it, the reason in words, and the basis of the choice: pinned | tolerance | latency | untimed."""
    if len(candidates) == 1:
        return candidates[0], "pinned by quantize.cpu_file", "pinned"
    eligible = [c for c in candidates if c.passed]
    if not eligible:
        return candidates[0], "no candidate kept the tolerance on val; the guard decides on the first", "tolerance"
    if len(eligible) == 1:
        dropped = ", ".join(c.name for c in candidates if c is not eligible[0])
        return eligible[0], f"the only candidate within tolerance on val ({dropped} broke it)", "tolerance"
    if not all(c.latency for c in eligible):
        return eligible[0], f"not timed (latency runs 0): {eligible[0].name} kept", "untimed"
    best = min(eligible, key=lambda c: c.mean_p50_ms)
    others = [c for c in eligible if c is not best]
    ratio = ", ".join(f"{o.mean_p50_ms / best.mean_p50_ms:.2f}x faster than {o.name}" for o in others)
    return best, f"fastest within tolerance here: mean batch-1 p50 {best.mean_p50_ms:.3f} ms, {ratio}", "latency"


def choose(
    mode: str,
    build_static: Callable[[], Candidate],
    build_dynamic: Callable[[], Candidate],
    val_check: Callable[[Candidate], dict[str, Any]],
    race: Callable[[list[Candidate]], None],
) -> tuple[Candidate, dict[str, Any]]:
    """Build the candidates `mode` asks for, check and time them (auto only), pick one; returns it and the report
    section `cpu_file`."""
    if mode not in MODES:
        raise ValueError(f"quantize.cpu_file {mode!r} is not one of {', '.join(MODES)}")
    candidates = []
    if mode in ("auto", "static"):
        candidates.append(build_static())
    if mode in ("auto", "dynamic"):
        candidates.append(build_dynamic())
    if mode == "auto":
        for candidate in candidates:
            if candidate.val is None:
                candidate.val = val_check(candidate)
        race([c for c in candidates if c.passed])
    chosen, reason, basis = pick(candidates)
    return chosen, {
        "mode": mode,
        "chosen": chosen.name,
        "basis": basis,
        "reason": reason,
        "candidates": {c.name: c.summary() for c in candidates},
    }
