"""The bench record (`fbcompress bench --json`, schema `fbcompress-bench/1`) as a typed record.

`run_bench` returns one `BenchRecord`; the Markdown table, the plots, the terminal summary and the quickstart report
read it. Its JSON form is what was written before the record was typed: keys a case or model never set are left out
(`exclude_unset`), so a skipped model carries only what the report reads. Per-backend model facts (providers,
engine profiles, parameter counts) are kept as the runner reported them (extra keys of `BenchModel`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fbcompress.evaluation.latency import MachineRecord

BENCH_SCHEMA = "fbcompress-bench/1"


class CaseMemory(BaseModel):
    """Memory of one case (`matrix.MemoryProbe`): CPU RSS and its growth, or the CUDA peak."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    peak_mib: float | None
    delta_mib: float | None
    rss_mib: float | None = None


class BenchRow(BaseModel):
    """One model at one shape: timed, failed (`error`) or skipped (`skipped`, with the reason)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: int  # the id of its `BenchModel`
    label: str
    batch: int
    text: int
    padded_to: int | None
    seq_len: int
    skipped: str | None
    runs: int
    error: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    pairs_per_s: float | None = None
    memory: CaseMemory | None = None
    speedup_vs_first: float | None = None  # the first timed model's p50 / this p50, same shape
    vsl_speedup: float | None = None  # this model's p50 padded to --pad-to / its VSL p50

    @property
    def timed(self) -> bool:
        return self.error is None and not self.skipped and self.p50_ms is not None


class BenchModel(BaseModel):
    """One model of the matrix; `skipped` says why a model this machine cannot run was not timed."""

    model_config = ConfigDict(extra="allow")

    id: int
    label: str
    path: str
    backend: str
    mode: str | None
    device: str
    precision: str
    timed: str | None = None  # what one timed call covers
    max_text_len: int | None = None
    max_positions: int | None = None
    memory_kind: str | None = None
    skipped: str | None = None


class BenchSettingsRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[int]
    text_lengths: list[int]
    runs: int
    warmup: int
    pad_to: int | None
    seed: int
    threads: int | None


class BenchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(BENCH_SCHEMA, alias="schema")
    created: str
    machine: MachineRecord
    settings: BenchSettingsRecord
    models: list[BenchModel]
    results: list[BenchRow]
    failed: int
    skipped: int
    notes: list[str]
    plots: list[str] = []  # relative to the JSON file's folder (`report.write_outputs`)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)
