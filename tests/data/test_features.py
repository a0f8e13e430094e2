"""`fbcompress data features`: per-patch features from a tiny random-init ResNet (saved with save_pretrained), in
grid and crop mode, stored as float16 shards the loader reads; resumable, refused by a model of another encoder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run
from conftest import write_tiny_dataset
from PIL import Image
from rank_helpers import run_ranks

from fbcompress.data.dataset_dir import SPLITS, DatasetDir
from fbcompress.data.features import extract
from fbcompress.data.features.extract import FeatureOptions, make_features
from fbcompress.data.loader import SplitData
from fbcompress.modeling.backbone import load_tokenizer, packaged_minilm_dir
from fbcompress.modeling.image_encoder import crops_of, grid_input_size, load_image_encoder
from fbcompress.modeling.model import PatchSpec


def save_tiny_resnet(path: Path, seed: int = 0) -> Path:
    """Two bottleneck stages (stride 8, 16 channels): 64 px -> an 8x8 map, milliseconds per image."""
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="bottleneck")
    ResNetModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return save_tiny_resnet(tmp_path_factory.mktemp("enc") / "tiny-resnet")


def _dataset(tmp_path: Path, products: int = 40) -> Path:
    return write_tiny_dataset(tmp_path / "data", products=products)


def _state(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_grid_features_are_the_last_feature_map_in_row_major_order(tmp_path, encoder_dir):
    data = _dataset(tmp_path)
    before = DatasetDir.open(data).fingerprint
    result = run("data", "features", "--data", data, "--encoder", encoder_dir, "--batch-size", 7, "--device", "cpu")
    assert result.exit_code == 0, result.output
    dataset = DatasetDir.open(data)
    entry = dataset.meta["features"]
    assert entry["feature_dim"] == 16 and entry["num_patches"] == 64 and entry["encoder"]["input_size"] == 64
    assert entry["encoder"]["mode"] == "grid" and entry["encoder_dir"] == str(encoder_dir.resolve())
    assert dataset.fingerprint != before  # the features are part of the data a model trains on
    records = [r for split in SPLITS for r in dataset.records(split)]
    assert len(records) == 40 and all(r["features"].startswith(f"features/{entry['tag']}/") for r in records)
    shard = np.load(data / records[0]["features"])
    assert shard.dtype == np.float16 and shard.shape == (40, 64, 16)
    encoder = load_image_encoder(encoder_dir, grid=8)
    for record in (records[0], records[-1]):
        with Image.open(data / record["image"]) as image:
            pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.BICUBIC), dtype=np.float32)
        normalised = (torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255 - torch.tensor(encoder.identity.mean)
                      .view(1, 3, 1, 1)) / torch.tensor(encoder.identity.std).view(1, 3, 1, 1)
        with torch.no_grad():
            cells = encoder.backbone(pixel_values=normalised).last_hidden_state[0]  # [16, 8, 8]
        stored = np.load(data / record["features"])[record["features_row"]].astype(np.float32)
        for r, c in ((0, 0), (0, 7), (3, 5), (7, 0)):
            np.testing.assert_allclose(stored[r * 8 + c], cells[:, r, c].numpy(), rtol=2e-3, atol=2e-3)
    spec = PatchSpec("features", 16, 64, 32, 8, 32, entry["encoder"]["sha256"], "grid", 64)
    split = SplitData(dataset, "val", load_tokenizer(packaged_minilm_dir()), spec)
    batch = split.batch([0, 1], [0, 1])
    assert batch["patches"].shape == (2, 64, 16) and batch["patches"].dtype == torch.float32


def test_crop_mode_encodes_each_cell_alone(tmp_path, encoder_dir):
    data = _dataset(tmp_path, products=20)
    result = run("data", "features", "--data", data, "--encoder", encoder_dir, "--mode", "crop", "--crop-size", 16)
    assert result.exit_code == 0, result.output
    dataset = DatasetDir.open(data)
    assert dataset.meta["features"]["encoder"]["mode"] == "crop"
    record = dataset.records("train")[0]
    encoder = load_image_encoder(encoder_dir, grid=8, mode="crop", crop_size=16)
    with Image.open(data / record["image"]) as image:
        crops = crops_of(np.asarray(image.convert("RGB")), 8, 16)
    assert crops.shape == (64, 16, 16, 3)
    np.testing.assert_array_equal(crops[8 + 3], np.asarray(Image.fromarray(  # cell (1, 3) of a 32 px image
        np.asarray(image.convert("RGB"))[4:8, 12:16]).resize((16, 16), Image.BICUBIC), dtype=np.float32))
    crop = torch.from_numpy(crops[11:12]).permute(0, 3, 1, 2)  # one crop through the backbone alone
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (encoder.identity.mean, encoder.identity.std))
    with torch.no_grad():
        alone = encoder.backbone(pixel_values=(crop / 255 - mean) / std).last_hidden_state.mean(dim=(2, 3))[0]
    stored = np.load(data / record["features"])[record["features_row"]].astype(np.float32)
    np.testing.assert_allclose(stored[11], alone.numpy(), rtol=2e-3, atol=2e-3)


def test_a_killed_run_resumes_to_the_same_store(tmp_path, encoder_dir, monkeypatch):
    data = _dataset(tmp_path / "a")
    other = _dataset(tmp_path / "b")
    options = {"encoder": encoder_dir, "shard_rows": 16, "batch_size": 5, "device": "cpu"}
    make_features(FeatureOptions(data=other, **options))
    saved = []
    real = extract._save_shard

    def killed_after_one(path, array):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        real(path, array)

    monkeypatch.setattr(extract, "_save_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        make_features(FeatureOptions(data=data, **options))
    assert "features" not in DatasetDir.open(data).meta  # nothing published yet
    monkeypatch.setattr(extract, "_save_shard", real)
    summary = make_features(FeatureOptions(data=data, **options))
    assert summary.resumed_shards == 1 and summary.computed == 40 - 16
    assert _state(data) == _state(other)  # byte for byte what an uninterrupted run writes
    again = make_features(FeatureOptions(data=data, **options))
    assert again.computed == 0 and _state(data) == _state(other)  # a finished store is not made twice


def test_a_model_refuses_features_of_another_encoder(tmp_path, encoder_dir):
    data = _dataset(tmp_path)
    assert run("data", "features", "--data", data, "--encoder", encoder_dir).exit_code == 0
    teacher = tmp_path / "teacher"
    result = run("train-teacher", "--recipe", "smoke", "--data", data, "--out", teacher,
                 "--set", "teacher.patch_encoder=features", "--set", "train.steps=2")
    assert result.exit_code == 0, result.output
    config = json.loads((teacher / "config.json").read_text())["fashionbert"]
    assert config["patch_dim"] == 16 and config["feature_mode"] == "grid" and config["feature_input_size"] == 64
    other = save_tiny_resnet(tmp_path / "other-resnet", seed=1)
    assert run("data", "features", "--data", data, "--encoder", other).exit_code == 0
    assert [p.name for p in (data / "features").iterdir()] == [DatasetDir.open(data).meta["features"]["tag"]]
    assert_one_line_error(run("eval", "--model", teacher, "--data", data), "come from encoder other-resnet",
                          "make them again")
    crop = _dataset(tmp_path / "crop")
    assert run("data", "features", "--data", crop, "--encoder", encoder_dir, "--mode", "crop").exit_code == 0
    assert_one_line_error(run("eval", "--model", teacher, "--data", crop), "crop mode")  # same weights, other mode


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, encoder_dir):
    data = _dataset(tmp_path)
    before = _state(data)
    assert_one_line_error(run("data", "features", "--data", data, "--encoder", packaged_minilm_dir()),
                          "'bert' model, not a convolutional vision backbone")
    assert_one_line_error(run("data", "features", "--data", data, "--encoder", tmp_path / "nowhere"),
                          "has no config.json")
    assert_one_line_error(run("data", "features", "--data", data, "--encoder", encoder_dir, "--batch-size", 0),
                          "--batch-size must be at least 1")
    assert _state(data) == before
    pixels_only = _dataset(tmp_path / "plain")
    assert_one_line_error(run("train-teacher", "--recipe", "smoke", "--data", pixels_only, "--out", tmp_path / "t",
                              "--set", "teacher.patch_encoder=features"), "no patch features", "data features")
    assert not (tmp_path / "t").exists()
    assert run("data", "features", "--data", data, "--encoder", encoder_dir).exit_code == 0
    assert_one_line_error(run("train-teacher", "--recipe", "smoke", "--data", data, "--out", tmp_path / "t"),
                          "has patch features of tiny-resnet but the recipe reads pixels")
    assert not (tmp_path / "t").exists()


def test_a_grid_the_stride_cannot_make_is_refused():
    class Valid(torch.nn.Module):  # a conv without padding: 3x3, stride 3 -> 512 px give 170 cells, no whole stride
        config = None

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=3)

        def forward(self, pixel_values):
            return type("Out", (), {"last_hidden_state": self.conv(pixel_values)})()

    from fbcompress.core.errors import FbError

    with pytest.raises(FbError, match="cannot make a 8x8 grid"):
        grid_input_size(Valid(), 8)


def test_the_store_is_checked_on_load(tmp_path, encoder_dir):
    data = _dataset(tmp_path)
    assert run("data", "features", "--data", data, "--encoder", encoder_dir).exit_code == 0
    dataset = DatasetDir.open(data)
    entry = dataset.meta["features"]
    spec = PatchSpec("features", 16, 64, 32, 8, 32, entry["encoder"]["sha256"], "grid", 64)
    tokenizer = load_tokenizer(packaged_minilm_dir())
    shard = data / dataset.records("val")[0]["features"]
    np.save(shard, np.zeros((40, 64, 8), np.float16))  # a shard of the wrong width
    with pytest.raises(Exception, match="expected float16"):
        SplitData(dataset, "val", tokenizer, spec).patches(0)
    index = data / "features" / entry["tag"] / "index.json"
    index.write_text(index.read_text().replace('"records": 40', '"records": 41'))
    with pytest.raises(Exception, match="does not match the sha256"):
        SplitData(dataset, "val", tokenizer, spec)
    shutil.rmtree(data / "features")
    with pytest.raises(Exception, match="index.json is missing"):
        SplitData(dataset, "val", tokenizer, spec)


@pytest.fixture(scope="module")
def features_run(tmp_path_factory, encoder_dir) -> dict[str, Path]:
    """Features of the tiny ResNet -> teacher -> student -> ONNX bundle (scorer + image encoder): what the tests
    of the bundle's image side start from (each copies the bundle before changing it)."""
    root = tmp_path_factory.mktemp("features-run")
    data = _dataset(root, products=60)
    assert run("data", "features", "--data", data, "--encoder", encoder_dir).exit_code == 0
    teacher, student, bundle = root / "teacher", root / "student", root / "bundle"
    features = ("--set", "teacher.patch_encoder=features")
    assert run("train-teacher", "--recipe", "smoke", "--data", data, "--out", teacher, *features).exit_code == 0
    result = run("distill", "--recipe", "smoke", "--teacher", teacher, "--data", data, "--out", student)
    assert result.exit_code == 0, result.output
    result = run("export", "--model", student, "--target", "onnx", "--out", bundle, "--data", data)
    assert result.exit_code == 0, result.output
    return {"data": data, "teacher": teacher, "student": student, "bundle": bundle}


def _copy_bundle(features_run: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(features_run["bundle"], out)
    return out


@pytest.mark.slow
def test_the_whole_features_path_teacher_to_checked_int8_bundle(tmp_path, features_run, encoder_dir):
    """teacher -> distill -> export (scorer + image_encoder.onnx, both parity-checked) -> quantize (scorer and, end to
    end guarded, the image encoder) -> check, on features of the tiny ResNet; the bundle's image encoder run in ONNX
    Runtime on a raw image gives the features that training read."""
    import onnxruntime as ort

    from fbcompress.runtime.onnxruntime import cpu_session

    data, student, teacher = features_run["data"], features_run["student"], features_run["teacher"]
    wrong = save_tiny_resnet(tmp_path / "wrong", seed=3)
    assert_one_line_error(run("export", "--model", student, "--target", "onnx", "--out", tmp_path / "b2",
                              "--image-encoder", wrong), "is not the image encoder the model's features came from")
    assert not (tmp_path / "b2").exists()
    bundle = _copy_bundle(features_run, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["models"]["image_encoder.onnx"]
    assert entry["parity"]["passed"] and entry["parity"]["max_relative_diff"] <= 1e-4
    assert entry["encoder"]["sha256"] == manifest["patch_spec"]["feature_encoder"]
    assert manifest["preprocessing"]["image_encoder"]["input"].startswith("[B, 64, 64, 3]")
    assert "image_encoder.onnx" in (bundle / "README.md").read_text()
    dataset = DatasetDir.open(data)
    record = dataset.records("test")[0]
    with Image.open(data / record["image"]) as image:
        pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.BICUBIC), dtype=np.float32)
    stored = np.load(data / record["features"])[record["features_row"]].astype(np.float32)
    session = ort.InferenceSession(str(bundle / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": pixels[None]})[0][0], stored, rtol=2e-3, atol=2e-3)
    # An AUC drop cannot exceed 1: both INT8 parts are admitted, so what is written can be checked whole.
    result = run("quantize", "--model", bundle, "--data", data, "--set", "quantize.max_auc_drop=1",
                 "--set", "quantize.max_rank10_drop=1")
    assert result.exit_code == 0, result.output
    report = json.loads((bundle / "quantization.json").read_text())["image_encoder"]
    assert report["status"] == "shipped" and report["file"] == "image_encoder.int8.onnx"
    assert report["settings"]["convs_quantized"] == report["settings"]["convs"] > 0
    assert report["accuracy"]["passed"] and report["features"]["images"] == len(dataset.records("test"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    int8 = manifest["models"]["image_encoder.int8.onnx"]
    assert int8["encoder"] == entry["encoder"] and int8["precision"] == "int8"
    assert manifest["files"]["image_encoder.int8.onnx"]["sha256"]
    assert "## Image encoder (INT8)" in (bundle / "quantization.md").read_text()
    quantized = cpu_session(bundle / "image_encoder.int8.onnx")  # the project's options: no int16 saturation
    served = quantized.run(None, {"images": pixels[None]})[0][0]
    assert np.abs(served - stored).max() <= 0.1 * max(1.0, np.abs(stored).max())  # INT8, not another encoder
    result = run("check", "-t", teacher, "-c", bundle / "model.int8.onnx", "--data", data, "-r", "smoke")
    assert result.exit_code == 0 and "PASS" in result.output, result.output


@pytest.mark.slow
def test_an_int8_encoder_beyond_the_guard_is_not_shipped_and_an_old_one_goes(tmp_path, features_run):
    """The end-to-end guard with a tolerance no quantization can meet (an AUC gain is demanded): the INT8 encoder
    is made and measured but not shipped, and the one an earlier, admitted run left is removed with its engine."""
    from fbcompress.bundle.store import Bundle
    from fbcompress.quantize.image_encoder import guard_encoder
    from fbcompress.quantize.pipeline import QuantizeOptions, _Run, _write_bundle
    from fbcompress.recipes import QuantizeSection

    bundle = _copy_bundle(features_run, tmp_path)
    result = run("quantize", "--model", bundle, "--data", features_run["data"], "--set", "quantize.max_auc_drop=1",
                 "--set", "quantize.max_rank10_drop=1", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    assert (bundle / "image_encoder.int8.onnx").is_file()
    opened = Bundle.open(bundle)
    section = QuantizeSection(max_auc_drop=-1.0)
    opts = QuantizeOptions(model=bundle / "model.onnx", data_dir=features_run["data"], section=section)
    run_state = _Run(opts, opened, "model.onnx", tmp_path)
    run_state.dataset = DatasetDir.open(features_run["data"])
    shutil.copyfile(bundle / "model.onnx", run_state.src)
    record, shipped = guard_encoder(run_state, tmp_path)
    assert shipped is None and record.status == "not-shipped"
    assert "auc" in record.reason.lower() and "keeps image_encoder.onnx" in record.reason
    assert record.accuracy is not None and not record.accuracy.passed
    from fbcompress.quantize.record import QuantizationReport

    report = QuantizationReport.model_validate_json((bundle / "quantization.json").read_text())
    report.image_encoder = record
    _write_bundle(run_state, bundle, {}, report)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert not (bundle / "image_encoder.int8.onnx").exists() and "image_encoder.int8.onnx" not in manifest["files"]
    assert manifest["quantization"]["image_encoder"]["status"] == "not-shipped"
    assert "No INT8 encoder" in (bundle / "README.md").read_text()


@pytest.mark.slow
def test_a_features_bundle_carries_encoder_engines_and_a_triton_model(tmp_path, features_run):
    """--target tensorrt without TensorRT here: the kit builds the encoder's FP16 engine (and its INT8 one, once the
    guard admitted an INT8 encoder and int8 is asked for) from strongly typed graphs at the recipe's image batches;
    --target triton serves the encoder beside the scorer with the images' batch axis."""
    from fbcompress.export.build_kit import script_commands
    from fbcompress.export.triton import read_config

    bundle = _copy_bundle(features_run, tmp_path)
    student = features_run["student"]
    result = run("export", "--model", student, "--target", "tensorrt", "--out", bundle, "--engines", "auto")
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp16 = manifest["models"]["image_encoder.fp16.onnx"]
    assert fp16["precision"] == "fp16" and fp16["derived_from"] == "image_encoder.onnx"
    if "skipped" not in fp16["parity"]:
        assert fp16["parity"]["max_relative_diff"] <= 1e-2
    names = [e["name"] for e in manifest["tensorrt_build_kit"]["engines"]]
    assert names == ["fp16", "image_encoder_fp16"]
    lines = script_commands((bundle / "build_engines.sh").read_text())
    encoder_line = lines[1]
    assert "--onnx=image_encoder.fp16.onnx" in encoder_line and "--stronglyTyped" in encoder_line
    assert "--fp16" not in encoder_line  # TensorRT 11 has no weak typing; precision comes from the graph
    assert {"--minShapes=images:1x64x64x3", "--optShapes=images:32x64x64x3",
            "--maxShapes=images:128x64x64x3"} <= set(encoder_line)
    result = run("quantize", "--model", bundle, "--data", features_run["data"], "--set", "quantize.max_auc_drop=1",
                 "--set", "quantize.max_rank10_drop=1", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    result = run("export", "--model", student, "--target", "tensorrt", "--precision", "int8", "--out", bundle)
    assert result.exit_code == 0, result.output
    kit = json.loads((bundle / "manifest.json").read_text())["tensorrt_build_kit"]
    assert [e["name"] for e in kit["engines"]] == ["int8", "image_encoder_fp16", "image_encoder_int8"]
    assert kit["engines"][2]["onnx"] == "image_encoder.int8.onnx"
    result = run("export", "--model", student, "--target", "triton", "--out", bundle)
    assert result.exit_code == 0, result.output
    triton = json.loads((bundle / "manifest.json").read_text())["triton"]["image_encoder"]
    assert triton["model_name"] == "fashionbert_image_encoder" and triton["platform"] == "onnxruntime_onnx"
    config = read_config((bundle / triton["config"]).read_text())
    assert config["max_batch_size"] == 128
    assert config["inputs"][0]["name"] == "images" and config["inputs"][0]["dims"] == [64, 64, 3]
    assert config["outputs"][0]["dims"][0] == 64
    assert (bundle / triton["model_file"]).read_bytes() == (bundle / "image_encoder.onnx").read_bytes()


@pytest.mark.slow
def test_a_features_bundles_ensemble_scores_stored_patches_as_eval_does(tmp_path, features_run):
    """A features model's Triton ensemble takes the text and the product's stored patch features (its images are
    encoded offline): served by a real tritonserver, scores equal to eval's on the same pairs."""
    from triton_helpers import probe, serving_env

    from fbcompress.evaluation.metrics import score_pairs
    from fbcompress.runtime.onnxruntime import OrtScorer
    from fbcompress.serving.triton_server import serve

    serving = serving_env()
    bundle = _copy_bundle(features_run, tmp_path)
    result = run("export", "--model", features_run["student"], "--target", "triton", "--out", bundle,
                 "--triton-kind", "cpu", "--triton-scorer", "python")
    assert result.exit_code == 0, result.output
    ensemble = json.loads((bundle / "manifest.json").read_text())["triton"]["ensemble"]
    assert set(ensemble["inputs"]) == {"text", "patches"}
    scorer = OrtScorer.open(bundle / "model.ort.onnx")
    dataset = DatasetDir.open(features_run["data"])
    data = SplitData(dataset, "test", load_tokenizer(scorer.tokenizer_dir), scorer.spec)
    pairs = dataset.eval_rows("pairs", "test")[:6]
    expected = score_pairs(scorer, data, pairs)
    cases = [{"model": ensemble["model_name"], "output": "score", "inputs": [
        {"name": "text", "datatype": "BYTES", "data": [[data.records[data.position(p["text"])]["text"]]]},
        {"name": "patches", "datatype": "FP32", "data": [data.patches(data.position(p["image"])).tolist()]}]}
        for p in pairs]
    with serve(bundle / "triton", serving, timeout=240) as server:
        answers = probe(serving, server.http, "http", cases, tmp_path)
    np.testing.assert_allclose([a["output"][0][0] for a in answers], expected, atol=1e-5)


def test_the_crop_encoder_graph_batches_by_image(tmp_path, encoder_dir):
    """Crop mode's graph takes [B, 64, c, c, 3] and gives [B, 64, D]: the batch axis is the images' (Triton batches
    along it), and ONNX Runtime matches PyTorch at two batch sizes."""
    from fbcompress.export.image_encoder_export import export_image_encoder, image_encoder_parity, sample_images

    encoder = load_image_encoder(encoder_dir, grid=8, mode="crop", crop_size=16)
    path = tmp_path / "image_encoder.onnx"
    info = export_image_encoder(encoder, path, 17)
    assert info["io"]["inputs"][0]["shape"][1:] == [64, 16, 16, 3]
    parity = image_encoder_parity(encoder, path, 1e-4)
    assert parity["passed"] and [c["batch"] for c in parity["cases"]] == [1, 3]
    assert sample_images(encoder, 3).shape == (3, 64, 16, 16, 3)


# Runs on each rank (started as torchrun would): make_features with small shards, recording the shards it saved.
RANK_DRIVER = '''
import json, os, sys
from pathlib import Path
from fbcompress.data.features import extract
data, encoder, record = sys.argv[1:4]
saved = []
real = extract._save_shard
def save(path, array):
    saved.append(path.name)
    real(path, array)
extract._save_shard = save
extract.make_features(extract.FeatureOptions(data=Path(data), encoder=Path(encoder), shard_rows=8, device="cpu"))
Path(record, f"rank{os.environ['RANK']}.json").write_text(json.dumps(saved))
'''


@pytest.mark.slow
def test_two_torchrun_ranks_split_the_shards_and_write_one_store(tmp_path, encoder_dir):
    """Two processes with torchrun's environment (gloo, CPU): rank r encodes the shards k with k % 2 == r, rank 0
    publishes, and the store is byte for byte the one a single process writes."""
    data, alone = _dataset(tmp_path / "ranks"), _dataset(tmp_path / "alone")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1): convolutions round alike, bit for bit
    try:
        make_features(FeatureOptions(data=alone, encoder=encoder_dir, shard_rows=8, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    driver, record = tmp_path / "driver.py", tmp_path / "record"
    driver.write_text(RANK_DRIVER)
    record.mkdir()
    run_ranks([str(driver), str(data), str(encoder_dir), str(record)], timeout=180)
    saved = [json.loads((record / f"rank{r}.json").read_text()) for r in range(2)]
    assert saved == [[f"shard-{k:06d}.npy" for k in (0, 2, 4)], [f"shard-{k:06d}.npy" for k in (1, 3)]]  # 40 / 8
    assert _state(data) == _state(alone)
