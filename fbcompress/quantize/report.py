"""The quantization report as Markdown (`quantization.md` in the bundle), rendered from the typed report
(`record.QuantizationReport`, also written as quantization.json) so the two never disagree. It answers a serving
team's questions in order: what each file is for, what it costs in accuracy, what it buys in size and latency, which
nodes stayed FP and why, and what the ranges were calibrated on.
"""

from __future__ import annotations

from typing import Any

from fbcompress.quantize.record import QuantizationReport, QuantizedFile

METRIC_LABELS = (
    ("accuracy", "ACC"),
    ("auc", "AUC"),
    ("itr_r1", "ITR R@1"),
    ("itr_r5", "ITR R@5"),
    ("itr_r10", "ITR R@10"),
    ("tir_r1", "TIR R@1"),
    ("tir_r5", "TIR R@5"),
    ("tir_r10", "TIR R@10"),
)


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.2f} MB"


def _accuracy_rows(report: QuantizationReport) -> list[str]:
    acc = report.accuracy
    files = acc.files
    columns = list(files)
    rows = [
        "| metric | FP32 `model.onnx` | " + " | ".join(f"`{c}`" for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for key, label in METRIC_LABELS:
        if key not in acc.fp32:
            continue
        cells = []
        for column in columns:
            got = files[column]
            value, delta = got.int8.get(key), got.deltas.get(key)
            cells.append("-" if value is None else f"{value:.4f} ({delta:+.4f})")
        rows.append(f"| {label} | {acc.fp32[key]:.4f} | " + " | ".join(cells) + " |")
    tol = acc.tolerance
    rows += [
        "",
        f"Split `{acc.split}` of `{acc.data}`{' (synthetic catalogue)' if acc.synthetic else ''}"
        f"; tolerance: AUC drop <= {tol.max_auc_drop:g}, ITR/TIR Rank@10 drop <= "
        f"{tol.max_rank10_drop:g}. {acc.note}.",
    ]
    for column in columns:
        scored = files[column].scored_file
        if scored not in (None, column):
            entry = report.files.get(column)
            check = entry.settings.get("accuracy_check", {}) if entry else {}
            rows += ["", f"**`{column}` was not scored itself: ONNX Runtime's CPU provider cannot run it "
                         f"({check.get('error', '?')}); its column is {scored}.**"]
    return rows


def _latency_rows(report: QuantizationReport) -> list[str]:
    from fbcompress.evaluation.latency import machine_line

    lat = report.latency
    if not lat.models:
        return ["Latency not measured (--latency-runs 0)."]
    texts = sorted({c.text for cases in lat.models.values() for c in cases})
    rows = [
        "| model | size | " + " | ".join(f"p50 / p99 ms, text {t}" for t in texts) + " |",
        "|---|---|" + "---|" * len(texts),
    ]
    for name, cases in lat.models.items():
        by_text = {c.text: c for c in cases}
        size = report.size.get(name)
        cells = [f"{by_text[t].p50_ms:.2f} / {by_text[t].p99_ms:.2f}" if t in by_text else "-" for t in texts]
        rows.append(f"| `{name}` | {_mb(size) if size else '-'} | " + " | ".join(cells) + " |")
    machine = report.machine
    isa = machine.int8
    rows += [
        "",
        f"Batch 1, {lat.runs} timed runs after {lat.warmup} warm-up, {lat.runtime}. Machine: "
        f"{machine_line(machine)}; INT8 ISA {isa.get('isa', '?')} "
        f"({isa.get('scheme', '?')}).",
    ]
    rows += [f"Not timed: `{name}` ({why})." for name, why in lat.not_timed.items()]
    return rows


def _file_section(rel: str, entry: QuantizedFile) -> list[str]:
    graph = entry.graph
    settings = entry.settings
    lines = [
        f"### `{rel}`",
        "",
        f"- for: {entry.purpose}",
        f"- runtime: {entry.runtime}",
        f"- size: {_mb(entry.bytes)} ({entry.size_vs_fp32:.1%} of FP32)",
    ]
    for key in ("tool", "format", "activations", "weights", "embeddings"):
        if settings.get(key):
            lines.append(f"- {key}: {settings[key]}")
    policy = entry.precision_policy
    if policy:
        kept = ", ".join([*policy.fp32_ops, *(f"`{n}`" for n in policy.fp32_nodes)])
        lines.append(
            f"- precision outside the quantized GEMMs: {policy.high_precision.upper()}, except {kept} (FP32); "
            f"inputs/outputs {policy.io_dtypes}; opset {policy.opset}; same policy as {policy.same_as}"
        )
    check = settings.get("accuracy_check")
    if check:
        lines.append(f"- accuracy scored on: {check['scored_file']} (ONNX Runtime CPU: {check['onnxruntime_cpu']}"
                     + (f", {check['error']}" if check.get("error") else "") + ")")
    quantized = graph.get("quantized_nodes", [])
    kept = graph.get("fp_nodes", [])
    lines.append(f"- quantized nodes ({len(quantized)}): " + ", ".join(f"`{n['name']}`" for n in quantized))
    kept_names = ", ".join(f"`{n['name']}`" for n in kept) or "none"
    lines.append(f"- MatMul/Gemm/Gather kept FP ({len(kept)}): {kept_names}")
    if graph.get("fp_ops"):
        lines.append("- always FP: " + ", ".join(f"{op} x{n}" for op, n in graph["fp_ops"].items()))
    if "dq_feeding_layernorm_or_softmax" in graph:
        bad = graph["dq_feeding_layernorm_or_softmax"]
        lines.append(f"- Q/DQ feeding LayerNorm or Softmax: {'none' if not bad else ', '.join(bad)}")
    ranges = entry.activation_ranges
    if ranges.get("tensors"):
        widest = ", ".join(f"`{r['tensor']}` [{r['min']:.3g}, {r['max']:.3g}]" for r in ranges["widest"][:3])
        lines.append(
            f"- calibrated activation ranges: {ranges['tensors']} tensors, {ranges['dtypes']}, symmetric "
            f"{ranges['symmetric']}, median scale {ranges['median_scale']:.3g}; widest: {widest}"
        )
    return [*lines, ""]


def _fallback_rows(report: QuantizationReport) -> list[str]:
    fb = report.fallback
    kept = report.kept_fp
    lines = [
        "- by design: " + (", ".join(f"`{n}` ({why})" for n, why in kept.by_design.items()) or "none"),
        "- by the recipe (quantize.exclude_nodes): " + (", ".join(f"`{n}`" for n in kept.by_recipe) or "none"),
        "- by the accuracy fall-back: " + (", ".join(f"`{n}`" for n in kept.by_fallback) or "none"),
        f"- fall-back: {fb.stopped}",
    ]
    for rel, cases in fb.latency_cost.items():
        lines.append(
            f"- latency cost in `{rel}`: "
            + "; ".join(
                f"{text}: {c.p50_ms_before:.2f} -> {c.p50_ms_after:.2f} ms ({c.added_ms:+.2f})"
                for text, c in cases.items()
            )
        )
    for step in fb.steps:
        vals = ", ".join(f"{rel} AUC {v['auc']:.4f}" for rel, v in step["val"].items())
        lines.append(
            f"  - attempt {step['attempt']}: FP nodes added {step['returned_to_fp'] or '-'}; val {vals}; "
            f"{'passed' if step['passed'] else 'broken'}"
        )
    errors = fb.per_node_error
    if errors:
        lines += [
            "",
            "Per-node output error vs FP32 on the calibration batches (||Y_int8 - Y_fp32|| / ||Y_fp32||, "
            "each node alone), most sensitive first:",
            "",
            "| node | op | error |",
            "|---|---|---|",
        ]
        lines += [f"| `{r['name']}` | {r['op']} | {r['rel_error']:.4g} |" for r in errors[:20]]
    return lines


def _within(val: dict[str, Any]) -> str:
    return "not scored" if not val else "yes" if val.get("passed") else "no"


def _cpu_file_rows(report: QuantizationReport) -> list[str]:
    choice = report.cpu_file
    if not choice:
        return []
    lines = [
        "## Which graph is the CPU file",
        "",
        f"`quantize.cpu_file: {choice.mode}` -> **{choice.chosen}**: {choice.reason}.",
        "",
    ]
    if len(choice.candidates) < 2:
        return lines
    texts = sorted({c["text"] for cand in choice.candidates.values() for c in cand["latency"]})
    lines += [
        "| candidate | format | val AUC (FP32) | within tolerance | "
        + " | ".join(f"p50 ms, text {t}" for t in texts) + " |",
        "|---|---|---|---|" + "---|" * len(texts),
    ]
    for name, cand in choice.candidates.items():
        val = cand.get("val") or {}
        by_text = {c["text"]: c["p50_ms"] for c in cand["latency"]}
        auc = f"{val['auc']:.4f} ({val['fp32_auc']:.4f})" if "auc" in val else "-"
        cells = [f"{by_text[t]:.3f}" if t in by_text else "-" for t in texts]
        lines.append(
            f"| {name} | {cand['format']} | {auc} | {_within(val)} | " + " | ".join(cells)
            + " |"
        )
    return [*lines, "", "Timed at batch 1 in alternating blocks of 10 runs, both sessions loaded side by side.", ""]


def _modelopt_rows(report: QuantizationReport) -> list[str]:
    mo = report.comparisons.get("modelopt", {})
    return [f"Not run: {mo.get('reason', 'n/a')}."]


def _image_encoder_rows(report: QuantizationReport) -> list[str]:
    """The INT8 image encoder of a features model: its end-to-end verdict, feature error and CPU throughput."""
    record = report.image_encoder
    if record is None:
        return []
    lines = ["## Image encoder (INT8)", "", f"**{record.status}**: {record.reason}.", ""]
    acc = record.accuracy
    if acc is not None:
        lines += [
            f"End to end on `{acc.split or report.accuracy.split}`: {acc.scored_file} vs the FP32 scorer on the "
            f"stored features: AUC {acc.int8['auc']:.4f} vs {acc.fp32['auc']:.4f} ({acc.deltas['auc']:+.4f}), "
            f"ITR R@10 {acc.deltas.get('itr_r10', float('nan')):+.4f}, TIR R@10 "
            f"{acc.deltas.get('tir_r10', float('nan')):+.4f}.",
            "",
        ]
    if record.features:
        f = record.features
        lines += [f"Features of {f['images']} images, INT8 vs the FP32 graph: max |diff| "
                  f"{f['max_abs_diff_vs_fp32_graph']:.4g}, mean {f['mean_abs_diff_vs_fp32_graph']:.4g} (max |feature| "
                  f"{f['scale']:.4g}).", ""]
    if record.throughput:
        t = record.throughput
        fp32, int8 = t.get("fp32_images_per_s"), t.get("int8_images_per_s")
        if fp32 and int8:
            lines += [f"Throughput ({t['runtime']}, batches of {t['batch']}, this machine): FP32 {fp32:.1f} images/s, "
                      f"INT8 {int8:.1f} images/s ({int8 / fp32:.2f}x).", ""]
    if record.bytes and record.fp32_bytes:
        lines += [f"Size: {_mb(record.bytes)} vs {_mb(record.fp32_bytes)} FP32; calibrated on "
                  f"{record.calibration_images} train images; {record.settings.get('convs_quantized')} of "
                  f"{record.settings.get('convs')} Convs in INT8.", ""]
    return lines


def render_markdown(report: QuantizationReport) -> str:
    cal = report.calibration
    source = report.source
    lines = [
        f"# Quantization report: {report.method} ({report.status})",
        "",
        f"Bundle `{report.bundle}`, source `{source.file}` (sha256 {source.sha256[:12]}..., {_mb(source.bytes)}); "
        f"recipe: {report.recipe.source}.",
        "",
    ]
    if report.message:
        lines += [f"**{report.message}**", ""]
    lines += ["## Files", ""]
    for rel, entry in report.files.items():
        lines += _file_section(rel, entry)
    lines += [
        "## Accuracy",
        "",
        *_accuracy_rows(report),
        "",
        "## Size and latency (ONNX Runtime, CPU)",
        "",
        *_latency_rows(report),
        "",
        *_cpu_file_rows(report),
        "## Nodes kept in floating point",
        "",
        *_fallback_rows(report),
        "",
        "## Calibration",
        "",
        f"{cal.batches} batches, {cal.pairs} training pairs (half matched, half mismatched), text lengths "
        f"{cal.text_lengths} (each batch padded only to its own longest text; padding "
        f"{cal.padding_share:.1%}), {cal.method} ranges.",
        "",
        *_image_encoder_rows(report),
        "## NVIDIA ModelOpt ONNX PTQ (comparison)",
        "",
        *_modelopt_rows(report),
        "",
    ]
    return "\n".join(lines)
