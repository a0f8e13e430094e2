"""`fbcompress quantize`: bundle `model.onnx` → INT8 files + report, guarded by the recipe's accuracy tolerance.

Order of work, so a rejected quantization never touches the bundle:
1. everything checkable without work (the source file's role and hash, --out, the method's packages, the data dir);
2. quantize into a private temporary directory (the accuracy fall-back loop scores each attempt on val);
3. the guard: score the final files on `--split` against FP32 `model.onnx`; beyond tolerance → status rejected,
   nothing written (the CLI exits 1);
4. only then the bundle's atomic update adds the INT8 files and the reports; the FP32 files are carried over as
   they were (hard links) and the manifest says which file is for what.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbcompress.bundle import store as B
from fbcompress.bundle.names import (
    IMAGE_ENCODER_FILE,
    IMAGE_ENCODER_INT8_FILE,
    INT8_CPU_FILE,
    INT8_TRT_FILE,
    ONNX_FILE,
    ORT_FILE,
    QUANTIZATION_JSON,
    QUANTIZATION_MD,
)
from fbcompress.core.errors import FbError
from fbcompress.quantize import METHODS, ROLE_REPORT, measure
from fbcompress.quantize import graph as G
from fbcompress.quantize.cpu_choice import DYNAMIC, STATIC, Candidate, choose
from fbcompress.quantize.image_encoder import encoder_record, guard_encoder
from fbcompress.quantize.record import (
    AccuracySection,
    Calibration,
    Comparison,
    Fallback,
    ImageEncoderQuantization,
    KeptFp,
    LatencySection,
    PrecisionPolicy,
    QuantizationMachine,
    QuantizationReport,
    QuantizedFile,
    RecipeUsed,
    SourceFile,
    Tolerance,
)

TRT_FP32_QDQ = "model.int8.trt.fp32-qdq.onnx"  # work directory only: the TensorRT file before its FP16 conversion
FP32_QDQ_LABEL = f"{INT8_TRT_FILE} before its FP16 conversion (FP32 QDQ graph, same Q/DQ placement and scales)"
MODELOPT_NOT_RUN = (
    "NVIDIA ModelOpt ONNX PTQ (the reference for TensorRT-ready QDQ) does not install beside this "
    "stack: pip resolves nvidia-modelopt[onnx] 0.47.0 to onnx 1.21.0 and onnxruntime-gpu 1.24.4, "
    "replacing onnx 1.23 and clashing with onnxruntime 1.32 (checked with pip install --dry-run)"
)


@dataclass
class QuantizeOptions:
    """Everything the command line decides; `section` is the recipe's `quantize` section."""

    model: Path
    data_dir: Path
    section: Any  # recipes.QuantizeSection
    recipe_source: str = "defaults"
    method: str | None = None
    out: Path | None = None
    split: str = "test"
    latency_runs: int = 100
    reference_eval: Path | None = None  # a saved eval of the FP32 source on `split`: the guard's reference
    progress: bool = False
    log: Callable[[str], None] | None = None


class _Run:
    """State shared by the steps: the source bundle, data splits, FP32 reference scores, the work directory."""

    def __init__(self, opts: QuantizeOptions, bundle: B.Bundle, rel: str, work: Path):
        self.opts, self.bundle, self.rel, self.work = opts, bundle, rel, work
        self.section = opts.section
        self.spec = bundle.spec
        self.max_positions = bundle.typed.max_text_positions or self.spec.max_text_len
        self.src = work / "model.fp32.onnx"
        self.tokenizer_dir: Path = bundle.tokenizer_dir
        self.dataset: Any = None
        self.data: dict[str, Any] = {}
        self.fp32: dict[tuple[str, int | None], dict[str, Any]] = {}  # (split, max_queries) -> FP32 scores
        self.batches: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        if self.opts.log:
            self.opts.log(text)

    def split_data(self, split: str):
        if split not in self.data:
            from fbcompress.data.loader import SplitData
            from fbcompress.modeling.backbone import load_tokenizer

            tokenizer = load_tokenizer(self.tokenizer_dir)
            self.data[split] = SplitData(self.dataset, split, tokenizer, self.spec)
        return self.data[split]

    def score(self, path: Path, name: str, split: str, max_queries: int | None = None) -> dict[str, Any]:
        return measure.score(
            path,
            name,
            self.spec,
            self.tokenizer_dir,
            self.dataset,
            self.split_data(split),
            split,
            max_queries=max_queries,
            progress=self.opts.progress,
        )

    def reference(self, split: str, max_queries: int | None = None) -> dict[str, Any]:
        key = (split, max_queries)
        if key not in self.fp32:
            self.say(f"scoring FP32 {ONNX_FILE} on {split} ...")
            self.fp32[key] = self.score(self.src, ONNX_FILE, split, max_queries)
        return self.fp32[key]

    def val_check(self, files: dict[str, Path]) -> dict[str, Any]:
        """Score candidate files on val against FP32 (the fall-back loop's test)."""
        queries = self.section.eval_queries
        reference = self.reference("val", queries)
        per_file = {}
        for rel, path in files.items():
            result = measure.compare(
                reference,
                self.score(path, rel, "val", queries),
                self.section.max_auc_drop,
                self.section.max_rank10_drop,
            )
            per_file[rel] = {
                "auc": result["int8"]["auc"],
                "fp32_auc": result["fp32"]["auc"],
                "breaks": result["breaks"],
                "passed": result["passed"],
            }
            self.say(
                f"  {rel} on val: AUC {result['int8']['auc']:.4f} (FP32 {result['fp32']['auc']:.4f})"
                + ("" if result["passed"] else " - tolerance broken")
            )
        return {"passed": all(v["passed"] for v in per_file.values()), "val": per_file}


def ort_cpu_problem(path: Path, feed: dict[str, Any]) -> str | None:
    """Why ONNX Runtime's CPU provider cannot load or run `path` on `feed` (e.g. no float16 kernel for one of its
    ops), or None when it runs."""
    try:
        session = session_factory(path)
        names = {i.name for i in session.get_inputs()}
        session.run(None, {k: v for k, v in feed.items() if k in names})
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises is the reason, reported as such
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"
    return None


def session_factory(proto_or_path) -> Any:
    from fbcompress.runtime.onnxruntime import cpu_session

    return cpu_session(proto_or_path)


# --------------------------------------------------------------------------------------------------------- checks


def resolve_source(model: Path) -> tuple[B.Bundle, str]:
    """The bundle and the FP32 standard-ops file to quantize (hash-checked); `exported/NAME` means its model.onnx."""
    if model.is_dir():
        if not (model / B.MANIFEST).is_file():
            raise FbError(
                f"--model {model} is a directory but not an export bundle (no {B.MANIFEST}); quantize "
                "starts from exported/NAME/model.onnx (run `fbcompress export --target onnx` first)"
            )
        model = model / B.Bundle.open(model).primary_model()
    if model.suffix != ".onnx":
        raise FbError(f"--model {model} is not an .onnx file: quantize starts from the bundle's FP32 {ONNX_FILE}")
    bundle, rel = B.verify_bundle_file(model)
    role = bundle.files.get(rel, {}).get("role")
    if role != B.ROLE_ONNX:
        raise FbError(
            f"--model {model} has role '{role}'; quantize starts from the standard-ops FP32 {ONNX_FILE} "
            f"(role '{B.ROLE_ONNX}'), not the ORT-fused or an already quantized graph: pass "
            f"{bundle.root / ONNX_FILE}"
        )
    return bundle, rel


def check_out(out: Path | None, bundle: B.Bundle) -> Path:
    """INT8 files join the bundle of their FP32 source, so the manifest ties them to it; --out must be that bundle."""
    if out is None:
        return bundle.root
    if out.resolve() != bundle.root.resolve():
        raise FbError(
            f"--out {out} is not the bundle that holds --model ({bundle.root}): the INT8 files are added "
            "to their FP32 source's bundle (omit --out, or pass that directory)"
        )
    return bundle.root


def _check_nodes(names: list[str], model) -> None:
    known = {node.name for node in model.graph.node}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise FbError(
            f"quantize.exclude_nodes names {unknown[0]!r}, which is not a node of {ONNX_FILE} "
            f"(MatMul/Gemm nodes: {', '.join(n['name'] for n in G.gemm_nodes(model)[:4])}, ...)"
        )


# --------------------------------------------------------------------------------------------------------- methods


def _source_graph(run: _Run) -> tuple[Any, Any, list[str]]:
    """What every method starts from: this CPU's INT8 ISA, the FP32 graph, and the nodes kept FP by design (after
    checking that the recipe's exclude_nodes name real nodes)."""
    from fbcompress.quantize.cpu import detect_isa

    fp_model = G.load(run.src)
    _check_nodes(list(run.section.exclude_nodes), fp_model)
    return detect_isa(), fp_model, G.default_fp_nodes(fp_model)


def _trt_accuracy_check(problem: str | None) -> dict[str, Any]:
    """How the TensorRT file's accuracy is measured: the file itself where ONNX Runtime's CPU provider runs it,
    else the nearest graph it can run (the same QDQ graph before the FP16 conversion), labelled as such."""
    if problem is None:
        return {
            "onnxruntime_cpu": "runs",
            "scored_file": INT8_TRT_FILE,
            "note": f"{INT8_TRT_FILE} itself (FP16 outside the quantized GEMMs, as TensorRT runs it) is scored with "
            "ONNX Runtime on CPU",
        }
    return {
        "onnxruntime_cpu": "cannot run",
        "error": problem,
        "scored_file": FP32_QDQ_LABEL,
        "note": f"ONNX Runtime's CPU provider cannot run {INT8_TRT_FILE} ({problem}); its accuracy (val and the "
        f"guard) is that of the nearest graph it can run: {FP32_QDQ_LABEL}, FP32 outside the GEMMs, so the FP16 "
        "rounding of the engine is not measured",
    }


class StaticQuantizer:
    """ort-static: both QDQ files, with the accuracy fall-back loop on val.

    The TensorRT file is quantized from the FP32 graph, then converted to FP16 outside the quantized ops
    (`convert_qdq_fp16`, model.fp16.onnx's policy) at every attempt, so the val check of the fall-back loop scores
    the file that ships; where ONNX Runtime cannot run it, the loop and the guard score its FP32 QDQ graph instead
    (`stand_ins`). The per-node ranking always reads the FP32 QDQ graph: `node_errors` captures its activations by
    name from the FP32 model, which the FP16 graph's casts would not match.

    One object per run: calibration once, then `build` (one attempt of the fall-back loop), `scored` (what ONNX
    Runtime scores in each file's place) and `rank` (per-node error) for `run_fallback`."""

    def __init__(self, run: _Run):
        from fbcompress.quantize.calibration import BatchReader

        self.run, self.section = run, run.section
        self.isa, self.fp_model, self.by_design = _source_graph(run)
        self.base = list(dict.fromkeys([*self.by_design, *self.section.exclude_nodes]))
        self.cache = run.work / "calibration-ranges.json"
        self.reader = BatchReader(run.batches, [i.name for i in session_factory(run.src).get_inputs()])
        self.infos: dict[int, dict[str, Any]] = {}
        self.fp32_qdq: dict[Path, tuple[Path, str | None]] = {}  # shipped TensorRT file -> (FP32 QDQ, ORT's problem)
        self.settled: tuple[Candidate, dict[str, Any]] | None = None  # the CPU file, when chosen before the loop

    def settings(self, excluded: list[str], reduce_range: bool):
        from fbcompress.quantize import ort_methods as M

        return M.StaticSettings(
            calibration_method=self.section.calibration_method,
            percentile=self.section.percentile,
            per_channel=self.section.per_channel,
            reduce_range=reduce_range,
            exclude=[*self.base, *excluded],
        )

    def build_cpu_static(self, excluded: list[str], folder: Path) -> dict[str, Any]:
        from fbcompress.quantize import ort_methods as M
        from fbcompress.quantize.cpu import resolve_reduce_range

        settings = self.settings(excluded, resolve_reduce_range(self.section.reduce_range, self.isa))
        return M.quantize_cpu(self.run.src, folder / INT8_CPU_FILE, self.cache, settings, self.isa)

    def build(self, excluded: list[str], attempt: int) -> dict[str, Path]:
        from fbcompress.export.onnx_export import convert_qdq_fp16
        from fbcompress.quantize import ort_methods as M

        run = self.run
        folder = run.work / f"attempt-{attempt}"
        folder.mkdir()
        run.say(f"quantizing (static QDQ, attempt {attempt}, {len(excluded)} node(s) returned to FP) ...")
        trt = M.quantize_trt(run.src, folder / TRT_FP32_QDQ, self.cache, self.settings(excluded, False))
        trt["precision"] = convert_qdq_fp16(folder / TRT_FP32_QDQ, folder / INT8_TRT_FILE)
        problem = ort_cpu_problem(folder / INT8_TRT_FILE, run.batches[0])
        if problem:
            run.say(f"  ONNX Runtime (CPU) cannot run the FP16 {INT8_TRT_FILE} ({problem}): scoring its FP32 QDQ "
                    "graph instead")
        trt["accuracy_check"] = _trt_accuracy_check(problem)
        self.fp32_qdq[folder / INT8_TRT_FILE] = (folder / TRT_FP32_QDQ, problem)
        self.infos[attempt] = {INT8_TRT_FILE: trt}
        if self.settled is not None:  # the CPU file is settled: the fall-back serves the TensorRT file alone
            return {INT8_TRT_FILE: folder / INT8_TRT_FILE}
        self.infos[attempt][INT8_CPU_FILE] = self.build_cpu_static(excluded, folder)
        return {INT8_TRT_FILE: folder / INT8_TRT_FILE, INT8_CPU_FILE: folder / INT8_CPU_FILE}

    def scored(self, files: dict[str, Path]) -> dict[str, Path]:
        """The graphs ONNX Runtime scores for `files`: each file, or its FP32 QDQ graph where it cannot run it."""
        return {rel: self.fp32_qdq[path][0] if path in self.fp32_qdq and self.fp32_qdq[path][1] else path
                for rel, path in files.items()}

    def rank(self, files: dict[str, Path]) -> list[dict[str, Any]]:
        from fbcompress.quantize.sensitivity import node_errors

        self.run.say("measuring per-node quantization error on the calibration batches ...")
        merged: dict[str, dict[str, Any]] = {}
        for rel, path in files.items():
            qdq = self.fp32_qdq[path][0] if path in self.fp32_qdq else path  # the FP32 QDQ graph (see above)
            for row in node_errors(self.run.src, G.load(qdq), self.run.batches, session_factory):
                entry = merged.setdefault(
                    row["name"], {"name": row["name"], "op": row["op"], "rel_error": 0.0, "by_file": {}}
                )
                entry["by_file"][rel] = row["rel_error"]
                entry["rel_error"] = max(entry["rel_error"], row["rel_error"])
        return sorted(merged.values(), key=lambda r: r["rel_error"], reverse=True)

    def quantize(self) -> dict[str, Any]:
        from fbcompress.quantize import ort_methods as M
        from fbcompress.quantize.fallback import run_fallback

        run, section = self.run, self.section
        run.say(f"calibrating ({section.calibration_method}, {len(run.batches)} batches) ...")
        calibration = M.calibrate(run.src, self.reader, self.cache, self.settings([], False))
        probe = None
        if section.cpu_file == "auto":
            self.settled, probe = _dynamic_first(run, self.build_cpu_static, self.base, self.isa)
        result = run_fallback(self.build, lambda files: run.val_check(self.scored(files)), self.rank,
                              section.max_fallback_nodes, section.fallback, run.say)
        if not result.ranking and result.passed:
            result.ranking = self.rank(result.files)  # the report lists per-node errors even when none returned
        methods = self.infos[len(result.steps) - 1]
        for info in methods.values():
            info["calibration"] = calibration
        if self.settled is not None:
            chosen, cpu_file = self.settled
        else:
            static_cpu = Candidate(STATIC, result.files[INT8_CPU_FILE], methods[INT8_CPU_FILE])
            static_cpu.val = result.steps[-1]["val"].get(INT8_CPU_FILE)
            # the probe's dynamic graph has the same FP nodes unless the fall-back returned some: reuse it (and
            # its val score) rather than quantize and score the same graph again
            reuse = probe if not result.excluded else None
            chosen, cpu_file = _choose_cpu_file(run, static_cpu, [*self.base, *result.excluded], self.isa, reuse)
        chosen.settings["isa"] = self.isa.to_dict()
        files = {**result.files, INT8_CPU_FILE: chosen.path}
        methods[INT8_CPU_FILE] = chosen.settings
        first_files = dict(result.first_files)
        if chosen.name != STATIC:  # the fall-back's latency cost is a static-file figure: no baseline for this one
            first_files.pop(INT8_CPU_FILE, None)
        return {
            "files": files,
            "first_files": first_files,
            # file -> the graph ONNX Runtime scores in its place (it cannot run the file): the guard uses them too
            "stand_ins": {path: qdq for path, (qdq, problem) in self.fp32_qdq.items() if problem},
            "cpu_file": cpu_file,
            "settings": methods,
            "fp_by_design": self.by_design,
            "fp_by_recipe": list(section.exclude_nodes),
            "fallback": {
                "enabled": section.fallback,
                "max_nodes": section.max_fallback_nodes,
                "returned_to_fp": result.excluded,
                "steps": _slim_steps(result.steps),
                "stopped": result.stopped,
                "per_node_error": result.ranking,
                "passed_on_val": result.passed,
            },
        }


def _static(run: _Run) -> dict[str, Any]:
    return StaticQuantizer(run).quantize()


def _dynamic_candidate(run: _Run, keep_fp: list[str], isa, folder_name: str) -> Candidate:
    """Dynamic INT8 for the CPU file, with `keep_fp` nodes left FP."""
    from fbcompress.quantize import ort_methods as M
    from fbcompress.quantize.cpu import resolve_reduce_range

    section = run.section
    folder = run.work / folder_name
    folder.mkdir()
    run.say("quantizing the dynamic INT8 candidate for the CPU file ...")
    info = M.quantize_dyn(
        run.src, folder / INT8_CPU_FILE, section.per_channel, resolve_reduce_range(section.reduce_range, isa),
        list(dict.fromkeys(keep_fp)),
    )
    return Candidate(DYNAMIC, folder / INT8_CPU_FILE, info)


def _val_check_candidate(run: _Run, candidate: Candidate) -> dict[str, Any]:
    return run.val_check({f"{INT8_CPU_FILE} ({candidate.name})": candidate.path})["val"].popitem()[1]


def _race_candidates(run: _Run, candidates: list[Candidate]) -> None:
    """Time the CPU candidates side by side (alternating blocks); skipped with --latency-runs 0."""
    if len(candidates) < 2 or run.opts.latency_runs <= 0:
        return
    run.say("timing the CPU candidates (" + " vs ".join(c.name for c in candidates) + ") ...")
    timed = measure.race(
        {c.name: c.path for c in candidates}, run.spec, run.max_positions, max(run.opts.latency_runs, 100)
    )
    for candidate in candidates:
        candidate.latency = timed[candidate.name]


def _dynamic_first(
    run: _Run, build_static: Callable[[list[str], Path], dict[str, Any]], keep_fp: list[str], isa
) -> tuple[tuple[Candidate, dict[str, Any]] | None, Candidate | None]:
    """cpu_file auto: settle the CPU file before the fall-back loop when dynamic INT8 wins outright.

    Both CPU graphs are built with only the nodes kept FP by design or by the recipe, and timed side by side; if
    dynamic is the faster and is within tolerance on val, it ships and the fall-back serves the TensorRT file
    alone (returns the choice). Why: were the static CPU graph in every fall-back step, a break of its tolerance
    would send MatMuls back to FP in the TensorRT file too and score both files on val at each step, for a graph
    that may then lose the race. Otherwise no choice, and both static files go through the fall-back. Also
    returns the dynamic graph it built (with its val score, if taken), for the later choice to reuse when the
    fall-back returns no node."""
    if run.opts.latency_runs <= 0:
        return None, None  # no timing, no early choice: the joint flow decides on tolerance
    folder = run.work / "cpu-probe"
    folder.mkdir()
    static = Candidate(STATIC, folder / INT8_CPU_FILE, build_static([], folder))
    dynamic = _dynamic_candidate(run, keep_fp, isa, "dynamic-first")
    _race_candidates(run, [static, dynamic])
    if dynamic.mean_p50_ms >= static.mean_p50_ms:
        return None, dynamic
    dynamic.val = _val_check_candidate(run, dynamic)
    if not dynamic.passed:
        return None, dynamic
    speedup = static.mean_p50_ms / dynamic.mean_p50_ms
    reason = (f"faster here (mean batch-1 p50 {dynamic.mean_p50_ms:.3f} ms, {speedup:.2f}x faster than {STATIC}) "
              f"and within tolerance on val, with no node returned to FP: {STATIC} was not scored, and the "
              f"fall-back served {INT8_TRT_FILE} alone")
    run.say(f"CPU file: {DYNAMIC} ({reason})")
    return (dynamic, {
        "mode": "auto",
        "chosen": DYNAMIC,
        "basis": "latency",
        "reason": reason,
        "candidates": {c.name: c.summary() for c in (static, dynamic)},
    }), dynamic


def _choose_cpu_file(
    run: _Run, static: Candidate, keep_fp: list[str], isa, reuse: Candidate | None = None
) -> tuple[Candidate, dict[str, Any]]:
    """quantize.cpu_file: the static QDQ file or dynamic INT8 (same nodes kept FP), measured here when auto;
    `reuse` is a dynamic graph already built with exactly `keep_fp` (scored on val or not)."""
    chosen, report = choose(
        run.section.cpu_file,
        lambda: static,
        lambda: reuse or _dynamic_candidate(run, keep_fp, isa, "dynamic-candidate"),
        lambda candidate: _val_check_candidate(run, candidate),
        lambda candidates: _race_candidates(run, candidates),
    )
    run.say(f"CPU file: {chosen.name} ({report['reason']})")
    return chosen, report


def _slim_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "attempt": s["attempt"],
            "returned_to_fp": s["returned_to_fp"],
            "excluded": s["excluded"],
            "passed": s["passed"],
            "val": s["val"],
        }
        for s in steps
    ]


def _dynamic(run: _Run) -> dict[str, Any]:
    """ort-dynamic: MatMul/Gemm/Gather weights INT8, activations quantized per batch at run time."""
    from fbcompress.quantize import ort_methods as M
    from fbcompress.quantize.cpu import resolve_reduce_range

    section = run.section
    isa, fp_model, by_design = _source_graph(run)
    folder = run.work / "dynamic"
    folder.mkdir()
    run.say("quantizing (dynamic INT8) ...")
    info = M.quantize_dyn(
        run.src,
        folder / INT8_CPU_FILE,
        section.per_channel,
        resolve_reduce_range(section.reduce_range, isa),
        [*by_design, *section.exclude_nodes],
    )
    info["isa"] = isa.to_dict()
    files = {INT8_CPU_FILE: folder / INT8_CPU_FILE}
    return {
        "files": files,
        "first_files": files,
        "settings": {INT8_CPU_FILE: info},
        "fp_by_design": by_design,
        "fp_by_recipe": list(section.exclude_nodes),
        "fallback": {
            "enabled": False,
            "returned_to_fp": [],
            "steps": [],
            "per_node_error": [],
            "stopped": "not applied to dynamic quantization (its activation ranges change per batch); "
            "keep nodes FP with quantize.exclude_nodes",
        },
    }


# ----------------------------------------------------------------------------------------------------------- steps


def _is_dynamic(settings: dict[str, Any]) -> bool:
    return str(settings.get("format", "")).startswith("dynamic")


def _file_entry(rel: str, path: Path, settings: dict[str, Any], fp32_bytes: int) -> dict[str, Any]:
    """The measured part of the file's report entry (`record.QuantizedFile` less role, purpose and runtime)."""
    model = G.load(path)
    dynamic = _is_dynamic(settings)
    graph = G.describe_dynamic(model) if dynamic else G.describe_qdq(model)
    ranges = (
        G.summarize_ranges(G.activation_ranges(model))
        if not dynamic
        else {"tensors": 0, "note": "dynamic: ranges are computed per batch at run time"}
    )
    entry = {
        "bytes": path.stat().st_size,
        "size_vs_fp32": path.stat().st_size / fp32_bytes,
        "constant_bytes_by_dtype": G.initializer_bytes(model),
        "settings": settings,
        "graph": graph,
        "activation_ranges": ranges,
    }
    if "precision" in settings:
        entry["precision_policy"] = precision_policy(settings)
    return entry


def precision_policy(settings: dict[str, Any]) -> PrecisionPolicy:
    """The TensorRT file's mixed precision, as the manifest and the report state it."""
    precision = settings["precision"]
    return PrecisionPolicy(
        quantized="int8 (Q/DQ on MatMul/Gemm inputs)",
        high_precision=precision["high_precision"],
        fp32_ops=precision["fp32_ops"],
        fp32_nodes=precision["fp32_nodes"],
        io_dtypes=precision["io_dtypes"],
        opset=precision["opset"],
        same_as="model.fp16.onnx (convert_fp16's policy)",
        accuracy_scored_on=settings.get("accuracy_check", {}).get("scored_file", INT8_TRT_FILE),
    )


def _purpose(rel: str, settings: dict[str, Any], cpu_file: dict[str, Any] | None) -> dict[str, str]:
    if rel == INT8_TRT_FILE:
        check = settings.get("accuracy_check", {})
        ort = (
            "runs in ONNX Runtime too, but slowly on CPUs (float16 and S8S8 kernels)"
            if check.get("onnxruntime_cpu", "runs") == "runs"
            else f"ONNX Runtime's CPU provider cannot run it ({check.get('error')})"
        )
        return {
            "role": B.ROLE_ONNX_INT8_QDQ,
            "purpose": "TensorRT INT8 engine source: symmetric INT8 Q/DQ on MatMul/Gemm inputs, FP16 elsewhere "
            "except LayerNorm, Softmax and the logits layer (FP32), FP32 inputs/outputs, as model.fp16.onnx "
            "(`fbcompress export --target tensorrt --precision int8` builds from it)",
            "runtime": f"TensorRT (explicit quantization, strongly typed); {ort}",
        }
    isa = settings.get("isa", {})
    how = "dynamic INT8" if _is_dynamic(settings) else f"static QDQ, {isa.get('scheme', 'U8S8')}"
    if cpu_file and cpu_file["basis"] in ("latency", "tolerance"):
        others = " and ".join(n for n in cpu_file["candidates"] if n != cpu_file["chosen"])
        why = {"latency": "faster here", "tolerance": "the other broke the tolerance on val"}[cpu_file["basis"]]
        how += f", chosen over {others}: {why}"
    return {
        "role": B.ROLE_ONNX_INT8,
        "purpose": f"ONNX Runtime on CPU ({how}; for {isa.get('isa', 'x86')}), embeddings stored INT8",
        "runtime": "ONNX Runtime CPUExecutionProvider",
    }


def run_quantize(opts: QuantizeOptions) -> QuantizationReport:
    """Quantize, guard, and (if accepted) write into the bundle. Returns the report (status accepted|rejected)."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.evaluation.latency import machine_info
    from fbcompress.quantize.calibration import calibration_batches

    method = opts.method or opts.section.method
    if method not in METHODS:
        raise FbError(f"--method {method} is not one of {', '.join(METHODS)}")
    if method == "inc":
        from fbcompress.quantize.inc import refuse

        refuse()
    bundle, rel = resolve_source(Path(opts.model))
    root = check_out(opts.out, bundle)
    _check_nodes(list(opts.section.exclude_nodes), G.load(bundle.root / rel))
    dataset = DatasetDir.open(opts.data_dir)
    bundle.verify_tokenizer()
    source_sha = bundle.files[rel]["sha256"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fbcompress-quantize-") as tmp:
        run = _Run(opts, bundle, rel, Path(tmp))
        run.dataset = dataset
        if opts.reference_eval is not None:
            from fbcompress.evaluation.metrics import reusable_eval

            run.fp32[(opts.split, None)] = reusable_eval(
                opts.reference_eval, bundle.root / rel, dataset, opts.split, None
            )
            run.say(f"FP32 reference on {opts.split}: reusing {opts.reference_eval}")
        shutil.copyfile(bundle.root / rel, run.src)  # the live bundle may be swapped by another stage meanwhile
        from fbcompress.core.artifacts import sha256_file

        if sha256_file(run.src) != source_sha:
            raise FbError(f"{bundle.root / rel} changed while being read; try again")
        section = opts.section
        run.say(
            f"calibration data: {section.calibration_batches} batches x {section.calibration_batch_size} "
            "training pairs ..."
        )
        run.batches = calibration_batches(
            run.split_data("train"), section.calibration_batches, section.calibration_batch_size
        )
        produced = {"ort-static": _static, "ort-dynamic": _dynamic}[method](run)
        files: dict[str, Path] = produced["files"]
        # ---- the guard, on --split with every query
        reference = run.reference(opts.split)
        accuracy: dict[str, Comparison] = {}
        breaks: list[str] = []
        if produced["fallback"].get("passed_on_val") is False:
            last = produced["fallback"]["steps"][-1]["val"]
            broken = [measure.describe_breaks(r, v["breaks"]) for r, v in last.items() if v["breaks"]]
            breaks.append(f"on val, {produced['fallback']['stopped']}: " + "; ".join(broken))
        stand_ins: dict[Path, Path] = produced.get("stand_ins", {})
        for rel_q, path in files.items():
            stand_in = stand_ins.get(path)
            run.say(f"guard: scoring {rel_q} on {opts.split}"
                    + (f" (ONNX Runtime cannot run it: {FP32_QDQ_LABEL})" if stand_in else "") + " ...")
            comparison = Comparison(**measure.compare(
                reference,
                run.score(stand_in or path, rel_q, opts.split),
                section.max_auc_drop,
                section.max_rank10_drop,
            ), scored_file=FP32_QDQ_LABEL if stand_in else None)
            accuracy[rel_q] = comparison
            if comparison.breaks:
                breaks.append(measure.describe_breaks(rel_q, [b.model_dump() for b in comparison.breaks]))
        # ---- latency and size
        fp32_bytes = run.src.stat().st_size
        latency: dict[str, Any] = {}
        timed: dict[str, Path] = {ONNX_FILE: run.src}
        if ORT_FILE in bundle.files:
            timed[ORT_FILE] = bundle.root / ORT_FILE
        timed.update(files)
        if produced["fallback"].get("returned_to_fp"):
            timed.update({f"{r} (before fall-back)": p for r, p in produced["first_files"].items()})
        runnable = {name: path for name, path in timed.items() if path not in stand_ins}  # ORT cannot time the rest
        if opts.latency_runs > 0:
            # all files in alternating blocks: timed one after the other, a slow spell of a shared VM (p90 4x p50
            # seen here) decided which of two files within 20% of each other looked faster
            run.say(f"latency of {len(runnable)} files ({opts.latency_runs} runs x text {measure.LATENCY_TEXTS}, "
                    "in alternating blocks) ...")
            latency = measure.race(runnable, run.spec, run.max_positions, opts.latency_runs)
        report = _report(
            run, method, produced, files, reference, accuracy, breaks, latency, fp32_bytes, source_sha, machine_info()
        )
        report.size = {name: path.stat().st_size for name, path in timed.items()}
        has_encoder = encoder_record(bundle.manifest) is not None  # a pixel model's report has no encoder section
        if breaks:
            report.status = "rejected"
            report.message = (
                "quantize guard: " + "; ".join(breaks) + f"; nothing was written to {root} "
                "(the FP32 bundle is unchanged)"
            )
            if has_encoder:
                report.image_encoder = ImageEncoderQuantization(
                    status="skipped", reason="not tried: the scorer's INT8 was rejected and nothing is written")
            report.seconds = round(time.perf_counter() - started, 1)
            return report
        report.image_encoder, encoder_file = guard_encoder(run, run.work) if has_encoder else (None, None)
        extra = {IMAGE_ENCODER_INT8_FILE: encoder_file} if encoder_file is not None else {}
        report.status = "accepted"
        report.seconds = round(time.perf_counter() - started, 1)
        _write_bundle(run, root, files, report, extra)
        report.written = sorted([*files, *extra, QUANTIZATION_JSON, QUANTIZATION_MD])
        return report


def _report(
    run: _Run,
    method: str,
    produced: dict[str, Any],
    files: dict[str, Path],
    reference: dict[str, Any],
    accuracy: dict[str, Comparison],
    breaks: list[str],
    latency: dict[str, Any],
    fp32_bytes: int,
    source_sha: str,
    machine: dict[str, Any],
) -> QuantizationReport:
    from fbcompress.quantize.calibration import describe_batches
    from fbcompress.quantize.cpu import detect_isa

    section = run.section
    entries = {}
    for rel_q, path in files.items():
        settings = produced["settings"].get(rel_q, {})
        entries[rel_q] = QuantizedFile(
            **_purpose(rel_q, settings, produced.get("cpu_file")),
            **_file_entry(rel_q, path, settings, fp32_bytes),
        )
    fallback = dict(produced["fallback"])
    cost = {}
    for rel_q in files if fallback.get("returned_to_fp") else []:
        before, after = latency.get(f"{rel_q} (before fall-back)"), latency.get(rel_q)
        if before and after:
            cost[rel_q] = {
                f"text {a['text']}": {
                    "p50_ms_before": b["p50_ms"],
                    "p50_ms_after": a["p50_ms"],
                    "added_ms": a["p50_ms"] - b["p50_ms"],
                }
                for b, a in zip(before, after, strict=True)
            }
    fallback["latency_cost"] = cost
    calibration = {"split": "train", "method": section.calibration_method, **describe_batches(run.batches)}
    if section.calibration_method == "Percentile":
        calibration["percentile"] = section.percentile
    return QuantizationReport(
        status="pending",
        method=method,
        bundle=str(run.bundle.root),
        source=SourceFile(
            file=ONNX_FILE,
            sha256=source_sha,
            bytes=fp32_bytes,
            weights_sha256=run.bundle.manifest.get("source", {}).get("weights_sha256"),
        ),
        recipe=RecipeUsed(source=run.opts.recipe_source, quantize=section.model_dump(mode="json")),
        machine=QuantizationMachine(**machine, int8=detect_isa().to_dict()),
        calibration=Calibration(**calibration),
        files=entries,
        kept_fp=KeptFp(
            by_design=produced["fp_by_design"],
            by_recipe=produced["fp_by_recipe"],
            by_fallback=fallback.get("returned_to_fp", []),
        ),
        fallback=Fallback(**fallback),
        cpu_file=produced.get("cpu_file"),
        accuracy=AccuracySection(
            split=run.opts.split,
            fp32=measure.headline(reference),
            tolerance=Tolerance(max_auc_drop=section.max_auc_drop, max_rank10_drop=section.max_rank10_drop),
            files={rel_q: c.model_copy(update={"split": None}) for rel_q, c in accuracy.items()},
            data=str(run.dataset.root),
            synthetic=bool(run.dataset.meta.get("synthetic", False)),
            note=_accuracy_note(
                produced["settings"].get(INT8_TRT_FILE, {}), files.get(INT8_TRT_FILE) in produced.get("stand_ins", {})
            ),
        ),
        latency=LatencySection(
            runtime="onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, default threads; all files timed in "
            "alternating blocks of 10 runs",
            batch=1,
            runs=run.opts.latency_runs,
            warmup=10,
            models=latency,
            not_timed={
                rel_q: "ONNX Runtime's CPU provider cannot run it: "
                + produced["settings"][rel_q].get("accuracy_check", {}).get("error", "?")
                for rel_q, path in files.items()
                if path in produced.get("stand_ins", {})
            },
        ),
        size={ONNX_FILE: fp32_bytes, **{rel_q: e.bytes for rel_q, e in entries.items()}},
        comparisons={"modelopt": {"ran": False, "reason": MODELOPT_NOT_RUN}},
        breaks=breaks,
    )


def _accuracy_note(trt: dict[str, Any], stand_in: bool) -> str:
    if "accuracy_check" not in trt:
        return "every file is scored with ONNX Runtime on CPU"
    if stand_in:
        return f"every file is scored with ONNX Runtime on CPU, except: {trt['accuracy_check']['note']}"
    return (
        f"every file is scored with ONNX Runtime on CPU; for {INT8_TRT_FILE} that simulates TensorRT's arithmetic "
        "(same Q/DQ scales, FP16 outside the quantized GEMMs)"
    )


def _manifest_entry(rel: str, report: QuantizationReport, sha: str) -> dict[str, Any]:
    entry = report.files[rel]
    acc = report.accuracy.files[rel]
    cases = [
        {
            "batch": c.batch,
            "text": c.text,
            "p50_ms": c.p50_ms,
            "p90_ms": c.p90_ms,
            "p99_ms": c.p99_ms,
            "pairs_per_s": c.pairs_per_s,
        }
        for c in report.latency.models.get(rel, [])
    ]
    out: dict[str, Any] = {
        "role": entry.role,
        "format": "onnx",
        "precision": "int8",
        "derived_from": ONNX_FILE,
        "purpose": entry.purpose,
        "runtime": entry.runtime,
        "method": report.method,
        "source_weights_sha256": report.source.weights_sha256,
        "source_sha256": report.source.sha256,
        "quantization": {
            "settings": entry.settings,
            "quantized_nodes": len(entry.graph["quantized_nodes"]),
            "kept_fp": report.kept_fp.model_dump(mode="json"),
            "report": QUANTIZATION_JSON,
        },
        "accuracy": {
            "split": report.accuracy.split,
            "auc": acc.int8["auc"],
            "accuracy": acc.int8["accuracy"],
            "fp32_auc": acc.fp32["auc"],
            "auc_drop": -acc.deltas["auc"],
            "deltas": acc.deltas,
            "tolerance": report.accuracy.tolerance.model_dump(mode="json"),
            "passed": acc.passed,
        },
        "size_vs_fp32": entry.size_vs_fp32,
        "sha256_at_quantize": sha,
    }
    if entry.precision_policy is not None:
        out["high_precision"] = entry.precision_policy.high_precision
        out["precision_policy"] = entry.precision_policy.model_dump(mode="json")
        check = entry.settings.get("accuracy_check", {})
        out["accuracy"]["scored_file"] = acc.scored_file or rel
        out["accuracy"]["onnxruntime_cpu"] = check.get("onnxruntime_cpu")
        if check.get("error"):
            out["accuracy"]["onnxruntime_cpu_error"] = check["error"]
    if cases:
        out["latency"] = {
            "device": "cpu (onnxruntime CPUExecutionProvider)",
            "runs": report.latency.runs,
            "warmup": 10,
            "machine": report.machine.model_dump(mode="json"),
            "cases": cases,
        }
    return out


def _encoder_entry(report: QuantizationReport, identity: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's record of `image_encoder.int8.onnx` (what `export` checks before building its engine)."""
    record = report.image_encoder
    assert record is not None and record.accuracy is not None
    acc = record.accuracy
    return {
        "role": B.ROLE_IMAGE_ENCODER, "format": "onnx", "precision": "int8", "derived_from": IMAGE_ENCODER_FILE,
        "encoder": identity, "runtime": "TensorRT (strongly typed INT8 engine) or ONNX Runtime; offline",
        "purpose": "the image encoder in INT8: catalogue images -> patch features, admitted by the end-to-end guard",
        "quantization": {"settings": record.settings, "calibration_images": record.calibration_images,
                         "report": QUANTIZATION_JSON},
        "accuracy": {"split": acc.split or report.accuracy.split, "scored": acc.scored_file, "auc": acc.int8["auc"],
                     "fp32_auc": acc.fp32["auc"], "auc_drop": -acc.deltas["auc"], "deltas": acc.deltas,
                     "tolerance": report.accuracy.tolerance.model_dump(mode="json"), "passed": acc.passed},
        "features": record.features, "throughput": record.throughput,
    }


def _write_bundle(run: _Run, root: Path, files: dict[str, Path], report: QuantizationReport,
                  encoder_files: dict[str, Path] | None = None) -> None:
    """Add the INT8 files and reports; the INT8 image encoder when its guard held, and otherwise drop an earlier
    run's (and the engine built from it): it was admitted against scores this run no longer stands behind."""
    from fbcompress.core.artifacts import sha256_file
    from fbcompress.export.build_kit import image_encoder_engine
    from fbcompress.export.readme import render_readme
    from fbcompress.quantize.report import render_markdown

    encoder_files = encoder_files or {}

    source = run.bundle.manifest.get("source", {})
    with B.update_bundle(root, source) as writer:
        if not writer.has_verified(run.rel):
            raise FbError(
                f"{root / run.rel} changed while quantizing (another export?): nothing written; run quantize again"
            )
        for rel_q, path in files.items():
            shutil.copyfile(path, writer.path(rel_q, report.files[rel_q].role))
            writer.add_model(rel_q, _manifest_entry(rel_q, report, sha256_file(path)))
        for stale in (IMAGE_ENCODER_INT8_FILE, image_encoder_engine("int8")):
            writer.remove(stale)
        for rel_q, path in encoder_files.items():
            shutil.copyfile(path, writer.path(rel_q, B.ROLE_IMAGE_ENCODER))
            writer.add_model(rel_q, _encoder_entry(report, encoder_record(writer.manifest)))
        writer.path(QUANTIZATION_JSON, ROLE_REPORT).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        writer.path(QUANTIZATION_MD, ROLE_REPORT).write_text(render_markdown(report))
        writer.manifest["quantization"] = {
            "at": B.now_iso(),
            "method": report.method,
            "fp32_source": ONNX_FILE,
            "files": {rel_q: report.files[rel_q].purpose for rel_q in files},
            "image_encoder": report.image_encoder.model_dump(mode="json", include={"status", "reason", "file"})
            if report.image_encoder else None,
            "fp32_files_kept": [r for r in (ONNX_FILE, ORT_FILE) if r in writer.manifest.get("models", {})],
            "report": {"json": QUANTIZATION_JSON, "markdown": QUANTIZATION_MD},
        }
        writer.manifest["history"] = [
            *writer.manifest.get("history", []),
            {
                "at": B.now_iso(),
                "command": f"fbcompress quantize --method {report.method}",
                "written": sorted([*files, *encoder_files, QUANTIZATION_JSON, QUANTIZATION_MD]),
            },
        ][-50:]
        writer.finalize(render_readme)
