"""`fbcompress export`: checkpoint → bundle (ONNX, TensorRT engines, Triton repository), gated by parity and AUC.

Order of work, so that a failure never leaves a half-written bundle:
1. everything that can be checked without writing (checkpoint hash, recipe profiles vs the model, TensorRT and a
   GPU for engines, the INT8 QDQ source, the data dir) is checked first;
2. the bundle is staged in a temporary directory (other stages' files carried over) and only renamed into place
   after every gate passed (ONNX parity <= tolerance, AUC drop <= tolerance, engines built).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbcompress.bundle import store as B
from fbcompress.bundle.names import (
    FP16_FILE,
    IMAGE_ENCODER_FILE,
    IMAGE_ENCODER_FP16_FILE,
    IMAGE_ENCODER_INT8_FILE,
    INT8_CPU_FILE,
    INT8_TRT_FILE,
    ONNX_FILE,
    ORT_FILE,
    TIMING_CACHE,
)
from fbcompress.bundle.shapes import Profile, input_specs, output_specs, resolve_profiles
from fbcompress.core.errors import FbError
from fbcompress.runtime.tensorrt import device_index

TARGETS = ("onnx", "tensorrt", "triton")
ENGINE_MODES = ("auto", "require")
PRECISIONS = ("fp32", "fp16", "int8")


def engine_file(precision: str) -> str:
    return f"model.{precision}.plan"


def engine_source(precision: str) -> str:
    return {"fp32": ONNX_FILE, "fp16": FP16_FILE, "int8": INT8_TRT_FILE}[precision]


@dataclass
class ExportOptions:
    model_dir: Path
    out: Path
    target: str
    export: Any  # recipes.ExportSection
    recipe_source: str = "defaults"
    opset: int | None = None
    precision: str | None = None
    exporter: str = "torchscript"
    data_dir: Path | None = None
    image_encoder: Path | None = None  # features models: the encoder dir (default: the one `data features` recorded)
    split: str = "test"
    force: bool = False
    timing_cache: Path | None = None
    triton_name: str = "fashionbert"
    triton_kind: str = "gpu"
    triton_scorer: str = "onnxruntime"  # onnxruntime: the platform (or the engine); python: ORT in the Python backend
    device: str = "cuda"
    engines: str = "auto"  # tensorrt target: auto (build where TensorRT + a GPU are here, else the kit) | require
    progress: bool = True
    latency_runs: int = 100  # timed runs per profile's opt shape (design.md: >= 100 after warm-up); 0: skip
    log: Any = field(default=None, repr=False)  # callable(str) for progress lines


class _Ctx:
    """What the steps share: the loaded model, its spec, the staging writer, and the optional eval data."""

    def __init__(self, opts: ExportOptions, model, ckpt, profiles: list[Profile]):
        self.opts = opts
        self.model = model
        self.ckpt = ckpt
        self.spec = model.spec
        self.profiles = profiles
        self.max_positions = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self.writer: B.BundleWriter | None = None
        self.eval_data = None  # (dataset, split data) when --data
        self.reference: dict[str, Any] | None = None  # the checkpoint's own AUC on --data
        self.image_encoder = None  # ImageEncoder for a model that reads features (image_encoder.onnx)
        self.summary: dict[str, Any] = {"files_written": []}

    def say(self, text: str) -> None:
        if self.opts.log:
            self.opts.log(text)

    @property
    def w(self) -> B.BundleWriter:
        assert self.writer is not None
        return self.writer


# -------------------------------------------------------------------------------------------------------- helpers


def _source(ckpt) -> dict[str, Any]:
    return {
        "checkpoint": str(ckpt.directory),
        "kind": ckpt.kind,
        "weights_sha256": ckpt.weights_sha256,
        "recipe": (ckpt.meta.get("recipe") or {}).get("name"),
        "produced_by": ckpt.meta.get("produced_by"),
    }


def _tokenizer_files(ckpt_dir: Path) -> list[Path]:
    from fbcompress.modeling.backbone import TOKENIZER_FILES

    files = [ckpt_dir / name for name in TOKENIZER_FILES if (ckpt_dir / name).is_file()]
    if not any(f.name == "vocab.txt" for f in files):
        raise FbError(f"checkpoint {ckpt_dir} has no vocab.txt: the bundle needs the tokenizer")
    return files


def _tokenizer_info(ckpt_dir: Path, files: list[Path]) -> dict[str, Any]:
    from fbcompress.modeling.backbone import load_tokenizer

    tok = load_tokenizer(ckpt_dir)
    return {
        "dir": B.TOKENIZER_DIR,
        "files": [f"{B.TOKENIZER_DIR}/{f.name}" for f in files],
        "class": type(tok).__name__,
        "vocab_size": int(tok.vocab_size),
        "do_lower_case": bool(getattr(tok, "do_lower_case", True)),
        "pad_token_id": int(tok.pad_token_id),
        "cls_token_id": int(tok.cls_token_id),
        "sep_token_id": int(tok.sep_token_id),
    }


def _evaluate_auc(ctx: _Ctx, scorer) -> dict[str, Any]:
    from fbcompress.evaluation.metrics import evaluate

    dataset, data = ctx.eval_data
    result = evaluate(scorer, dataset, data, ctx.opts.split, tasks=("pairs",), progress=ctx.opts.progress)
    return {"auc": result["auc"], "accuracy": result["accuracy"], "n_pairs": result["n_pairs"]}


def _reference_auc(ctx: _Ctx) -> dict[str, Any] | None:
    if ctx.eval_data is None:
        return None
    if ctx.reference is None:
        from fbcompress.runtime.scoring import TorchScorer

        ctx.say("measuring the checkpoint's AUC (PyTorch) ...")
        scorer = TorchScorer(ctx.model, ctx.ckpt.directory, str(ctx.ckpt.directory), "cpu")
        ctx.reference = _evaluate_auc(ctx, scorer)
    return ctx.reference


def _accuracy_entry(ctx: _Ctx, scorer, gate: float | None, what: str) -> dict[str, Any] | None:
    reference = _reference_auc(ctx)
    if reference is None:
        return None
    ctx.say(f"measuring the AUC of {what} ...")
    got = _evaluate_auc(ctx, scorer)
    drop = reference["auc"] - got["auc"]
    dataset, _ = ctx.eval_data
    entry = {
        "data": str(dataset.root),
        "split": ctx.opts.split,
        "synthetic": bool(dataset.meta.get("synthetic", False)),
        **got,
        "checkpoint_auc": reference["auc"],
        "auc_drop": drop,
        "max_auc_drop": gate,
        "passed": gate is None or abs(drop) <= gate,
    }
    if not entry["passed"]:
        raise FbError(f"{what}: AUC {got['auc']:.4f} vs the checkpoint's {reference['auc']:.4f} (|drop| "
                      f"{abs(drop):.4f} > export.max_auc_drop {gate}); export refused")
    return entry


def _latency(ctx: _Ctx, run: Any, device: str) -> dict[str, Any] | None:
    """p50/p90/p99 of `run(inputs)` at each profile's opt (batch, text), after 10 warm-up calls (design.md
    latency, `evaluation.latency.time_callable`), with the machine record every latency figure carries."""
    from fbcompress.evaluation.latency import machine_info, time_callable
    from fbcompress.export.onnx_export import parity_inputs

    runs = int(ctx.opts.latency_runs)
    if runs <= 0:
        return None
    warmup = 10
    cases = []
    for profile in ctx.profiles:
        batch, text = profile.batch[1], profile.text[1]
        inputs = parity_inputs(ctx.spec, batch, text, ctx.vocab_size)
        stats = time_callable(lambda inputs=inputs: run(inputs), runs=runs, warmup=warmup)
        cases.append({"profile": profile.name, "batch": batch, "text": text, "p50_ms": stats.p50_ms,
                      "p90_ms": stats.p90_ms, "p99_ms": stats.p99_ms,
                      "pairs_per_s": batch / (stats.p50_ms / 1000.0) if stats.p50_ms > 0 else None})
    gpu_index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else None
    return {"device": device, "runs": runs, "warmup": warmup, "machine": machine_info(gpu_index), "cases": cases}


# ---------------------------------------------------------------------------------------------------------- steps


def _onnx_step(ctx: _Ctx) -> None:
    """model.onnx (portable) + model.ort.onnx (fused), both parity-gated and, with --data, AUC-gated."""
    from fbcompress.export.onnx_export import (
        export_onnx,
        measure_parity,
        metadata_for,
        optimize_for_ort,
        parity_grid,
    )
    from fbcompress.runtime.onnxruntime import OrtScorer

    w, opts, export = ctx.w, ctx.opts, ctx.opts.export
    opset = opts.opset or export.opset
    ctx.say(f"exporting ONNX (opset {opset}, {opts.exporter} exporter) ...")
    onnx_path = w.path(ONNX_FILE, B.ROLE_ONNX)
    info = export_onnx(ctx.model, onnx_path, opset, opts.exporter, metadata_for(ctx.spec, w.source))
    ctx.say("ONNX Runtime transformer fusions ...")
    config = ctx.model.config
    ort_path = w.path(ORT_FILE, B.ROLE_ONNX_ORT)
    fusions = optimize_for_ort(onnx_path, ort_path, int(config.num_attention_heads), int(config.hidden_size))
    grid = parity_grid(ctx.max_positions)
    tolerance = float(export.parity_tolerance)
    tokenizer_dir = w.dir / B.TOKENIZER_DIR
    common = {"format": "onnx", "precision": "fp32", "opset": info["opset"], "exporter": info["exporter"],
              "source_weights_sha256": w.source["weights_sha256"], "io": info["io"]}
    for rel, role, extra in (
        (ONNX_FILE, B.ROLE_ONNX, {"runtime": "any ONNX runtime (standard ops only)", "export": info}),
        (ORT_FILE, B.ROLE_ONNX_ORT, {"runtime": "ONNX Runtime (com.microsoft fused ops)", "derived_from": ONNX_FILE,
                                     "fusions": fusions}),
    ):
        scorer = OrtScorer(w.dir / rel, ctx.spec, tokenizer_dir, rel, "cpu")
        ctx.say(f"parity of {rel} vs PyTorch at (batch, text) {grid} ...")
        parity = measure_parity(ctx.model, scorer.logits, ctx.spec, ctx.vocab_size, grid)
        parity.update({"tolerance": tolerance, "runtime": f"onnxruntime {_ort_version()} CPUExecutionProvider",
                       "passed": parity["max_abs_diff"] <= tolerance})
        if not parity["passed"]:
            worst = max(parity["cases"], key=lambda c: c["max_abs_diff"])
            raise FbError(f"{rel}: max |logit diff| vs PyTorch {parity['max_abs_diff']:.3g} > tolerance {tolerance:g} "
                          f"(worst at batch {worst['batch']}, text {worst['text']}); export refused")
        entry = {**common, "role": role, **extra, "parity": parity}
        accuracy = _accuracy_entry(ctx, scorer, float(export.max_auc_drop), rel)
        if accuracy:
            entry["accuracy"] = accuracy
        latency = _latency(ctx, scorer.logits, "cpu (onnxruntime CPUExecutionProvider)")
        if latency:
            entry["latency"] = latency
        w.add_model(rel, entry)
        ctx.summary.setdefault("parity", {})[rel] = parity
        if accuracy:
            ctx.summary.setdefault("accuracy", {})[rel] = accuracy
        ctx.summary["files_written"].append(rel)
    ctx.summary["fusions"] = fusions["fused_operators"]
    ctx.summary["fusion_notes"] = fusions["notes"]


def _image_encoder_step(ctx: _Ctx) -> None:
    """image_encoder.onnx beside the scorer (kept when the bundle's copy is intact and of the same encoder),
    parity-gated like the scorer, and its preprocessing in the manifest."""
    from fbcompress.export.build_kit import image_encoder_engine
    from fbcompress.export.image_encoder_export import (
        export_image_encoder,
        image_encoder_parity,
        image_preprocessing,
    )

    w, encoder = ctx.w, ctx.image_encoder
    identity = encoder.identity.to_dict()
    w.manifest["preprocessing"]["image_encoder"] = image_preprocessing(encoder)
    old = w.manifest.get("models", {}).get(IMAGE_ENCODER_FILE, {})
    if w.has_verified(IMAGE_ENCODER_FILE) and old.get("encoder") == identity:
        ctx.say(f"reusing the bundle's verified {IMAGE_ENCODER_FILE}")
        return
    opset = ctx.opts.opset or ctx.opts.export.opset
    ctx.say(f"exporting {IMAGE_ENCODER_FILE} ({identity['name']}, {identity['mode']} mode, "
            f"{identity['input_size']} px) ...")
    path = w.path(IMAGE_ENCODER_FILE, B.ROLE_IMAGE_ENCODER)
    if w.manifest.get("models", {}).get(IMAGE_ENCODER_INT8_FILE, {}).get("encoder") != identity:
        for stale in (IMAGE_ENCODER_INT8_FILE, image_encoder_engine("int8")):  # from another encoder's quantize
            w.remove(stale)
    info = export_image_encoder(encoder, path, opset)
    tolerance = float(ctx.opts.export.parity_tolerance)
    parity = image_encoder_parity(encoder, path, tolerance)
    if not parity["passed"]:
        raise FbError(f"{IMAGE_ENCODER_FILE}: max relative feature diff vs PyTorch {parity['max_relative_diff']:.3g} > "
                      f"tolerance {tolerance:g}; export refused")
    w.add_model(IMAGE_ENCODER_FILE, {
        "role": B.ROLE_IMAGE_ENCODER, "format": "onnx", "precision": "fp32", "opset": info["opset"],
        "runtime": "any ONNX runtime (standard ops only); offline, per catalogue image", "encoder": identity,
        "encoder_dir": str(encoder.directory) if encoder.directory else None,
        "export": info, "io": info["io"], "parity": parity,
    })
    ctx.summary.setdefault("parity", {})[IMAGE_ENCODER_FILE] = parity
    ctx.summary["files_written"].append(IMAGE_ENCODER_FILE)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _onnx_reusable(ctx: _Ctx) -> bool:
    """Keep an existing model.onnx when it is intact, from this checkpoint, and of the opset asked for."""
    w = ctx.w
    entry = w.manifest.get("models", {}).get(ONNX_FILE)
    if not entry or not w.has_verified(ONNX_FILE) or not w.has_verified(ORT_FILE):
        return False
    if entry.get("source_weights_sha256") != w.source["weights_sha256"]:
        return False
    return not (ctx.opts.opset and int(entry.get("opset", 0)) != ctx.opts.opset)


def _ensure_onnx(ctx: _Ctx) -> None:
    if _onnx_reusable(ctx):
        ctx.say(f"reusing the bundle's verified {ONNX_FILE}")
        return
    _onnx_step(ctx)


def _fp16_source(ctx: _Ctx) -> None:
    from fbcompress.export.onnx_export import convert_fp16, measure_parity, parity_grid
    from fbcompress.runtime.onnxruntime import OrtScorer

    w = ctx.w
    ctx.say("converting to a mixed FP16 graph (LayerNorm, Softmax, logits in FP32) ...")
    info = convert_fp16(w.dir / ONNX_FILE, w.path(FP16_FILE, B.ROLE_ONNX_FP16))
    entry: dict[str, Any] = {"role": B.ROLE_ONNX_FP16, "format": "onnx", "precision": "fp16",
                             "derived_from": ONNX_FILE, "conversion": info,
                             "source_weights_sha256": w.source["weights_sha256"]}
    try:
        scorer = OrtScorer(w.dir / FP16_FILE, ctx.spec, w.dir / B.TOKENIZER_DIR, FP16_FILE, "cpu")
        parity = measure_parity(ctx.model, scorer.logits, ctx.spec, ctx.vocab_size, parity_grid(ctx.max_positions))
        entry["parity"] = {**parity, **_relative_verdict(parity, "fp16"),
                           "runtime": f"onnxruntime {_ort_version()} CPU", "gated": False}
    except FbError as exc:  # some ORT builds lack FP16 CPU kernels; TensorRT is the consumer anyway
        entry["parity"] = {"skipped": str(exc)}
    w.add_model(FP16_FILE, entry)
    ctx.summary["files_written"].append(FP16_FILE)


def _relative_verdict(parity: dict[str, Any], precision: str) -> dict[str, Any]:
    """A reduced-precision file's parity against PyTorch, judged relative to the logits' own spread (informational:
    the accuracy entries, with --data, are what gate)."""
    from fbcompress.export.onnx_export import RELATIVE_TOLERANCE, parity_passes

    return {"relative_tolerance": RELATIVE_TOLERANCE.get(precision), "passed": parity_passes(parity, precision)}


def _tensorrt_step(ctx: _Ctx, precisions: list[str], gpu: dict[str, Any]) -> None:
    from fbcompress.export.build_kit import EngineBuild
    from fbcompress.export.onnx_export import measure_parity, parity_grid
    from fbcompress.export.tensorrt_build import build_engine
    from fbcompress.runtime.tensorrt import TrtScorer

    w, opts = ctx.w, ctx.opts
    # The timing cache: --timing-cache PATH if given, else the bundle's own from an earlier build. It is written
    # as a fresh file (carried-over files are hard links into the live bundle: never write through them).
    carried = w.dir / TIMING_CACHE
    previous = carried.read_bytes() if carried.is_file() else b""
    if opts.timing_cache and opts.timing_cache.is_file():
        previous = opts.timing_cache.read_bytes()
    cache = w.path(TIMING_CACHE, B.ROLE_TIMING_CACHE)
    if previous:
        cache.write_bytes(previous)
    for precision in precisions:
        source = engine_source(precision)
        plan_rel = engine_file(precision)
        log_rel = f"model.{precision}.build.log"
        ctx.say(f"building the TensorRT {precision} engine from {source} ({len(ctx.profiles)} profiles) ...")
        info = build_engine(w.dir / source, w.path(plan_rel, B.ROLE_ENGINE),
                            [p.tensor_shapes(ctx.spec) for p in ctx.profiles], cache,
                            w.path(log_rel, B.ROLE_BUILD_LOG), int(opts.export.workspace_mib),
                            device_index=device_index(opts.device), warn=lambda text: ctx.say(f"warning: {text}"))
        info.update({"profiles": [p.to_dict() for p in ctx.profiles],
                     "trtexec": EngineBuild(precision, source, plan_rel).command(ctx.profiles, ctx.spec,
                                                                                 int(opts.export.workspace_mib))})
        entry: dict[str, Any] = {"role": B.ROLE_ENGINE, "format": "tensorrt-plan", "precision": precision,
                                 "derived_from": source, "tensorrt": info,
                                 "source_weights_sha256": w.source["weights_sha256"]}
        scorer = TrtScorer(w.dir / plan_rel, ctx.spec, w.dir / B.TOKENIZER_DIR, plan_rel, info,
                           f"cuda:{device_index(opts.device)}", precision)
        grid = [(b, t) for b, t in parity_grid(ctx.max_positions) if any(p.fits(b, t) for p in ctx.profiles)]
        parity = measure_parity(ctx.model, scorer.logits, ctx.spec, ctx.vocab_size, grid)
        entry["parity"] = {**parity, **_relative_verdict(parity, precision), "gated": False,
                           "runtime": f"TensorRT {info['version']} on {gpu['gpu']}"}
        accuracy = _accuracy_entry(ctx, scorer, None, plan_rel)
        if accuracy:
            entry["accuracy"] = accuracy
        latency = _latency(ctx, scorer.logits, f"{gpu['gpu']} (TensorRT {info['version']}, incl. host copies)")
        if latency:
            entry["latency"] = {**latency, "gpu": gpu}
        w.add_model(plan_rel, entry)
        ctx.summary.setdefault("parity", {})[plan_rel] = entry["parity"]
        ctx.summary["files_written"] += [plan_rel, log_rel, TIMING_CACHE]
    for build in _encoder_builds(ctx, precisions):
        _image_encoder_engine(ctx, build, cache, gpu)
    if opts.timing_cache:
        from fbcompress.core.artifacts import atomic_write_bytes

        atomic_write_bytes(opts.timing_cache, cache.read_bytes())


def _image_encoder_engine(ctx: _Ctx, build, cache: Path, gpu: dict[str, Any]) -> None:
    """Build one engine of the image encoder and check it against PyTorch on random images (relative to the
    features' scale, informational like the scorer's reduced-precision parity)."""
    from fbcompress.export.image_encoder_export import feature_parity
    from fbcompress.export.tensorrt_build import build_engine
    from fbcompress.runtime.tensorrt import TrtImageEncoder

    w, opts = ctx.w, ctx.opts
    workspace = int(opts.export.workspace_mib)
    log_rel = build.plan.replace(".plan", ".build.log")
    ctx.say(f"building the TensorRT {build.precision} image encoder engine from {build.onnx} ...")
    info = build_engine(w.dir / build.onnx, w.path(build.plan, B.ROLE_ENGINE), [build.shapes()], cache,
                        w.path(log_rel, B.ROLE_BUILD_LOG), workspace, device_index=device_index(opts.device),
                        warn=lambda text: ctx.say(f"warning: {text}"))
    info.update({"profiles": [{"name": "images", "batch": list(build.batch)}],
                 "trtexec": build.command(ctx.profiles, ctx.spec, workspace)})
    engine = TrtImageEncoder(w.dir / build.plan, build.plan, info, f"cuda:{device_index(opts.device)}")
    parity = feature_parity(ctx.image_encoder, engine.features, sorted({build.batch[0], build.batch[1]}))
    w.add_model(build.plan, {
        "role": B.ROLE_ENGINE, "format": "tensorrt-plan", "precision": build.precision, "derived_from": build.onnx,
        "tensorrt": info, "encoder": ctx.image_encoder.identity.to_dict(),
        "parity": {**parity, "gated": False, "runtime": f"TensorRT {info['version']} on {gpu['gpu']}"},
    })
    ctx.summary.setdefault("parity", {})[build.plan] = w.manifest["models"][build.plan]["parity"]
    ctx.summary["files_written"] += [build.plan, log_rel]


def _image_encoder_fp16(ctx: _Ctx) -> None:
    """image_encoder.fp16.onnx, the FP16 encoder engine's source (strongly typed: precision from the graph)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    from fbcompress.export.image_encoder_export import feature_parity, ort_features
    from fbcompress.export.onnx_export import convert_fp16

    w = ctx.w
    ctx.say(f"converting {IMAGE_ENCODER_FILE} to FP16 ...")
    path = w.path(IMAGE_ENCODER_FP16_FILE, B.ROLE_IMAGE_ENCODER)
    info = convert_fp16(w.dir / IMAGE_ENCODER_FILE, path)
    entry: dict[str, Any] = {"role": B.ROLE_IMAGE_ENCODER, "format": "onnx", "precision": "fp16",
                             "derived_from": IMAGE_ENCODER_FILE, "conversion": info,
                             "encoder": ctx.image_encoder.identity.to_dict()}
    try:
        parity = feature_parity(ctx.image_encoder, ort_features(path))
        entry["parity"] = {**parity, "runtime": f"onnxruntime {_ort_version()} CPU", "gated": False}
    except (OrtNotImplemented, Fail) as exc:  # some ORT builds lack FP16 CPU kernels; TensorRT is the consumer
        entry["parity"] = {"skipped": f"onnxruntime CPU cannot run it: {str(exc).splitlines()[0]}"}
    w.add_model(IMAGE_ENCODER_FP16_FILE, entry)
    ctx.summary["files_written"].append(IMAGE_ENCODER_FP16_FILE)


def _encoder_builds(ctx: _Ctx, precisions: list[str]) -> list:
    """The image encoder's engines: FP16 always; INT8 too when the scorer's INT8 is asked for and `quantize` left
    an INT8 encoder (it writes one only when the end-to-end guard held)."""
    from fbcompress.export.build_kit import ImageEncoderBuild

    if ctx.image_encoder is None:
        return []
    identity = ctx.image_encoder.identity
    int8 = ctx.w.manifest["models"].get(IMAGE_ENCODER_INT8_FILE, {})
    admitted = ctx.w.has_verified(IMAGE_ENCODER_INT8_FILE) and int8.get("encoder") == identity.to_dict()
    wanted = ["fp16"] + (["int8"] if "int8" in precisions and admitted else [])
    return [ImageEncoderBuild(p, identity.mode, identity.input_size, identity.grid,
                              tuple(ctx.opts.export.image_encoder_batch)) for p in wanted]


def _engine_sources(ctx: _Ctx, precisions: list[str]) -> None:
    """The TensorRT-ready ONNX graph of each precision: model.onnx is there, model.int8.trt.onnx was checked by the
    precheck, model.fp16.onnx is converted here (and image_encoder.fp16.onnx for a features model)."""
    if "fp16" in precisions:
        _fp16_source(ctx)
    if ctx.image_encoder is not None:
        _image_encoder_fp16(ctx)


def _build_kit_step(ctx: _Ctx, precisions: list[str], not_built: str | None) -> None:
    """build_engines.sh (one trtexec line per precision) and the kit's manifest section; see `build_kit`."""
    from fbcompress.bundle.names import BUILD_SCRIPT
    from fbcompress.export.build_kit import ROLE_BUILD_SCRIPT, EngineBuild, ImageEncoderBuild, render_script

    w = ctx.w
    builds: list[EngineBuild | ImageEncoderBuild] = [EngineBuild(p, engine_source(p), engine_file(p))
                                                     for p in precisions]
    builds += _encoder_builds(ctx, precisions)
    workspace = int(ctx.opts.export.workspace_mib)
    script = w.path(BUILD_SCRIPT, ROLE_BUILD_SCRIPT)
    script.write_text(render_script(builds, ctx.profiles, ctx.spec, workspace))
    script.chmod(0o755)
    w.manifest["tensorrt_build_kit"] = {
        "script": BUILD_SCRIPT,
        "engines_built_here": not_built is None,
        "not_built_because": not_built,
        "engines": [{"name": b.selector, "precision": b.precision, "onnx": b.onnx, "plan": b.plan,
                     "trtexec": b.command(ctx.profiles, ctx.spec, workspace)} for b in builds],
    }
    ctx.summary["files_written"].append(BUILD_SCRIPT)
    ctx.summary["tensorrt_build_kit"] = w.manifest["tensorrt_build_kit"]
    if not_built is not None:
        ctx.say(f"engines not built here ({not_built}): the build kit is {w.root / BUILD_SCRIPT}, run it on the "
                "serving GPU")


def write_triton_model(w: B.BundleWriter, opts: Any, summary: dict[str, Any], root: Path, name: str, source: str,
                       graph: str, max_batch: int, preferred: list[int], profiles: list[int]) -> dict[str, Any]:
    """One model of the Triton repository: `source` (a .plan when `profiles`, else ONNX) under `name/1/`, and a
    config.pbtxt made from the I/O of the ONNX `graph` it came from, read back and checked against it (the scorer,
    the image encoder, a search bundle's query encoder)."""
    from fbcompress.export.onnx_export import graph_io
    from fbcompress.export.triton import (
        MODEL_FILES,
        PLATFORM_ONNX,
        PLATFORM_PLAN,
        check_config_matches,
        make_config,
        read_config,
    )

    plan = source.endswith(".plan")
    platform = PLATFORM_PLAN if plan else PLATFORM_ONNX
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    target = model_dir / "1" / MODEL_FILES[platform]
    B.link_or_copy(w.dir / source, target)
    io = graph_io(w.dir / graph)
    kind = "KIND_GPU" if opts.triton_kind == "gpu" else "KIND_CPU"
    text = make_config(name, platform, io["inputs"], io["outputs"], max_batch, preferred_batch_sizes=preferred,
                       max_queue_delay_us=int(opts.export.triton_max_queue_delay_us), kind=kind,
                       profiles=profiles if plan else ())
    (model_dir / "config.pbtxt").write_text(text)
    check_config_matches(read_config(text), io)  # round trip: what we wrote parses back to the graph's I/O
    rel = target.relative_to(w.dir).as_posix()
    source_entry = w.manifest["models"].get(source, {})
    w.add_model(rel, {"role": B.ROLE_TRITON, "format": "tensorrt-plan" if plan else "onnx",
                      "precision": source_entry.get("precision", "fp32"), "copy_of": source,
                      **({"tensorrt": source_entry["tensorrt"]} if plan and "tensorrt" in source_entry else {})})
    summary["files_written"] += [rel, f"triton/{name}/config.pbtxt"]
    return {"model_name": name, "platform": platform, "model_file": rel, "copy_of": source,
            "max_batch_size": max_batch, "instance_kind": kind, "config": f"triton/{name}/config.pbtxt"}


def triton_model_source(bundle: Path, opts: Any, onnx_file: str, int8_file: str, engines: tuple[str, ...],
                        onnx_only: bool = False) -> str:
    """The file Triton serves as the model. On CPUs (`--triton-kind cpu`, or the Python scorer, which is ONNX Runtime
    on CPU) an ONNX graph: `int8_file` (`quantize`'s accuracy-guarded INT8) for `--precision int8`, else `onnx_file`.
    On GPUs the engine of `--precision`, else the first engine built in `engines` order, else `onnx_file` (always,
    with `onnx_only`: a repository that served ONNX keeps doing so when it is refreshed)."""
    if opts.triton_kind == "cpu" or opts.triton_scorer == "python":
        if opts.precision == "int8":
            if not (bundle / int8_file).is_file():
                raise FbError(f"bundle has no {int8_file}: run fbcompress quantize first (on CPUs INT8 is served "
                              "from its ONNX Runtime graph)")
            return int8_file
        if opts.precision not in (None, "fp32"):
            raise FbError(f"--precision {opts.precision} on CPUs: only int8 (quantize's ONNX Runtime graph) or fp32; "
                          "TensorRT engines run on GPUs (--triton-kind gpu --triton-scorer onnxruntime)")
        return onnx_file
    if onnx_only:
        return onnx_file
    if opts.precision:
        if (bundle / engine_file(opts.precision)).is_file():
            return engine_file(opts.precision)
        if opts.precision != "fp32":
            raise FbError(f"bundle has no {engine_file(opts.precision)}: build it first with --target tensorrt "
                          f"--precision {opts.precision}, or omit --precision for the ONNX Runtime model")
        return onnx_file
    return next((engine_file(p) for p in engines if (bundle / engine_file(p)).is_file()), onnx_file)


def _triton_step(ctx: _Ctx, force_onnx: bool = False) -> None:
    from fbcompress.export.onnx_export import graph_io
    from fbcompress.export.triton_ensemble import write_python_scorer, write_scorer_ensemble, write_serving_files

    w, opts = ctx.w, ctx.opts
    source = triton_model_source(w.dir, opts, ORT_FILE if (w.dir / ORT_FILE).is_file() else ONNX_FILE,
                                 INT8_CPU_FILE, ("fp16", "int8", "fp32"), onnx_only=force_onnx)
    plan = source if source.endswith(".plan") else None
    root = w.replace_tree("triton", B.ROLE_TRITON)
    max_batch, preferred = max(p.batch[2] for p in ctx.profiles), [p.batch[1] for p in ctx.profiles]
    delay = int(opts.export.triton_max_queue_delay_us)
    io = graph_io(w.dir / ONNX_FILE)
    if opts.triton_scorer == "python":
        scorer = write_python_scorer(root, opts.triton_name, w.dir / source, io, max_batch, preferred, delay)
    else:
        scorer = write_triton_model(w, opts, ctx.summary, root, opts.triton_name, source, ONNX_FILE, max_batch,
                                    preferred, list(range(len(ctx.profiles))))
    features = ctx.spec.patch_encoder == "features"
    ensemble = write_scorer_ensemble(root, opts.triton_name, w.dir, io, max_batch, preferred, delay, features)
    kit = write_serving_files(w, ensemble["model_name"], None)
    w.manifest["triton"] = {"repository": "triton", **scorer, "scorer_backend": opts.triton_scorer,
                            "ensemble": ensemble}
    ctx.summary["files_written"] += [f"triton/{ensemble['model_name']}", *kit]
    if ctx.image_encoder is not None:
        w.manifest["triton"]["image_encoder"] = _triton_image_encoder(ctx, root, use_plan=plan is not None)
    ctx.summary["triton"] = w.manifest["triton"]


def _triton_image_encoder(ctx: _Ctx, root: Path, use_plan: bool) -> dict[str, Any]:
    """`<name>_image_encoder` beside the scorer in the repository, for the offline encoding of catalogue images (a
    Triton client or an ensemble feeds its output to the scorer). Its engine when the scorer is served from
    engines and one was built here (FP16: INT8 only where the guard admitted it and it was asked for), else the
    ONNX graph (in ORT inside the Python backend with `--triton-scorer python`). The batch axis is the images' in
    both modes, so Triton batches requests along it."""
    from fbcompress.export.build_kit import image_encoder_engine

    w, opts = ctx.w, ctx.opts
    plans = [image_encoder_engine(p) for p in ("int8", "fp16") if opts.precision in (p, None)]
    plan = next((p for p in plans if use_plan and (w.dir / p).is_file()), None)
    _, opt, high = (int(n) for n in opts.export.image_encoder_batch)
    if opts.triton_scorer == "python":  # a Triton with only the Python backend serves every graph in ORT there
        from fbcompress.export.onnx_export import graph_io
        from fbcompress.export.triton_ensemble import write_python_scorer

        graph = w.dir / IMAGE_ENCODER_FILE
        return {**write_python_scorer(root, f"{opts.triton_name}_image_encoder", graph, graph_io(graph), high,
                                      [opt, high], int(opts.export.triton_max_queue_delay_us)),
                "config": f"triton/{opts.triton_name}_image_encoder/config.pbtxt"}
    return write_triton_model(w, opts, ctx.summary, root, f"{opts.triton_name}_image_encoder",
                              plan or IMAGE_ENCODER_FILE, IMAGE_ENCODER_FILE, high, [opt, high], [0])


def _refresh_triton(ctx: _Ctx) -> None:
    """Regenerate an existing Triton repository whose model file this run rewrote, so it never serves a stale copy."""
    triton = ctx.w.manifest.get("triton")
    sources = {triton.get("copy_of"), (triton.get("image_encoder") or {}).get("copy_of")} if triton else set()
    if not sources & set(ctx.summary["files_written"]):
        return
    ctx.say(f"refreshing triton/{triton['model_name']} (its source {triton['copy_of']} was rewritten) ...")
    saved = (ctx.opts.triton_name, ctx.opts.triton_kind, ctx.opts.precision, ctx.opts.triton_scorer)
    ctx.opts.triton_scorer = triton.get("scorer_backend", "onnxruntime")
    ctx.opts.triton_name = triton["model_name"]
    ctx.opts.triton_kind = "cpu" if triton.get("instance_kind") == "KIND_CPU" else "gpu"
    plan = triton["copy_of"] if str(triton["copy_of"]).endswith(".plan") else None
    ctx.opts.precision = plan.split(".")[1] if plan else "int8" if triton["copy_of"] == INT8_CPU_FILE else None
    try:
        _triton_step(ctx, force_onnx=plan is None)
    finally:
        ctx.opts.triton_name, ctx.opts.triton_kind, ctx.opts.precision, ctx.opts.triton_scorer = saved


# ------------------------------------------------------------------------------------------------------------ main


def _precheck(opts: ExportOptions) -> tuple[list[str], dict[str, Any] | None, str | None]:
    """Everything that can fail before any write: target, precision, TensorRT + GPU, the INT8 source.

    Returns the engine precisions, the GPU to build on (None: TensorRT or a GPU is missing) and why it is missing:
    `--engines auto` then writes the build kit alone; `--engines require` refuses (exit 2, nothing written).
    """
    if opts.target not in TARGETS:
        raise FbError(f"--target {opts.target} is not one of {', '.join(TARGETS)}")
    if opts.precision and opts.precision not in PRECISIONS:
        raise FbError(f"--precision {opts.precision} is not one of {', '.join(PRECISIONS)}")
    if opts.precision and opts.target == "onnx":
        raise FbError("--precision applies to --target tensorrt (and triton); the ONNX export is fp32")
    if opts.engines not in ENGINE_MODES:
        raise FbError(f"--engines {opts.engines} is not one of {', '.join(ENGINE_MODES)}")
    precisions: list[str] = []
    gpu = None
    not_built = None
    if opts.target == "tensorrt":
        precisions = [opts.precision] if opts.precision else list(dict.fromkeys(opts.export.precisions))
        if "int8" in precisions:
            existing = B.Bundle.open(opts.out) if (opts.out / B.MANIFEST).is_file() else None
            if existing is None or INT8_TRT_FILE not in existing.files:
                raise FbError(f"an int8 engine needs {INT8_TRT_FILE} (symmetric QDQ) in {opts.out}: run "
                              "`fbcompress quantize` into this bundle first, or ask for --precision fp16")
            existing.verify(INT8_TRT_FILE)
        from fbcompress.core.errors import BackendUnavailable
        from fbcompress.runtime.tensorrt_env import require_tensorrt

        index = device_index(opts.device)
        try:
            _, gpu = require_tensorrt(index)
        except BackendUnavailable as exc:
            if opts.engines == "require":
                raise FbError(f"{exc} (--engines require)") from None
            not_built = str(exc)
    if opts.triton_kind not in ("gpu", "cpu"):
        raise FbError(f"--triton-kind {opts.triton_kind} is not gpu or cpu")
    if opts.triton_scorer not in ("onnxruntime", "python"):
        raise FbError(f"--triton-scorer {opts.triton_scorer} is not onnxruntime or python")
    return precisions, gpu, not_built


def describe_bundle(writer: B.BundleWriter, ckpt_dir: Path, spec, max_positions: int, profiles: list[Profile],
                    export_settings: dict[str, Any], recipe_source: str) -> None:
    """Tokenizer files and the model-independent manifest sections (inputs, preprocessing, profiles, ...).

    Every stage that may create a bundle calls this (export here; `quantize` may too), so a bundle is always
    self-describing whichever stage wrote it first.
    """
    from fbcompress.export.preprocessing import MODULE_FILE, ROLE_PREPROCESSING, render_preprocess_module
    from fbcompress.modeling.backbone import load_tokenizer

    files = _tokenizer_files(ckpt_dir)
    for path in files:
        shutil.copyfile(path, writer.path(f"{B.TOKENIZER_DIR}/{path.name}", B.ROLE_TOKENIZER))
    tokenizer = load_tokenizer(ckpt_dir)
    if not any(path.name == "tokenizer.json" for path in files):  # the preprocessing module reads the fast tokenizer
        tokenizer.backend_tokenizer.save(str(writer.path(f"{B.TOKENIZER_DIR}/tokenizer.json", B.ROLE_TOKENIZER)))
    writer.path(MODULE_FILE, ROLE_PREPROCESSING).write_text(render_preprocess_module(spec,
                                                                                     int(tokenizer.pad_token_id)))
    writer.manifest.update({
        "name": writer.root.name,
        "primary_model": ONNX_FILE,
        "patch_spec": spec.to_dict(),
        "inputs": input_specs(spec),
        "outputs": output_specs(),
        "dynamic_axes": {
            "batch": "any size >= 1 in ONNX; within a profile's [min, max] for TensorRT engines",
            "text": f"1..{max_positions} tokens in ONNX (the tokenizer emits at most {spec.max_text_len}); "
                    "within a profile's [min, max] for TensorRT engines",
        },
        "max_text_len": spec.max_text_len,
        "max_text_positions": max_positions,
        "shape_profiles": [p.to_dict() for p in profiles],
        "preprocessing": {**B.preprocessing(spec), "module": MODULE_FILE},
        "tokenizer": _tokenizer_info(ckpt_dir, files),
        "recipe": {"source": recipe_source, "export": export_settings},
    })


def run_export(opts: ExportOptions) -> dict[str, Any]:
    """Run one export target into the bundle `opts.out`; returns the summary (also what --json writes)."""
    from fbcompress.export.image_encoder_export import resolve_image_encoder
    from fbcompress.export.readme import render_readme
    from fbcompress.modeling.checkpoint import load_model

    precisions, gpu, not_built = _precheck(opts)
    model, ckpt = load_model(opts.model_dir, "cpu")
    profiles = resolve_profiles(opts.export.profiles, int(model.config.max_position_embeddings))
    _tokenizer_files(ckpt.directory)  # fail before writing anything if the tokenizer is missing
    ctx = _Ctx(opts, model, ckpt, profiles)
    if opts.data_dir is not None:
        from fbcompress.data.dataset_dir import DatasetDir
        from fbcompress.data.loader import SplitData
        from fbcompress.modeling.backbone import load_tokenizer

        dataset = DatasetDir.open(opts.data_dir)
        ctx.eval_data = (dataset, SplitData(dataset, opts.split, load_tokenizer(ckpt.directory), ctx.spec))
    existing = B.Bundle.open(opts.out).manifest if (opts.out / B.MANIFEST).is_file() and not opts.force else None
    ctx.image_encoder = resolve_image_encoder(ctx.spec, opts.image_encoder, ctx.eval_data[0] if ctx.eval_data else None,
                                              existing)

    with B.update_bundle(opts.out, _source(ckpt), replace=opts.force) as writer:
        ctx.writer = writer
        describe_bundle(writer, ckpt.directory, ctx.spec, ctx.max_positions, profiles,
                        opts.export.model_dump(mode="json"), opts.recipe_source)
        if opts.target == "onnx":
            _onnx_step(ctx)
        else:
            _ensure_onnx(ctx)
        if ctx.image_encoder is not None:
            _image_encoder_step(ctx)
        if opts.target == "tensorrt":
            _engine_sources(ctx, precisions)
            if gpu is not None:
                _tensorrt_step(ctx, precisions, gpu)
            _build_kit_step(ctx, precisions, not_built)
        if opts.target == "triton":
            _triton_step(ctx)
        else:
            _refresh_triton(ctx)
        manifest = writer.manifest
        manifest["history"] = [*manifest.get("history", []), {
            "at": B.now_iso(), "command": f"fbcompress export --target {opts.target}",
            "precision": opts.precision, "written": sorted(set(ctx.summary["files_written"])),
        }][-50:]
        writer.finalize(render_readme)
    ctx.summary.update({"bundle": str(opts.out), "target": opts.target, "source": _source(ckpt),
                        "files_written": sorted(set(ctx.summary["files_written"]))})
    if ctx.reference:
        ctx.summary["checkpoint_accuracy"] = ctx.reference
    return ctx.summary
