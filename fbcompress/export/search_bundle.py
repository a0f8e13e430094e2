"""`fbcompress export` of a dual tower: the search bundle, whose online part is the query encoder.

What a serving team gets (`manifest.json` `kind: search`): `query_encoder.onnx` (the query tower: three text inputs,
segment Q, → `embedding` [B, E], L2-normalised; batch and text dynamic), the tokenizer, the embedding space it
embeds into (an index of that space is what it may search: `fbcompress index build` with the retriever), shape
profiles sized for queries (`export.query_profiles`), and a README with the online path: tokenize → encoder → ANN →
optional re-rank with the cross-encoder bundle. `--target tensorrt` adds `query_encoder.fp16.onnx` and the engine
build kit (engines too where TensorRT and a GPU are), `--target triton` a Triton model; `fbcompress quantize` adds
the INT8 files (quantize/query_encoder.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fbcompress.bundle import store as B
from fbcompress.bundle.names import (
    BUILD_SCRIPT,
    QUERY_ENCODER_FILE,
    QUERY_ENCODER_FP16_FILE,
    QUERY_ENCODER_INT8_FILE,
    QUERY_ENCODER_INT8_TRT_FILE,
    SEARCH_KIND,
    TIMING_CACHE,
)
from fbcompress.bundle.shapes import Profile, resolve_profiles
from fbcompress.core.errors import FbError
from fbcompress.modeling.dual_tower import QUERY_SEGMENT, DualTower, TowerSpec

ROLE_QUERY_ENCODER = "query-encoder"
ROLE_QUERY_ENCODER_FP16 = "query-encoder-fp16"
ROLE_QUERY_ENCODER_INT8 = "query-encoder-int8"
ROLE_QUERY_ENCODER_INT8_QDQ = "query-encoder-int8-qdq"
ENGINE_SOURCES = {"fp32": QUERY_ENCODER_FILE, "fp16": QUERY_ENCODER_FP16_FILE, "int8": QUERY_ENCODER_INT8_TRT_FILE}
LATENCY_TEXTS = (6, 16)  # a typical query (6 wordpieces with [CLS]/[SEP]) and the profiles' usual max


def engine_file(precision: str) -> str:
    return f"query_encoder.{precision}.plan"


def is_search_bundle(manifest: dict[str, Any]) -> bool:
    return manifest.get("kind") == SEARCH_KIND


def query_io(dim: int) -> tuple[list[dict], list[dict]]:
    """The query encoder's inputs and output as the manifest (and Triton) describe them."""
    docs = {"input_ids": "WordPiece ids of `[CLS] query [SEP]`, right-padded with [PAD]=0 to the batch's longest",
            "attention_mask": "1 for real tokens, 0 for padding",
            "token_type_ids": f"{QUERY_SEGMENT} (segment Q) on every position"}
    inputs = [{"name": name, "dtype": "int64", "shape": ["batch", "text"], "description": doc}
              for name, doc in docs.items()]
    outputs = [{"name": "embedding", "dtype": "float32", "shape": ["batch", dim],
                "description": "L2-normalised query embedding: inner product with a product embedding = cosine"}]
    return inputs, outputs


def query_preprocessing(spec: TowerSpec) -> dict[str, Any]:
    return {"query": {
        "tokenizer": f"BERT WordPiece ({B.TOKENIZER_DIR}/vocab.txt, tokenizer.json), lower case",
        "format": "[CLS] query [SEP]; whitespace collapsed; an empty query is refused",
        "max_query_len": spec.max_query_len,
        "truncation": f"truncate to {spec.max_query_len} wordpieces, [CLS]/[SEP] included",
        "padding": "right-pad with [PAD] (id 0) to the longest query of the batch only (VSL)",
        "token_type_ids": QUERY_SEGMENT,
    }, "product": {
        "text": f"the product's {spec.product_text} with segment T (0), then its 64 image patches (segment I)",
        "encoded_by": "the retriever's product tower, offline: `fbcompress index build`",
    }}


def open_tower_checkpoint(model_dir: Path) -> tuple[DualTower, Any]:
    """The dual tower of a retriever or query-encoder checkpoint, its embedding space resolved."""
    import dataclasses

    from fbcompress.modeling.checkpoint import load_tower

    tower, ckpt = load_tower(model_dir, "cpu")
    tower.tower = dataclasses.replace(tower.tower, space=tower.tower.space or f"retriever:{ckpt.weights_sha256}")
    return tower, ckpt


def run_search_export(opts: Any) -> dict[str, Any]:
    """One export target of a dual-tower checkpoint into the search bundle `opts.out` (see the module doc)."""
    from fbcompress.export.pipeline import _source, _tokenizer_files, _tokenizer_info

    if opts.image_encoder is not None or opts.data_dir is not None:
        raise FbError("--data and --image-encoder apply to a scorer's export; a query encoder's accuracy is measured "
                      "by `fbcompress quantize` and `check` against an index")
    tower, ckpt = open_tower_checkpoint(opts.model_dir)
    profiles = resolve_profiles(opts.export.query_profiles, tower.tower.max_query_len, "export.query_profiles")
    precisions = _engine_precisions(opts)
    tokenizer_files = _tokenizer_files(ckpt.directory)
    summary: dict[str, Any] = {"files_written": [], "parity": {}}
    with B.update_bundle(opts.out, _source(ckpt), replace=opts.force) as writer:
        if writer.manifest.get("patch_spec") is not None and not is_search_bundle(writer.manifest):
            raise FbError(f"{opts.out} is a scorer bundle: export the query encoder into a folder of its own (e.g. "
                          f"{opts.out}/search)")
        inputs, outputs = query_io(tower.embedding_dim)
        writer.manifest.update({
            "kind": SEARCH_KIND,
            "tower": tower.tower.to_dict(),
            "inputs": inputs,
            "outputs": outputs,
            "query_profiles": [p.to_dict() for p in profiles],
            "preprocessing": query_preprocessing(tower.tower),
            "tokenizer": _tokenizer_info(ckpt.directory, tokenizer_files),
            "recipe": {"source": opts.recipe_source, "export": opts.export.model_dump(mode="json")},
        })
        for path in tokenizer_files:
            shutil.copy2(path, writer.path(f"{B.TOKENIZER_DIR}/{path.name}", B.ROLE_TOKENIZER))
        _preprocessing(writer, ckpt.directory, tokenizer_files, tower.tower.max_query_len)
        if opts.target == "onnx" or not (writer.dir / QUERY_ENCODER_FILE).is_file() or not writer.has_verified(
                QUERY_ENCODER_FILE):
            _onnx(tower, writer, opts, summary)
        if opts.target == "tensorrt":
            _tensorrt(writer, opts, profiles, precisions, summary)
        if opts.target == "triton":
            _triton(writer, opts, profiles, summary)
        writer.manifest["history"] = [*writer.manifest.get("history", []), {
            "at": B.now_iso(), "command": f"fbcompress export --target {opts.target}", "precision": opts.precision,
            "written": sorted(set(summary["files_written"]))}][-50:]
        from fbcompress.export.search_readme import render_search_readme

        writer.finalize(render_search_readme)
    summary.update({"bundle": str(opts.out), "target": opts.target, "source": _source(ckpt), "kind": SEARCH_KIND,
                    "files_written": sorted(set(summary["files_written"]))})
    return summary


def _preprocessing(writer: B.BundleWriter, ckpt_dir: Path, tokenizer_files: list[Path], query_len: int) -> None:
    """`preprocess.py` for queries (export/preprocessing.py), and the fast tokenizer's tokenizer.json it reads."""
    from fbcompress.export.preprocessing import MODULE_FILE, ROLE_PREPROCESSING, render_preprocess_module
    from fbcompress.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(ckpt_dir)
    if not any(path.name == "tokenizer.json" for path in tokenizer_files):
        tokenizer.backend_tokenizer.save(str(writer.path(f"{B.TOKENIZER_DIR}/tokenizer.json", B.ROLE_TOKENIZER)))
    writer.path(MODULE_FILE, ROLE_PREPROCESSING).write_text(
        render_preprocess_module(None, int(tokenizer.pad_token_id), query_len))
    writer.manifest["preprocessing"]["module"] = MODULE_FILE


def _engine_precisions(opts: Any) -> list[str]:
    if opts.precision and opts.target == "onnx":
        raise FbError("--precision applies to --target tensorrt (and triton); the ONNX export is fp32")
    if opts.target != "tensorrt":
        return []
    precisions = [opts.precision] if opts.precision else list(dict.fromkeys(opts.export.precisions))
    if "int8" in precisions:
        existing = B.Bundle.open(opts.out) if (opts.out / B.MANIFEST).is_file() else None
        if existing is None or QUERY_ENCODER_INT8_TRT_FILE not in existing.files:
            if opts.precision == "int8":
                raise FbError(f"an int8 query-encoder engine needs {QUERY_ENCODER_INT8_TRT_FILE} in {opts.out}: run "
                              "`fbcompress quantize` into this bundle first, or ask for --precision fp16")
            precisions.remove("int8")  # not quantized (yet): the recipe's int8 engine waits for quantize
    return precisions


def _onnx(tower: DualTower, writer: B.BundleWriter, opts: Any, summary: dict[str, Any]) -> None:
    from fbcompress.export.onnx_export import graph_io
    from fbcompress.export.query_encoder import export_query_encoder

    path = writer.path(QUERY_ENCODER_FILE, ROLE_QUERY_ENCODER)
    parity = export_query_encoder(tower, tower.tower, path, opts.opset or opts.export.opset)
    entry: dict[str, Any] = {"role": ROLE_QUERY_ENCODER, "format": "onnx", "precision": "fp32", "parity": parity,
                             "io": graph_io(path), "source_weights_sha256": writer.source["weights_sha256"]}
    latency = _latency(path, opts.latency_runs)
    if latency:
        entry["latency"] = latency
    writer.add_model(QUERY_ENCODER_FILE, entry)
    summary["parity"][QUERY_ENCODER_FILE] = parity
    summary["files_written"].append(QUERY_ENCODER_FILE)


def _latency(path: Path, runs: int) -> dict[str, Any] | None:
    """p50/p90/p99 of ONNX Runtime (CPU) at batch 1 and 8 and LATENCY_TEXTS query lengths (real tokens, no padding)."""
    import numpy as np

    from fbcompress.evaluation.latency import machine_info, time_callable
    from fbcompress.runtime.onnxruntime import cpu_session

    if runs <= 0:
        return None
    session = cpu_session(path)
    cases = []
    for batch in (1, 8):
        for text in LATENCY_TEXTS:
            ids = np.random.default_rng(0).integers(1000, 2000, (batch, text))
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.full_like(ids, QUERY_SEGMENT)}
            stats = time_callable(lambda feed=feed: session.run(None, feed), runs=runs, warmup=10)
            cases.append({"batch": batch, "text": text, "p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms,
                          "p99_ms": stats.p99_ms})
    return {"device": "cpu (ONNX Runtime)", "runs": runs, "warmup": 10, "machine": machine_info(), "cases": cases}


def _tensorrt(writer: B.BundleWriter, opts: Any, profiles: list[Profile], precisions: list[str],
              summary: dict[str, Any]) -> None:
    """The FP16 source graph, the build kit (one strongly typed trtexec line per precision), and the engines where
    TensorRT and a GPU are here (`--engines require` makes their absence an error)."""
    from fbcompress.core.errors import BackendUnavailable
    from fbcompress.export.build_kit import ROLE_BUILD_SCRIPT, EngineBuild, render_script
    from fbcompress.export.onnx_export import convert_fp16

    if not precisions:
        raise FbError("no TensorRT precision left to build (int8 waits for `fbcompress quantize`): give --precision")
    if "fp16" in precisions:
        info = convert_fp16(writer.dir / QUERY_ENCODER_FILE, writer.path(QUERY_ENCODER_FP16_FILE,
                                                                         ROLE_QUERY_ENCODER_FP16))
        writer.add_model(QUERY_ENCODER_FP16_FILE, {"role": ROLE_QUERY_ENCODER_FP16, "format": "onnx",
                                                   "precision": "fp16", "conversion": info,
                                                   "derived_from": QUERY_ENCODER_FILE})
        summary["files_written"].append(QUERY_ENCODER_FP16_FILE)
    workspace = int(opts.export.workspace_mib)
    builds = [EngineBuild(p, ENGINE_SOURCES[p], engine_file(p)) for p in precisions]  # text inputs only: no spec
    script = writer.path(BUILD_SCRIPT, ROLE_BUILD_SCRIPT)
    script.write_text(render_script(builds, profiles, None, workspace))
    script.chmod(0o755)
    summary["files_written"].append(BUILD_SCRIPT)
    built, why_not = [], None
    try:
        from fbcompress.runtime.tensorrt_env import require_tensorrt

        require_tensorrt(_device_index(opts.device))
    except BackendUnavailable as exc:
        why_not = str(exc)
        if opts.engines == "require":
            raise
    if why_not is None:
        built = _build_engines(writer, opts, profiles, precisions, summary)
    writer.manifest["tensorrt_build_kit"] = {
        "script": BUILD_SCRIPT, "engines": [{"precision": b.precision, "onnx": b.onnx, "plan": b.plan,
                                             "trtexec": b.command(profiles, None, workspace)} for b in builds],
        "profiles": [p.to_dict() for p in profiles], "engines_built_here": bool(built), "not_built_because": why_not}
    summary["tensorrt_build_kit"] = writer.manifest["tensorrt_build_kit"]


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _build_engines(writer: B.BundleWriter, opts: Any, profiles: list[Profile], precisions: list[str],
                   summary: dict[str, Any]) -> list[str]:
    from fbcompress.export.tensorrt_build import build_engine

    cache = writer.path(TIMING_CACHE, B.ROLE_TIMING_CACHE)
    built = []
    for precision in precisions:
        plan = engine_file(precision)
        info = build_engine(writer.dir / ENGINE_SOURCES[precision], writer.path(plan, B.ROLE_ENGINE),
                            [p.tensor_shapes(None) for p in profiles], cache,
                            writer.path(f"query_encoder.{precision}.build.log", B.ROLE_BUILD_LOG),
                            int(opts.export.workspace_mib), device_index=_device_index(opts.device))
        writer.add_model(plan, {"role": B.ROLE_ENGINE, "format": "tensorrt-plan", "precision": precision,
                                "derived_from": ENGINE_SOURCES[precision], "tensorrt": info,
                                "profiles": [p.to_dict() for p in profiles]})
        built.append(plan)
        summary["files_written"] += [plan, TIMING_CACHE]
    return built


def _triton(writer: B.BundleWriter, opts: Any, profiles: list[Profile], summary: dict[str, Any]) -> None:
    """`triton/`: `<name>_query` (the query encoder's engine where one was built, else its ONNX graph on Triton's ONNX
    Runtime backend, or `--triton-scorer python`: ONNX Runtime inside the Python backend), `<name>_query_preprocess`
    (the bundle's preprocess.py) and `<name>_query_ensemble` (query bytes -> embedding); `triton_client.py`."""
    from fbcompress.export.onnx_export import graph_io
    from fbcompress.export.pipeline import triton_model_source, write_triton_model
    from fbcompress.export.triton_ensemble import write_python_scorer, write_query_ensemble, write_serving_files

    source = triton_model_source(writer.dir, opts, QUERY_ENCODER_FILE, QUERY_ENCODER_INT8_FILE,
                                 ("int8", "fp16", "fp32"))
    root = writer.replace_tree("triton", B.ROLE_TRITON)
    name = f"{opts.triton_name}_query"
    max_batch, preferred = max(p.batch[2] for p in profiles), [p.batch[1] for p in profiles]
    delay = int(opts.export.triton_max_queue_delay_us)
    io = graph_io(writer.dir / QUERY_ENCODER_FILE)
    if opts.triton_scorer == "python":
        model = write_python_scorer(root, name, writer.dir / source, io, max_batch, preferred, delay)
    else:
        model = write_triton_model(writer, opts, summary, root, name, source, QUERY_ENCODER_FILE, max_batch,
                                   preferred, list(range(len(profiles))))
    ensemble = write_query_ensemble(root, name, writer.dir, io, max_batch, preferred, delay)
    kit = write_serving_files(writer, None, ensemble["model_name"])
    writer.manifest["triton"] = {"repository": "triton", **model, "scorer_backend": opts.triton_scorer,
                                 "ensemble": ensemble}
    summary["triton"] = writer.manifest["triton"]
    summary["files_written"] += [f"triton/{ensemble['model_name']}", *kit]
