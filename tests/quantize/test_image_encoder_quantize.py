"""The INT8 image encoder's parts that need no trained model (seconds): calibration images prepared as `data
features` prepares them, a seeded draw from train, and a QDQ graph with every Conv in INT8 that ONNX Runtime runs.
The end-to-end guard itself is tested on a trained features bundle in tests/data/test_features.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_tiny_dataset

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("int8-encoder")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                             layer_type="bottleneck")).save_pretrained(root / "resnet")
    return root, DatasetDir.open(write_tiny_dataset(root / "data", products=40))


def test_calibration_images_are_a_seeded_draw_prepared_like_data_features(tiny):
    from PIL import Image

    from fbcompress.modeling.image_encoder import load_image_encoder
    from fbcompress.quantize.image_encoder import calibration_images, prepared_images

    root, dataset = tiny
    identity = load_image_encoder(root / "resnet", grid=8).identity.to_dict()
    feeds = calibration_images(dataset, identity, 20)
    assert [f["images"].shape for f in feeds] == [(16, 64, 64, 3), (4, 64, 64, 3)]  # batches of ENCODE_BATCH
    again = calibration_images(dataset, identity, 20)
    assert all(np.array_equal(a["images"], b["images"]) for a, b in zip(feeds, again, strict=True))
    other = calibration_images(dataset, identity, 20, seed=1)
    assert not np.array_equal(other[0]["images"], feeds[0]["images"])
    record = dataset.records("train")[0]
    with Image.open(dataset.root / record["image"]) as image:
        expected = np.asarray(image.convert("RGB").resize((64, 64), Image.BICUBIC), dtype=np.float32)
    np.testing.assert_array_equal(prepared_images(dataset, [record], identity)[0], expected)
    with pytest.raises(FbError, match="has no image"):
        prepared_images(dataset, [{**record, "image": None}], identity)


def test_every_conv_is_int8_and_onnx_runtime_runs_it(tiny):
    import onnxruntime as ort

    from fbcompress.export.image_encoder_export import export_image_encoder, sample_images
    from fbcompress.modeling.image_encoder import load_image_encoder
    from fbcompress.quantize.image_encoder import calibration_images, quantize_encoder
    from fbcompress.runtime.onnxruntime import cpu_session

    root, dataset = tiny
    encoder = load_image_encoder(root / "resnet", grid=8)
    fp32, int8 = root / "image_encoder.onnx", root / "image_encoder.int8.onnx"
    export_image_encoder(encoder, fp32, 17)
    settings = quantize_encoder(fp32, int8, calibration_images(dataset, encoder.identity.to_dict(), 8), "MinMax",
                                per_channel=True)
    assert settings["convs"] > 0 and settings["convs_quantized"] == settings["convs"]
    images = sample_images(encoder, 2)
    got = cpu_session(int8).run(None, {"images": images})[0]  # the project's session options (x64quantprecision)
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    assert got.shape == want.shape == (2, 64, 16)
    assert 0 < np.abs(got - want).max() <= 0.25 * np.abs(want).max()  # rounded, not another function
    import onnx

    weights = [t for t in onnx.load(str(int8)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]  # OIHW conv weights (not zero points)
    assert len(weights) == settings["convs"]  # each Conv's weight stored as INT8 (the size win at ResNet-50 scale)
