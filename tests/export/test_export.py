"""Export: ONNX parity and dynamic shapes, bundle manifest and hashes, tamper refusal, re-export, Triton, TensorRT.

One smoke checkpoint is exported once per module (seconds); tests that modify a bundle work on a copy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

from fbcompress.core.artifacts import sha256_file
from fbcompress.core.errors import FbError


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def tree_state(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bundle(trained_smoke, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "smoke"
    summary = out.parent / "onnx.json"
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", out, "--data", tiny_data,
                 "--json", summary)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def bundle_copy(bundle, tmp_path) -> Path:
    copy = tmp_path / "exported" / bundle.name
    shutil.copytree(bundle, copy)
    return copy


@pytest.fixture(scope="module")
def torch_model(trained_smoke):
    from fbcompress.modeling.checkpoint import load_model

    model, _ = load_model(trained_smoke)
    return model


# ------------------------------------------------------------------------------------------------ ONNX and parity


def test_manifest_schema_and_hashes(bundle, trained_smoke):
    manifest = json.loads((bundle / "manifest.json").read_text())
    ckpt_meta = json.loads((trained_smoke / "fbcompress.json").read_text())
    assert manifest["format"] == "fbcompress-bundle" and manifest["format_version"] == 1
    assert manifest["source"]["weights_sha256"] == ckpt_meta["sha256"]["model.safetensors"]
    # inputs/outputs with dtypes and dynamic dims
    inputs = {i["name"]: i for i in manifest["inputs"]}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids", "patches"]
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert inputs[name]["dtype"] == "int64" and inputs[name]["shape"] == ["batch", "text"]
    assert inputs["patches"] == {**inputs["patches"], "dtype": "float32", "shape": ["batch", 64, 48]}
    assert manifest["outputs"][0]["name"] == "logits" and manifest["outputs"][0]["shape"] == ["batch", 2]
    # the graph itself agrees with the manifest
    graph_inputs = {i["name"]: i for i in manifest["models"]["model.onnx"]["io"]["inputs"]}
    assert graph_inputs["input_ids"]["shape"] == ["batch", "text"]
    assert graph_inputs["patches"]["shape"] == ["batch", 64, 48]
    # profiles from the smoke recipe, preprocessing as fbcompress.data.patches does it
    assert manifest["shape_profiles"] == [{"name": "online", "batch": [1, 1, 8], "text": [1, 8, 32]}]
    image = manifest["preprocessing"]["image"]
    assert (image["image_size"], image["grid"], image["patch_size"], image["patch_dim"]) == (32, 8, 4, 48)
    assert image["normalize"]["mean"] == 0.5 and image["normalize"]["std"] == 0.5
    assert manifest["preprocessing"]["text"]["max_text_len"] == manifest["max_text_len"] == 32
    assert manifest["tokenizer"]["cls_token_id"] == 101
    # roles, precision
    models = manifest["models"]
    assert models["model.onnx"]["role"] == "onnx" and models["model.onnx"]["precision"] == "fp32"
    assert models["model.ort.onnx"]["role"] == "onnx-ort-optimized"
    assert models["model.onnx"]["opset"] >= 17
    latency = models["model.ort.onnx"]["latency"]
    assert latency["runs"] == 100 and latency["machine"]["usable_cores"] >= 1 and latency["machine"]["versions"]
    assert [(c["batch"], c["text"]) for c in latency["cases"]] == [(1, 8)]  # the profile's opt shape
    assert 0 < latency["cases"][0]["p50_ms"] <= latency["cases"][0]["p99_ms"]
    # every file (but the manifest) is listed with a matching sha256, and nothing else is listed
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"])
    for rel, entry in manifest["files"].items():
        assert sha256_file(bundle / rel) == entry["sha256"], rel
        assert entry["bytes"] == (bundle / rel).stat().st_size
    assert {"README.md", "tokenizer/vocab.txt", "tokenizer/tokenizer.json"} <= set(manifest["files"])
    assert manifest["files"]["tokenizer/vocab.txt"]["role"] == "tokenizer"


def test_parity_and_accuracy_recorded(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rel in ("model.onnx", "model.ort.onnx"):
        parity = manifest["models"][rel]["parity"]
        cases = {(c["batch"], c["text"]) for c in parity["cases"]}
        assert cases == {(b, t) for b in (1, 8) for t in (1, 8, 64)}  # smoke has 64 text positions
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == 1e-4
        accuracy = manifest["models"][rel]["accuracy"]
        assert abs(accuracy["auc_drop"]) <= 0.001 and accuracy["passed"]
        assert accuracy["auc"] == pytest.approx(accuracy["checkpoint_auc"], abs=1e-3)
    fusions = manifest["models"]["model.ort.onnx"]["fusions"]
    assert fusions["fused_operators"].get("SkipLayerNormalization", 0) > 0
    assert fusions["fused_operators"].get("Attention", 0) == 2  # one per layer: the TorchScript graph fuses
    assert fusions["fusion_statistics"]["EmbedLayerNormalization"] == 0
    assert any("EmbedLayerNormalization" in note for note in fusions["notes"])
    summary = json.loads((bundle.parent / "onnx.json").read_text())
    assert summary["parity"]["model.onnx"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("rel", ["model.onnx", "model.ort.onnx"])
def test_dynamic_shapes_match_pytorch(bundle, torch_model, rel):
    from fbcompress.export.onnx_export import parity_inputs, torch_logits
    from fbcompress.runtime.scoring import open_scorer

    scorer = open_scorer(bundle / rel)
    assert scorer.backend == "onnxruntime-cpu"
    for batch, text in [(1, 1), (2, 2), (3, 5), (8, 64), (16, 3), (5, 33)]:
        inputs = parity_inputs(torch_model.spec, batch, text, torch_model.config.vocab_size, seed=7)
        got = scorer.logits(inputs)
        assert got.shape == (batch, 2) and got.dtype == np.float32
        assert np.max(np.abs(got - torch_logits(torch_model, inputs))) <= 1e-4, (batch, text)


def test_padding_does_not_change_scores(bundle, torch_model):
    """VSL is exact in the exported graph too: a padded row scores as the same text alone (mid-sequence padding
    is masked, not the image tokens: the trap of ORT's default fused-attention mask format)."""
    from fbcompress.export.onnx_export import parity_inputs
    from fbcompress.runtime.scoring import open_scorer

    scorer = open_scorer(bundle / "model.ort.onnx")
    inputs = parity_inputs(torch_model.spec, 4, 12, torch_model.config.vocab_size, seed=3)
    together = scorer.logits(inputs)
    for row in range(4):
        length = int(inputs["attention_mask"][row].sum())
        alone = {k: v[row:row + 1, :length] if k != "patches" else v[row:row + 1] for k, v in inputs.items()}
        assert np.max(np.abs(scorer.logits(alone) - together[row])) <= 1e-5


@pytest.mark.slow
def test_fused_attention_respects_mid_sequence_padding(torch_model, tmp_path):
    """Amplify the logits x1000 so masking mistakes show: ORT's default fused-attention mask (a sequence length,
    i.e. right padding assumed) masks the image tokens instead of the text padding; the raw 2-D mask is exact."""
    import copy

    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from fbcompress.export.onnx_export import export_onnx, measure_parity, optimize_for_ort
    from fbcompress.runtime.onnxruntime import OrtScorer

    amplified = copy.deepcopy(torch_model)
    with torch.no_grad():
        amplified.ita_head.weight.mul_(1000)
    heads, hidden = amplified.config.num_attention_heads, amplified.config.hidden_size
    export_onnx(amplified, tmp_path / "m.onnx")
    optimize_for_ort(tmp_path / "m.onnx", tmp_path / "ours.onnx", heads, hidden)
    naive = optimize_model(str(tmp_path / "m.onnx"), model_type="bert", num_heads=heads, hidden_size=hidden,
                           opt_level=0)
    naive.save_model_to_file(str(tmp_path / "naive.onnx"))
    grid, spec, vocab = [(4, 12), (8, 64)], amplified.spec, amplified.config.vocab_size
    ours = measure_parity(amplified, OrtScorer(tmp_path / "ours.onnx", spec, tmp_path, "o").logits, spec, vocab, grid)
    bad = measure_parity(amplified, OrtScorer(tmp_path / "naive.onnx", spec, tmp_path, "n").logits, spec, vocab, grid)
    assert ours["max_abs_diff"] < 1e-3 < bad["max_abs_diff"]


@pytest.mark.slow
def test_eval_onnx_gives_checkpoint_auc(bundle, trained_smoke, tiny_data, tmp_path):
    results = {}
    for label, model in (("ckpt", trained_smoke), ("onnx", bundle / "model.onnx"), ("dir", bundle)):
        out = tmp_path / f"{label}.json"
        result = run("eval", "--model", model, "--data", tiny_data, "--json", out)
        assert result.exit_code == 0, result.output
        results[label] = json.loads(out.read_text())
    assert results["onnx"]["backend"] == "onnxruntime-cpu"
    assert abs(results["onnx"]["auc"] - results["ckpt"]["auc"]) <= 0.001
    assert results["onnx"]["itr"] == results["ckpt"]["itr"] and results["dir"]["auc"] == results["onnx"]["auc"]


@pytest.mark.slow
def test_dynamo_exporter_also_exports_dynamic_axes(torch_model, tmp_path):
    from fbcompress.export.onnx_export import export_onnx, measure_parity
    from fbcompress.runtime.onnxruntime import OrtScorer

    path = tmp_path / "dynamo.onnx"
    info = export_onnx(torch_model, path, 18, "dynamo")
    assert info["exporter"] == "dynamo"
    scorer = OrtScorer(path, torch_model.spec, tmp_path, "dynamo")
    parity = measure_parity(torch_model, scorer.logits, torch_model.spec, torch_model.config.vocab_size,
                            [(1, 1), (8, 64)])
    assert parity["max_abs_diff"] <= 1e-4


def test_fp16_graph_keeps_layernorm_and_io_fp32(bundle, torch_model, tmp_path):
    import onnx

    from fbcompress.export.onnx_export import convert_fp16, measure_parity
    from fbcompress.runtime.onnxruntime import OrtScorer

    dst = tmp_path / "model.fp16.onnx"
    info = convert_fp16(bundle / "model.onnx", dst)
    proto = onnx.load(str(dst))
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in proto.graph.input)
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in inits.values()  # the matmuls really went to fp16
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization":
            assert all(inits.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for name in node.input[1:])
    assert info["fp32_nodes"]  # the logits layer
    # ... and its FP32 output reaches the graph output without an FP16 round trip (break: the converter's
    # Gemm → Cast fp16 → Cast fp32 → logits chain left in place rounds every score to FP16)
    producer = {out: node for node in proto.graph.node for out in node.output}
    path, name = [], proto.graph.output[0].name
    while producer[name].name not in info["fp32_nodes"]:
        path.append(producer[name])
        name = producer[name].input[0]
    assert [n.op_type for n in path] == ["Cast"] and path[0].attribute[0].i == onnx.TensorProto.FLOAT
    scorer = OrtScorer(dst, torch_model.spec, tmp_path, "fp16")
    parity = measure_parity(torch_model, scorer.logits, torch_model.spec, torch_model.config.vocab_size, [(2, 8)])
    assert parity["max_abs_diff"] < 1e-2


def test_reduced_precision_parity_is_judged_against_the_logits_scale(torch_model, tmp_path):
    """FP16 (and TensorRT) parity is relative to the spread of the model's own scores. Break: an absolute 5e-2 (the
    old engine tolerance) passes a constant output on the smoke model at chance, and says nothing on a model whose
    scores spread; here a constant output must fail and the FP16 graph of a model with spread scores must pass."""
    import copy

    import numpy as np
    import torch

    from fbcompress.export.onnx_export import (
        convert_fp16,
        export_onnx,
        measure_parity,
        parity_grid,
        parity_inputs,
        parity_passes,
        torch_logits,
    )
    from fbcompress.runtime.onnxruntime import OrtScorer

    spec, vocab = torch_model.spec, torch_model.config.vocab_size
    grid = parity_grid(int(torch_model.config.max_position_embeddings), batches=(1, 8), texts=(1, 8))

    def constant(model):
        """An 'export' that returns the model's mean logits for every input."""
        mean = torch_logits(model, parity_inputs(spec, *grid[-1], vocab)).mean(axis=0)
        return lambda inputs: np.tile(mean, (inputs["input_ids"].shape[0], 1))

    at_chance = measure_parity(torch_model, constant(torch_model), spec, vocab, grid)
    assert at_chance["max_abs_diff"] < 5e-2  # what the absolute rule let through
    assert parity_passes(at_chance, "fp16") is False
    spread = copy.deepcopy(torch_model)
    with torch.no_grad():  # a head whose scores spread, as a trained model's do
        spread.ita_head.weight.mul_(200.0)
    export_onnx(spread, tmp_path / "model.onnx")
    convert_fp16(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")
    fp16 = OrtScorer(tmp_path / "model.fp16.onnx", spec, tmp_path, "fp16")
    parity = measure_parity(spread, fp16.logits, spec, vocab, grid)
    assert parity["logit_scale"] > 1.0 and parity_passes(parity, "fp16") is True, parity
    assert parity_passes(measure_parity(spread, constant(spread), spec, vocab, grid), "fp16") is False
    assert parity_passes(parity, "int8") is None  # INT8 is the accuracy guard's to judge


def test_readme_snippet_makes_the_loader_inputs(bundle, tiny_data):
    """The README's Python preprocessing reproduces what training/eval feed the model."""
    from fbcompress.bundle.store import Bundle
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer

    readme = (bundle / "README.md").read_text()
    for needed in ("## ONNX Runtime", "trtexec --onnx=model.onnx", "--minShapes=", "--optShapes=", "--maxShapes=",
                   "--stronglyTyped", "--timingCacheFile=timing.cache", "## Triton"):
        assert needed in readme, needed
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace('"exported/smoke"', repr(str(bundle)))
    namespace: dict = {"__name__": "readme"}
    exec(code, namespace)  # noqa: S102 - our own generated snippet
    dataset = DatasetDir.open(tiny_data)
    data = SplitData(dataset, "test", load_tokenizer(bundle / "tokenizer"), Bundle.open(bundle).spec)
    rows = [0, 1, 2]
    expected = data.batch(rows, rows)
    texts = [str(data.records[i]["text"]) for i in rows]
    made = namespace["text_inputs"](texts)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(made[key], expected[key].numpy()), key
    patches = namespace["image_patches"](str(tiny_data / data.records[0]["image"]))
    assert np.allclose(patches, expected["patches"][0].numpy())


# ------------------------------------------------------------------------------------------- tampering, re-export


def test_tampered_model_is_refused(bundle_copy, tiny_data):
    model = bundle_copy / "model.onnx"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model.write_bytes(bytes(blob))
    assert_one_line_error(run("eval", "--model", model, "--data", tiny_data), "does not match its sha256")


def test_tampered_tokenizer_is_refused(bundle_copy, tiny_data):
    with open(bundle_copy / "tokenizer" / "vocab.txt", "a") as handle:
        handle.write("extra\n")
    result = run("eval", "--model", bundle_copy / "model.ort.onnx", "--data", tiny_data)
    assert_one_line_error(result, "vocab.txt", "does not match its sha256")


def test_eval_backend_the_form_cannot_run_is_refused(bundle, tiny_data):
    result = run("eval", "--model", bundle / "model.onnx", "--data", tiny_data, "--backend", "pytorch")
    assert_one_line_error(result, "--backend pytorch cannot score", "onnxruntime-cpu")


def test_onnx_outside_a_bundle_is_refused(bundle, tiny_data, tmp_path):
    lonely = tmp_path / "lonely" / "model.onnx"
    lonely.parent.mkdir()
    shutil.copyfile(bundle / "model.onnx", lonely)
    assert_one_line_error(run("eval", "--model", lonely, "--data", tiny_data), "no manifest.json")
    (lonely.parent / "manifest.json").write_text("{}")  # a manifest, but not an fbcompress bundle's
    assert_one_line_error(run("eval", "--model", lonely, "--data", tiny_data), "not an fbcompress bundle manifest")


@pytest.mark.slow
def test_reexport_keeps_other_stages_files(bundle_copy, trained_smoke):
    """A later stage (quantize) adds files through BundleWriter; re-exporting ONNX keeps them and their entries."""
    from fbcompress.bundle.store import Bundle, update_bundle

    source = Bundle.open(bundle_copy).manifest["source"]
    with update_bundle(bundle_copy, source) as writer:
        writer.path("model.int8.onnx", "onnx-int8").write_bytes(b"pretend quantized model")
        writer.add_model("model.int8.onnx", {"role": "onnx-int8", "format": "onnx", "precision": "int8"})
        writer.finalize()
    (bundle_copy / "notes.txt").write_text("left by hand")
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy)
    assert result.exit_code == 0, result.output
    manifest = Bundle.open(bundle_copy).manifest
    assert (bundle_copy / "model.int8.onnx").read_bytes() == b"pretend quantized model"
    assert manifest["models"]["model.int8.onnx"]["precision"] == "int8"
    assert manifest["files"]["model.int8.onnx"]["role"] == "onnx-int8"
    assert manifest["files"]["notes.txt"]["role"] == "extra"
    assert [h["command"] for h in manifest["history"]][-1] == "fbcompress export --target onnx"
    assert not [p for p in bundle_copy.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_a_runtime_cache_in_the_bundle_is_kept_but_never_hashed(bundle_copy, trained_smoke):
    """ONNX Runtime's TensorRT provider rewrites its engine cache under <bundle>/ort-trt-cache/. Break: hashing it
    like an artifact (the old finalize) makes the next export fail with "no longer matches its sha256"."""
    from fbcompress.bundle.store import ORT_TRT_CACHE_DIR, Bundle

    cache = bundle_copy / ORT_TRT_CACHE_DIR / "fp16" / "engine.engine"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"engine v1")
    assert run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy).exit_code == 0
    cache.write_bytes(b"engine v2, rewritten by the provider")
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy)
    assert result.exit_code == 0, result.output
    assert cache.read_bytes() == b"engine v2, rewritten by the provider"
    bundle = Bundle.open(bundle_copy)
    assert not [rel for rel in bundle.files if rel.startswith(ORT_TRT_CACHE_DIR)]
    bundle.verify_all()


@pytest.mark.slow
def test_reexport_refuses_a_tampered_carried_file(bundle_copy, trained_smoke):
    from fbcompress.bundle.store import Bundle, update_bundle

    with update_bundle(bundle_copy, Bundle.open(bundle_copy).manifest["source"]) as writer:
        writer.path("model.int8.onnx", "onnx-int8").write_bytes(b"quantized")
        writer.finalize()
    (bundle_copy / "model.int8.onnx").write_bytes(b"swapped")
    before = tree_state(bundle_copy)
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy)
    assert_one_line_error(result, "model.int8.onnx", "no longer matches")
    assert tree_state(bundle_copy) == before  # the failed export left the bundle exactly as it was


@pytest.mark.slow
def test_bundle_from_another_checkpoint_needs_force(bundle_copy, trained_smoke):
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    (bundle_copy / "model.int8.onnx").write_bytes(b"from the other checkpoint")
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy)
    assert_one_line_error(result, "another checkpoint", "--force")
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy, "--force")
    assert result.exit_code == 0, result.output
    assert not (bundle_copy / "model.int8.onnx").exists()


@pytest.mark.slow
def test_failed_parity_gate_writes_nothing(trained_smoke, tmp_path):
    out = tmp_path / "exported" / "strict"
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", out,
                 "--set", "export.parity_tolerance=1e-30")
    assert_one_line_error(result, "max |logit diff|", "export refused")
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [".strict.lock"]


@pytest.mark.slow
def test_the_auc_gate_holds_at_its_boundary(bundle, trained_smoke, tiny_data):
    """export.max_auc_drop on the real model.onnx scorer: with the checkpoint's reference AUC set 0.01 above what
    the file scores, a gate equal to the drop admits it and one 1e-9 below refuses it in one line; a gain is
    judged like a loss (|drop|)."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.export.pipeline import ExportOptions, _accuracy_entry, _Ctx
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model
    from fbcompress.recipes import ExportSection
    from fbcompress.runtime.onnxruntime import OrtScorer

    model, ckpt = load_model(trained_smoke)
    opts = ExportOptions(model_dir=trained_smoke, out=bundle, target="onnx", export=ExportSection(), progress=False)
    ctx = _Ctx(opts, model, ckpt, [])
    dataset = DatasetDir.open(tiny_data)
    ctx.eval_data = (dataset, SplitData(dataset, "test", load_tokenizer(trained_smoke), model.spec))
    scorer = OrtScorer(bundle / "model.onnx", model.spec, bundle / "tokenizer", "model.onnx", "cpu")
    scored = _accuracy_entry(ctx, scorer, None, "model.onnx")  # no gate: what the file scores
    for shift in (0.01, -0.01):
        ctx.reference = {"auc": scored["auc"] + shift}
        exact = abs(ctx.reference["auc"] - scored["auc"])  # the drop as the gate computes it: equal passes
        assert _accuracy_entry(ctx, scorer, exact, "model.onnx")["passed"]
        with pytest.raises(FbError, match=r"export\.max_auc_drop 0\.00999.*export refused"):
            _accuracy_entry(ctx, scorer, 0.01 - 1e-9, "model.onnx")


# ---------------------------------------------------------------------------------------------------------- Triton


@pytest.mark.slow
def test_triton_repository_round_trip(bundle_copy, trained_smoke, tmp_path):
    from fbcompress.export.onnx_export import graph_io
    from fbcompress.export.triton import check_config_matches, read_config
    from fbcompress.runtime.scoring import open_scorer

    summary = tmp_path / "triton.json"
    result = run("export", "--model", trained_smoke, "--target", "triton", "--out", bundle_copy, "--json", summary)
    assert result.exit_code == 0, result.output
    config_path = bundle_copy / "triton" / "fashionbert" / "config.pbtxt"
    model_path = bundle_copy / "triton" / "fashionbert" / "1" / "model.onnx"
    config = read_config(config_path.read_text())
    io = graph_io(model_path)
    check_config_matches(config, io)
    assert config["name"] == "fashionbert" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8  # the smoke profile's max batch
    by_name = {t["name"]: t for t in config["inputs"]}
    assert [t["name"] for t in config["inputs"]] == [i["name"] for i in io["inputs"]]
    assert by_name["input_ids"] == {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]}
    assert by_name["patches"]["dims"] == [64, 48] and by_name["patches"]["data_type"] == "TYPE_FP32"
    assert config["outputs"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [2]}]
    assert config["dynamic_batching"] is not None
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest["triton"]["platform"] == "onnxruntime_onnx"
    assert manifest["files"]["triton/fashionbert/config.pbtxt"]["role"] == "triton"
    assert open_scorer(model_path).backend == "onnxruntime-cpu"  # hash-checked through the bundle manifest
    assert "## Triton" in (bundle_copy / "README.md").read_text() and "docker run" in (
        bundle_copy / "README.md").read_text()
    # re-exporting ONNX refreshes the Triton copy instead of leaving a stale one
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", bundle_copy)
    assert result.exit_code == 0, result.output
    assert sha256_file(model_path) == sha256_file(bundle_copy / "model.ort.onnx")


def test_pbtxt_parser_handles_the_config_subset():
    from fbcompress.export.triton import make_config, parse_pbtxt, read_config

    text = make_config("m", "tensorrt_plan", [{"name": "x", "dtype": "float16", "shape": ["b", "t", 3]}],
                       [{"name": "y", "dtype": "float32", "shape": ["b", 2]}], 64, preferred_batch_sizes=[1, 8, 32],
                       max_queue_delay_us=250, profiles=[0, 1])
    config = read_config("# generated\n" + text)
    assert config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 64
    assert config["inputs"] == [{"name": "x", "data_type": "TYPE_FP16", "dims": [-1, 3]}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [8, 32], "max_queue_delay_microseconds": 250}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU", "profile": ["0", "1"]}]
    raw = parse_pbtxt('a: 1 b { c: "x\\"y" d: [1, -2] } b { c: "z" }')
    assert raw["a"] == [1] and [m["c"][0] for m in raw["b"]] == ['x"y', "z"] and raw["b"][0]["d"] == [1, -2]
    with pytest.raises(FbError):
        parse_pbtxt("a { b: 1")
    with pytest.raises(FbError):
        make_config("bad name", "onnxruntime_onnx", [], [], 8)


# -------------------------------------------------------------------------------------------------------- TensorRT


def test_profiles_and_trtexec_command(smoke_recipe):
    from fbcompress.bundle.shapes import Profile, format_command, pick_profile, resolve_profiles, trtexec_command
    from fbcompress.modeling.model import PatchSpec

    spec = PatchSpec("pixels", 48, 64, 32, 8, 32)
    profiles = resolve_profiles(smoke_recipe.export.profiles, max_positions=64)
    assert profiles == [Profile("online", (1, 1, 8), (1, 8, 32))]
    shapes = profiles[0].tensor_shapes(spec)
    assert shapes["input_ids"] == ((1, 1), (1, 8), (8, 32))
    assert shapes["patches"] == ((1, 64, 48), (1, 64, 48), (8, 64, 48))
    two = [Profile("online", (1, 1, 8), (1, 16, 64)), Profile("offline", (1, 32, 64), (1, 32, 64))]
    cmd = trtexec_command("model.fp16.onnx", "model.fp16.plan", two, spec, "timing.cache", 512)
    assert cmd[:3] == ["trtexec", "--onnx=model.fp16.onnx", "--saveEngine=model.fp16.plan"]
    assert cmd.count("--stronglyTyped") == 1 and "--timingCacheFile=timing.cache" in cmd
    assert "--memPoolSize=workspace:512M" in cmd
    mins = [c for c in cmd if c.startswith("--minShapes=")]
    maxs = [c for c in cmd if c.startswith("--maxShapes=")]
    assert mins == ["--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x48"] * 2
    assert maxs[1] == "--maxShapes=input_ids:64x64,attention_mask:64x64,token_type_ids:64x64,patches:64x64x48"
    assert [c for c in cmd if c.startswith("--optShapes=")][1].startswith("--optShapes=input_ids:32x32,")
    # each profile's triple sits right behind its --profile=i (trtexec's grammar: tests/runtime/test_tensorrt_paths.py)
    first = cmd.index("--profile=0")
    assert cmd[first + 4] == "--profile=1" and cmd[first + 1].startswith("--minShapes=")
    assert format_command(cmd).count("\\\n") == 9
    # the tightest fitting profile wins; nothing fits past every maximum
    assert pick_profile(two, 1, 10) == 0 and pick_profile(two, 32, 10) == 1 and pick_profile(two, 65, 8) is None
    with pytest.raises(FbError, match="exceeds the model.s 16 text positions"):
        resolve_profiles(smoke_recipe.export.profiles, max_positions=16)


def test_recipe_export_section_is_validated(tmp_path):
    from fbcompress.recipes import load_recipe, parse_recipe

    for name in ("smoke", "quickstart", "fashiongen-bert-base"):
        assert load_recipe(name).export.opset >= 17
    with pytest.raises(FbError, match="export.profiles.0"):
        parse_recipe({"export": {"profiles": [{"name": "p", "batch": [4, 2, 8], "text": [1, 8, 32]}]}})
    with pytest.raises(FbError, match="unknown recipe key 'export.presicions'"):
        parse_recipe({"export": {"presicions": ["fp16"]}})
    with pytest.raises(FbError, match="export.opset"):
        parse_recipe({"export": {"opset": 13}})


def test_tensorrt_modules_import_without_tensorrt():
    from fbcompress.export import tensorrt_build  # noqa: F401 - importing it is the test
    from fbcompress.runtime import tensorrt, tensorrt_env

    recorded = {"version": "10.13.0.35", "compute_capability": "9.0", "gpu": "NVIDIA H100"}
    assert tensorrt_env.engine_compatibility_problem(recorded, "10.13.0.35", "9.0") is None
    assert "TensorRT 10.13.0.35" in tensorrt_env.engine_compatibility_problem(recorded, "11.4.0.106", "9.0")
    assert "compute capability 9.0" in tensorrt_env.engine_compatibility_problem(recorded, "10.13.0.35", "8.9")
    assert tensorrt_env.tensorrt_major("11.4.0.106") == 11 and tensorrt_env.tensorrt_major("10.13.0") == 10
    assert tensorrt.TrtScorer.backend == "tensorrt"


def test_engines_require_without_tensorrt_writes_nothing(bundle_copy, trained_smoke):
    """`--engines require` keeps the old contract for scripts that need engines: one line, exit 2, no trace."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the missing-TensorRT path cannot be exercised")
    before = tree_state(bundle_copy)
    result = run("export", "--model", trained_smoke, "--target", "tensorrt", "--engines", "require", "--out",
                 bundle_copy)
    assert_one_line_error(result, "TensorRT", "--engines require")
    assert tree_state(bundle_copy) == before
    fresh = bundle_copy.parent / "fresh"
    assert_one_line_error(run("export", "--model", trained_smoke, "--target", "tensorrt", "--engines", "require",
                              "--out", fresh), "TensorRT")
    assert not fresh.exists()
    result = run("export", "--model", trained_smoke, "--target", "tensorrt", "--precision", "int8", "--out",
                 bundle_copy)
    assert_one_line_error(result, "model.int8.trt.onnx")
    assert tree_state(bundle_copy) == before


def test_plan_file_checks(bundle_copy, tiny_data):
    """A .plan is hash-checked and needs the TensorRT build info in the manifest before TensorRT is even tried."""
    from fbcompress.bundle.store import Bundle, update_bundle

    with update_bundle(bundle_copy, Bundle.open(bundle_copy).manifest["source"]) as writer:
        writer.path("model.fp16.plan", "tensorrt-engine").write_bytes(b"not really an engine")
        writer.add_model("model.fp16.plan", {"role": "tensorrt-engine", "precision": "fp16"})
        writer.finalize()
    result = run("eval", "--model", bundle_copy / "model.fp16.plan", "--data", tiny_data)
    assert_one_line_error(result, "no TensorRT build info")


def test_onnx_runtime_providers():
    from fbcompress.runtime.onnxruntime import providers_for

    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:1", gpu) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert [p[0] if isinstance(p, tuple) else p for p in providers_for("tensorrt", gpu)] == gpu
    with pytest.raises(FbError, match="no CUDAExecutionProvider"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(FbError, match="not one of"):
        providers_for("tpu", gpu)


def test_tensorrt_engine_build_and_run(bundle_copy, trained_smoke, tiny_data, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: engine build/run needs TensorRT and a GPU")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    cache = tmp_path / "shared.cache"
    result = run("export", "--model", trained_smoke, "--target", "tensorrt", "--precision", "fp16", "--out",
                 bundle_copy, "--data", tiny_data, "--timing-cache", cache)
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    entry = manifest["models"]["model.fp16.plan"]
    assert entry["tensorrt"]["major"] in (10, 11) and entry["tensorrt"]["compute_capability"]
    assert entry["parity"]["max_abs_diff"] < 5e-2 and cache.is_file()
    assert entry["parity"]["relative_tolerance"] == 5e-2 and "logit_scale" in entry["parity"]
    assert (bundle_copy / "model.fp16.build.log").is_file() and "model.fp16.onnx" in manifest["models"]
    eval_json = tmp_path / "plan.json"
    result = run("eval", "--model", bundle_copy / "model.fp16.plan", "--device", "cuda", "--data", tiny_data,
                 "--json", eval_json)
    assert result.exit_code == 0, result.output
    # a plan recorded for another GPU is refused
    manifest["models"]["model.fp16.plan"]["tensorrt"]["compute_capability"] = "1.0"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    result = run("eval", "--model", bundle_copy / "model.fp16.plan", "--device", "cuda", "--data", tiny_data)
    assert_one_line_error(result, "compute capability 1.0")


# ------------------------------------------------------------------------------------------------------ the command


def test_export_help_has_an_example():
    result = run("export", "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "--target" in result.output and "--json" in result.output


def test_export_bad_inputs(trained_smoke, tiny_data, tmp_path):
    out = tmp_path / "exported" / "x"
    assert_one_line_error(run("export", "--model", tmp_path / "none", "--target", "onnx", "--out", out), "not found")
    assert_one_line_error(run("export", "--model", tiny_data, "--target", "onnx", "--out", out),
                          "not an fbcompress checkpoint")
    assert_one_line_error(run("export", "--model", trained_smoke, "--target", "onnx", "--precision", "fp16",
                              "--out", out), "--precision")
    assert_one_line_error(run("export", "--model", trained_smoke, "--target", "onnx", "--out", out,
                              "--set", "export.profiles=[{name: big, batch: [1, 1, 8], text: [1, 8, 999]}]"),
                          "exceeds the model's 64 text positions")
    not_bundle = tmp_path / "occupied"
    not_bundle.mkdir()
    (not_bundle / "something.txt").write_text("mine")
    assert_one_line_error(run("export", "--model", trained_smoke, "--target", "onnx", "--out", not_bundle),
                          "not an export bundle")
    assert (not_bundle / "something.txt").read_text() == "mine"
    assert not out.exists()
