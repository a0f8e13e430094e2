"""`fbcompress quantize` of a search bundle: the query encoder to INT8, behind a retrieval-accuracy guard.

Two files, as for the scorer (quantize/ort_methods.py says why each setting):

* `query_encoder.int8.onnx` for ONNX Runtime on CPUs: dynamic INT8 (weights INT8 offline, activations per batch),
  which needs no calibration and suits queries of a few tokens, where the time goes to the weights' GEMMs;
* `query_encoder.int8.trt.onnx` for TensorRT: symmetric Q/DQ on the MatMul inputs, calibrated on the train split's
  queries (VSL batches), FP16 elsewhere (`convert_qdq_fp16`, opset 19).

The guard is retrieval itself: the val split's queries are searched in the index (over the whole catalogue) with
the FP32 `query_encoder.onnx` and with each INT8 graph; a file ships only when its Recall@10 and nDCG@10 drop by
at most `quantize.max_recall10_drop` / `max_ndcg10_drop`. The TensorRT file is judged on its FP32-outside-the-GEMMs
twin in ONNX Runtime (the engine's FP16 elsewhere needs a GPU to measure; said in the report). A file the guard
rejects is not written, and an earlier run's copy is removed from the bundle.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbcompress.bundle import store as B
from fbcompress.bundle.names import (
    QUANTIZATION_JSON,
    QUANTIZATION_MD,
    QUERY_ENCODER_FILE,
    QUERY_ENCODER_INT8_FILE,
    QUERY_ENCODER_INT8_TRT_FILE,
)
from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.search_sets import search_queries
from fbcompress.export.search_bundle import ROLE_QUERY_ENCODER_INT8, ROLE_QUERY_ENCODER_INT8_QDQ, is_search_bundle
from fbcompress.quantize.calibration import BatchReader
from fbcompress.quantize.ort_methods import StaticSettings, calibrate, quantize_dyn, quantize_trt
from fbcompress.recipes import QuantizeSection
from fbcompress.runtime.embedding import query_inputs, tokenize_queries
from fbcompress.runtime.onnxruntime import OrtQueryEncoder
from fbcompress.search.evaluate import evaluate_retrieval
from fbcompress.search.searcher import Searcher
from fbcompress.search.store import ProductIndex, open_index

GUARDED = ("recall@10", "ndcg@10")


@dataclass
class QueryQuantizeOptions:
    bundle: Path
    data: Path
    index: Path
    section: QuantizeSection
    split: str = "val"
    log: Any = None


@dataclass
class QueryQuantization:
    """What `quantize` did to a search bundle: the FP32 reference, each INT8 file's metrics and verdict."""

    reference: dict[str, float]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    split: str = "val"

    @property
    def status(self) -> str:
        return "accepted" if self.written else "rejected"

    def summary(self) -> str:
        parts = []
        for rel, entry in self.files.items():
            deltas = ", ".join(f"{k} {v:+.4f}" for k, v in entry["drops"].items())
            parts.append(f"{rel}: {'shipped' if entry['shipped'] else 'not shipped'} (drop vs FP32: {deltas})")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "query-encoder", "split": self.split, "status": self.status, "reference_fp32": self.reference,
                "files": self.files, "written": self.written, "summary": self.summary()}


def _metrics(encoder: Any, index: ProductIndex, dataset: DatasetDir, split: str) -> dict[str, float]:
    result = evaluate_retrieval(Searcher(encoder, index), dataset, split)
    ann = result["stages"]["ann"]
    return {k: float(ann[k]) for k in (*GUARDED, "mrr", "recall@100")}


def calibration_batches(dataset: DatasetDir, tokenizer: Any, max_len: int, batches: int, size: int
                        ) -> list[dict[str, Any]]:
    """VSL batches of the train split's queries (in the order of the query set), as numpy feeds."""
    texts = [q.text for q in search_queries(dataset, "train")][:batches * size]
    if not texts:
        raise FbError(f"{dataset.root} has no train queries to calibrate the query encoder on")
    ids = tokenize_queries(tokenizer, texts, max_len)
    out = []
    for start in range(0, len(ids), size):
        batch = query_inputs(ids[start:start + size], int(tokenizer.pad_token_id))
        out.append({k: v.numpy() for k, v in batch.items()})
    return out


def quantize_query_encoder(opts: QueryQuantizeOptions) -> QueryQuantization:
    """Quantize, guard and write (see the module doc); FbError on bad input, nothing half-written."""
    from fbcompress.export.onnx_export import convert_qdq_fp16
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.quantize.cpu import detect_isa, resolve_reduce_range

    bundle = B.Bundle.open(opts.bundle)
    if not is_search_bundle(bundle.manifest):
        raise FbError(f"{opts.bundle} is not a search bundle")
    source = bundle.verify(QUERY_ENCODER_FILE)
    tokenizer_dir = bundle.verify_tokenizer()
    tower = bundle.manifest["tower"]
    index = open_index(opts.index)
    if index.space != tower.get("space"):
        raise FbError(f"the index {opts.index} is of another embedding space than {opts.bundle}'s query encoder: "
                      "build it with the retriever this encoder came from")
    dataset = DatasetDir.open(opts.data)
    tokenizer = load_tokenizer(tokenizer_dir)
    section = opts.section
    from fbcompress.modeling.dual_tower import TowerSpec

    spec = TowerSpec(**tower)
    say = opts.log or (lambda line: None)
    say(f"FP32 reference: {opts.split} queries over the {len(index.product_ids)} products of {opts.index} ...")
    report = QueryQuantization(_metrics(OrtQueryEncoder(source, spec, tokenizer_dir, QUERY_ENCODER_FILE), index,
                                        dataset, opts.split), split=opts.split)
    with tempfile.TemporaryDirectory(prefix="fbcompress-query-int8-") as tmp:
        work = Path(tmp)
        cpu, trt, trt_twin = work / QUERY_ENCODER_INT8_FILE, work / QUERY_ENCODER_INT8_TRT_FILE, work / "qdq.onnx"
        reduce_range = resolve_reduce_range(section.reduce_range, detect_isa())
        settings = {QUERY_ENCODER_INT8_FILE: quantize_dyn(source, cpu, section.per_channel, reduce_range,
                                                          list(section.exclude_nodes))}
        batches = calibration_batches(dataset, tokenizer, spec.max_query_len, section.calibration_batches,
                                      section.calibration_batch_size)
        static = StaticSettings(section.calibration_method, section.percentile, section.per_channel, False,
                                list(section.exclude_nodes))
        calibrate(source, BatchReader(batches), work / "ranges.json", static)
        settings[QUERY_ENCODER_INT8_TRT_FILE] = {**quantize_trt(source, trt_twin, work / "ranges.json", static),
                                                 "fp16": convert_qdq_fp16(trt_twin, trt),
                                                 "accuracy_measured_on": "its QDQ graph with FP32 outside the GEMMs, "
                                                 "in ONNX Runtime CPU (the engine's FP16 elsewhere needs a GPU)"}
        for rel, judged in ((QUERY_ENCODER_INT8_FILE, cpu), (QUERY_ENCODER_INT8_TRT_FILE, trt_twin)):
            say(f"guard: {rel} ...")
            metrics = _metrics(OrtQueryEncoder(judged, spec, tokenizer_dir, rel), index, dataset, opts.split)
            drops = {k: report.reference[k] - metrics[k] for k in GUARDED}
            limits = {"recall@10": section.max_recall10_drop, "ndcg@10": section.max_ndcg10_drop}
            report.files[rel] = {"metrics": metrics, "drops": drops, "limits": limits,
                                 "shipped": all(drops[k] <= limits[k] for k in GUARDED),
                                 "bytes": (cpu if rel == QUERY_ENCODER_INT8_FILE else trt).stat().st_size,
                                 "settings": settings[rel]}
        _write(bundle, report, {QUERY_ENCODER_INT8_FILE: cpu, QUERY_ENCODER_INT8_TRT_FILE: trt})
    return report


def _write(bundle: B.Bundle, report: QueryQuantization, files: dict[str, Path]) -> None:
    """Shipped files into the bundle, rejected ones (and an earlier run's copies) out; the report beside them."""
    import shutil

    roles = {QUERY_ENCODER_INT8_FILE: ROLE_QUERY_ENCODER_INT8,
             QUERY_ENCODER_INT8_TRT_FILE: ROLE_QUERY_ENCODER_INT8_QDQ}
    with B.update_bundle(bundle.root, bundle.manifest.get("source", {})) as writer:
        for rel, path in files.items():
            entry = report.files[rel]
            if entry["shipped"]:
                shutil.copy2(path, writer.path(rel, roles[rel]))
                writer.add_model(rel, {"role": roles[rel], "format": "onnx", "precision": "int8",
                                       "derived_from": QUERY_ENCODER_FILE, "accuracy": {
                                           "split": report.split, **entry["metrics"], "drops": entry["drops"]},
                                       "quantization": entry["settings"]})
                report.written.append(rel)
            else:
                writer.remove(rel)
        writer.manifest["quantization"] = {"summary": report.summary(), "report": QUANTIZATION_JSON}
        writer.path(QUANTIZATION_JSON, "report").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        writer.path(QUANTIZATION_MD, "report").write_text(render_report(report))
        from fbcompress.export.search_readme import render_search_readme

        writer.finalize(render_search_readme)


def render_report(report: QueryQuantization) -> str:
    lines = [f"# Query encoder INT8 ({report.split} queries over the whole catalogue)", "",
             "| file | Recall@10 | nDCG@10 | MRR | drop R@10 / nDCG@10 (limit) | shipped |",
             "|---|---|---|---|---|---|",
             f"| {QUERY_ENCODER_FILE} (FP32) | {report.reference['recall@10']:.4f} | {report.reference['ndcg@10']:.4f}"
             f" | {report.reference['mrr']:.4f} | | |"]
    for rel, entry in report.files.items():
        m, d, limit = entry["metrics"], entry["drops"], entry["limits"]
        lines.append(f"| {rel} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr']:.4f} | "
                     f"{d['recall@10']:+.4f} / {d['ndcg@10']:+.4f} ({limit['recall@10']} / {limit['ndcg@10']}) | "
                     f"{'yes' if entry['shipped'] else 'no'} |")
    return "\n".join(lines) + "\n"
