"""The quantization report (`quantization.json` in the bundle; `fbcompress quantize --json`) as a typed record.

`run_quantize` builds one `QuantizationReport`; the Markdown (`quantization.md`), the terminal summary and the
bundle manifest's INT8 entries are all read from it, so the three never disagree. What the code reads is typed;
tool output kept for the reader only (quantizer settings, the graph's node lists, each fall-back step's val scores,
the CPU candidates' timings) stays free-form (`dict[str, Any]`), as ONNX Runtime's quantizer reports it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fbcompress.evaluation.latency import LatencyStats, MachineRecord

Metrics = dict[str, float]  # accuracy, auc, itr_r1 .. tir_r10 (`measure.headline`)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToleranceBreak(_Record):
    """One metric of one file beyond the recipe's tolerance."""

    metric: str
    fp32: float
    int8: float
    drop: float
    tolerance: float
    key: str  # the recipe key that sets the limit, e.g. quantize.max_auc_drop


class Comparison(_Record):
    """One file scored against FP32 `model.onnx` on the same split (`measure.compare`)."""

    split: str | None = None
    fp32: Metrics
    int8: Metrics
    deltas: Metrics  # INT8 - FP32
    breaks: list[ToleranceBreak]
    passed: bool
    scored_file: str | None = None  # set when ONNX Runtime scored a stand-in graph instead of the file


class Tolerance(_Record):
    max_auc_drop: float
    max_rank10_drop: float


class AccuracySection(_Record):
    split: str
    fp32: Metrics
    tolerance: Tolerance
    files: dict[str, Comparison]
    data: str
    synthetic: bool
    note: str


class LatencyCase(LatencyStats):
    batch: int
    text: int
    pairs_per_s: float | None = None


class LatencySection(_Record):
    runtime: str
    batch: int
    runs: int
    warmup: int
    models: dict[str, list[LatencyCase]]
    not_timed: dict[str, str]


class PrecisionPolicy(_Record):
    """The TensorRT file's mixed precision, as the manifest and the report state it."""

    quantized: str
    high_precision: str
    fp32_ops: list[str]
    fp32_nodes: list[str]
    io_dtypes: str
    opset: int
    same_as: str
    accuracy_scored_on: str


class QuantizedFile(_Record):
    role: str
    purpose: str
    runtime: str
    bytes: int
    size_vs_fp32: float
    constant_bytes_by_dtype: dict[str, int]
    settings: dict[str, Any]  # the quantizer's settings for this file (format, activations, weights, isa, ...)
    graph: dict[str, Any]  # quantized_nodes, fp_nodes, fp_ops, ... (`quantize.graph.describe_*`)
    activation_ranges: dict[str, Any]
    precision_policy: PrecisionPolicy | None = None


class SourceFile(_Record):
    file: str
    sha256: str
    bytes: int
    weights_sha256: str | None = None


class RecipeUsed(_Record):
    source: str
    quantize: dict[str, Any]


class Calibration(_Record):
    split: str
    method: str
    batches: int
    pairs: int
    text_lengths: list[int]
    padding_share: float
    percentile: float | None = None


class KeptFp(_Record):
    by_design: dict[str, str]  # node -> why
    by_recipe: list[str]
    by_fallback: list[str]


class LatencyCost(_Record):
    p50_ms_before: float
    p50_ms_after: float
    added_ms: float


class Fallback(_Record):
    enabled: bool
    max_nodes: int | None = None
    returned_to_fp: list[str]
    steps: list[dict[str, Any]]  # attempt, returned_to_fp, excluded, passed, val: {file: scores}
    stopped: str
    per_node_error: list[dict[str, Any]]  # name, op, rel_error, by_file; most sensitive first
    passed_on_val: bool | None = None
    latency_cost: dict[str, dict[str, LatencyCost]] = {}  # file -> "text N" -> cost


class CpuFileChoice(_Record):
    mode: str
    chosen: str
    basis: str
    reason: str
    candidates: dict[str, dict[str, Any]]  # name -> format, val, latency (`cpu_choice.Candidate.summary`)


class QuantizationMachine(MachineRecord):
    int8: dict[str, Any]  # the INT8 ISA and scheme detected here (`quantize.cpu.detect_isa`)


class ImageEncoderQuantization(_Record):
    """INT8 of a features model's image encoder (`quantize/image_encoder.py`): shipped only when the FP32 scorer on
    the INT8 encoder's features stays within the tolerances of the FP32 scorer on the stored features."""

    status: Literal["shipped", "not-shipped", "skipped"]
    reason: str
    file: str | None = None
    calibration_images: int | None = None
    settings: dict[str, Any] = {}
    accuracy: Comparison | None = None
    features: dict[str, Any] = {}  # INT8 vs FP32 graph on the guard split's images
    throughput: dict[str, Any] = {}  # images/s of both graphs on this CPU
    bytes: int | None = None
    fp32_bytes: int | None = None


class QuantizationReport(_Record):
    status: Literal["pending", "accepted", "rejected"]
    method: str
    bundle: str
    source: SourceFile
    recipe: RecipeUsed
    machine: QuantizationMachine
    calibration: Calibration
    files: dict[str, QuantizedFile]
    kept_fp: KeptFp
    fallback: Fallback
    cpu_file: CpuFileChoice | None = None
    accuracy: AccuracySection
    latency: LatencySection
    size: dict[str, int]
    comparisons: dict[str, dict[str, Any]]
    breaks: list[str]
    seconds: float | None = None
    message: str | None = None  # why it was rejected
    written: list[str] = []
    image_encoder: ImageEncoderQuantization | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to quantization.json and --json (unset optional parts are left out)."""
        return self.model_dump(mode="json", exclude_none=True)
