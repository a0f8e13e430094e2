"""`fbcompress quantize`: a bundle's FP32 graph to INT8, behind an accuracy guard.

Exit codes: 0 accepted and written; 1 the accuracy guard rejected the INT8 models (nothing written, the FP32 bundle
untouched; the report still goes to --json); 2 bad input (one line, as every command).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fbcompress.commands.options import (
    data_option,
    echo_log,
    json_option,
    progress_wanted,
    recipe_option,
    set_option,
    split_option,
)
from fbcompress.core.errors import FbError

if TYPE_CHECKING:
    from fbcompress.quantize.record import QuantizationReport

EXIT_REJECTED = 1


@click.command("quantize")
@click.option(
    "--model",
    "-m",
    "model",
    required=True,
    type=click.Path(path_type=Path),
    help="the bundle's FP32 standard-ops graph, exported/NAME/model.onnx (or the bundle dir)",
)
@data_option("dataset dir: train split calibrates, val drives the fall-back, --split guards")
@click.option(
    "--method",
    type=click.Choice(["ort-static", "ort-dynamic", "inc"]),
    help="ort-static: QDQ for TensorRT + CPU; ort-dynamic: dynamic INT8 for CPU; inc: Intel Neural "
    "Compressor, refused with the reason (it cannot make these ONNX files beside this stack) "
    "(default: recipe quantize.method, ort-static)",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="the bundle to add the INT8 files to (default and only choice: the bundle holding --model)",
)
@recipe_option("recipe for quantize.* (calibration, tolerances); default: the bundle checkpoint's recipe")
@set_option("--set quantize.calibration_method=Percentile")
@split_option("split the final accuracy guard and the report use")
@click.option(
    "--latency-runs",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="timed ONNX Runtime CPU runs per model and text length (0: skip latency)",
)
@click.option(
    "--reference-eval",
    type=click.Path(path_type=Path),
    help="a saved `fbcompress eval --json` of --model on --split (all queries), reused as the guard's FP32 "
    "reference instead of scoring it again; refused unless made from that file, this data and split",
)
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="search bundles: the product index the guard searches (`fbcompress index build` with the "
                   "retriever of the query encoder)")
@json_option("report")
def quantize_cmd(
    model: Path,
    data_dir: Path,
    method: str | None,
    out: Path | None,
    recipe: str | None,
    overrides: tuple[str, ...],
    split: str,
    latency_runs: int,
    reference_eval: Path | None,
    index_dir: Path | None,
    json_path: str | None,
) -> None:
    """Quantize a bundle's FP32 model.onnx to INT8 and add it to the bundle, if accuracy holds.

    \b
    ort-static writes model.int8.trt.onnx (symmetric INT8 Q/DQ on MatMul/Gemm inputs, FP16 elsewhere
    as in model.fp16.onnx: the TensorRT engine's source) and model.int8.onnx (ONNX Runtime on this
    CPU, embeddings INT8): static QDQ (U8S8 on AVX2, S8S8 on VNNI/AMX) or dynamic INT8, whichever is
    faster here within tolerance
    (quantize.cpu_file: auto; static or dynamic pin it), calibrated on training pairs of varied text
    lengths. While the val AUC or Rank@10 drop exceeds quantize.max_auc_drop / max_rank10_drop, the
    most sensitive MatMuls return to FP. The final guard scores --split against FP32: beyond
    tolerance the command exits 1, says which metric broke by how much, and writes nothing.
    Report: quantization.{json,md} in the bundle.

    \b
    Examples:
      fbcompress quantize --model exported/qs/model.onnx --data runs/qs/data --out exported/qs
      fbcompress quantize -m exported/qs/model.onnx --data runs/qs/data --method ort-dynamic --json q.json
      fbcompress quantize -m exported/qs/model.onnx --data D --set quantize.calibration_method=Entropy
      fbcompress quantize -m exported/qs/model.onnx --data D --set quantize.cpu_file=static
      fbcompress quantize -m exported/qs/model.onnx --data D --reference-eval runs/qs/eval/onnx.json
      fbcompress export --model runs/qs/student --target tensorrt --precision int8 --out exported/qs
      fbcompress quantize -m exported/qs/search --data runs/qs/data --index runs/qs/index

    \b
    A search bundle (`export` of a query encoder) gets query_encoder.int8.onnx (dynamic INT8, ONNX Runtime on
    CPUs) and query_encoder.int8.trt.onnx (Q/DQ for TensorRT), each shipped only if its Recall@10 and nDCG@10 of
    the val queries (or --split's) over --index drop by at most quantize.max_recall10_drop / max_ndcg10_drop.
    """
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.quantize.pipeline import QuantizeOptions, run_quantize

    if not model.exists():
        raise FbError(f"model not found: {model}")
    if not data_dir.exists():
        raise FbError(f"dataset dir not found: {data_dir}")
    from fbcompress.recipes import resolve_section

    section, source = resolve_section("quantize", recipe, overrides, [model])
    if _search_bundle(model) is not None:
        explicit = click.get_current_context().get_parameter_source("split") == click.core.ParameterSource.COMMANDLINE
        _quantize_query_encoder(_search_bundle(model), data_dir, index_dir, section, split if explicit else "val",
                                json_path)
        return
    if index_dir is not None:
        raise FbError("--index applies to a search bundle (a query encoder); this is a scorer")
    opts = QuantizeOptions(
        model=model,
        data_dir=data_dir,
        section=section,
        recipe_source=source,
        method=method,
        out=out,
        split=split,
        latency_runs=latency_runs,
        reference_eval=reference_eval,
        progress=progress_wanted(),
        log=echo_log,
    )
    report = run_quantize(opts)
    click.echo(format_summary(report), err=json_path == "-")
    if json_path:
        write_json_output(json_path, report.to_json())
    if report.status != "accepted":
        click.echo(f"error: {report.message}", err=True)
        sys.exit(EXIT_REJECTED)


def _search_bundle(model: Path) -> Path | None:
    """The search bundle `model` is (or whose query_encoder.onnx it is), else None."""
    import json

    from fbcompress.bundle.names import MANIFEST, SEARCH_KIND

    root = model if model.is_dir() else model.parent
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return root if isinstance(manifest, dict) and manifest.get("kind") == SEARCH_KIND else None


def _quantize_query_encoder(bundle: Path, data_dir: Path, index_dir: Path | None, section, split: str,
                            json_path: str | None) -> None:
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.quantize.query_encoder import QueryQuantizeOptions, quantize_query_encoder

    if index_dir is None:
        raise FbError("a search bundle is quantized against an index: give --index (made by `fbcompress index build` "
                      "with its retriever)")
    report = quantize_query_encoder(QueryQuantizeOptions(bundle, data_dir, index_dir, section, split, echo_log))
    click.echo(report.summary(), err=json_path == "-")
    if json_path:
        write_json_output(json_path, report.to_json())
    if report.status != "accepted":
        click.echo("error: the accuracy guard rejected every INT8 query encoder (quantization.md says by how much)",
                   err=True)
        sys.exit(EXIT_REJECTED)


def format_summary(report: QuantizationReport) -> str:
    """A few lines for the terminal; the full story is in quantization.md."""
    rows = [("method", report.method), ("status", report.status)]
    fp32 = report.accuracy.fp32
    for rel, entry in report.files.items():
        acc = report.accuracy.files.get(rel)
        text = f"{entry.bytes / 1e6:.1f} MB ({entry.size_vs_fp32:.0%} of FP32)"
        if acc:
            d = acc.deltas
            text += f", AUC {acc.int8['auc']:.4f} ({d['auc']:+.4f} vs FP32 {fp32['auc']:.4f})"
            if "itr_r10" in d:
                text += f", R@10 ITR {d['itr_r10']:+.3f} TIR {d.get('tir_r10', 0.0):+.3f}"
        rows.append((rel, text))
    for name, cases in report.latency.models.items():
        rows.append((f"p50 {name}", ", ".join(f"{c.p50_ms:.2f} ms @ text {c.text}" for c in cases)))
    kept = report.kept_fp.by_fallback
    rows.append(("returned to FP", ", ".join(kept) if kept else "none"))
    if report.written:
        rows.append(("written", ", ".join(report.written)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
