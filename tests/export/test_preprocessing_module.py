"""The bundle's preprocess.py: raw text and image bytes give the training loader's tensors, bit for bit, with no
torch and no fbcompress in the importing process."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def load_module(bundle: Path):
    spec = importlib.util.spec_from_file_location(f"preprocess_{abs(hash(bundle))}", bundle / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_preprocess_gives_the_loaders_tensors_bit_for_bit(smoke_bundle, tiny_data):
    from fbcompress.bundle.store import Bundle
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.loader import SplitData
    from fbcompress.modeling.backbone import load_tokenizer

    bundle = Bundle.open(smoke_bundle)
    assert "preprocess.py" in bundle.verify_all() and bundle.manifest["preprocessing"]["module"] == "preprocess.py"
    pre = load_module(smoke_bundle).Preprocessor(smoke_bundle)
    dataset = DatasetDir.open(tiny_data)
    data = SplitData(dataset, "test", load_tokenizer(smoke_bundle / "tokenizer"), bundle.spec)
    rows = list(range(len(data)))
    want = data.batch(rows, rows)
    got = pre.inputs([data.records[r]["text"] for r in rows],
                     [(dataset.root / data.records[r]["image"]).read_bytes() for r in rows])
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.numpy().dtype and np.array_equal(got[name], tensor.numpy()), name
    assert "Preprocessor(BUNDLE).inputs" in (smoke_bundle / "README.md").read_text()


@pytest.mark.parametrize("mode, size", [("RGB", (50, 37)), ("L", (32, 32)), ("RGBA", (32, 32)), ("L", (61, 80)),
                                        ("RGBA", (20, 20))])
def test_an_odd_image_becomes_what_data_import_makes_of_it(smoke_bundle, tmp_path, mode, size):
    """Other sizes, grayscale and alpha: the module gives the patches training would read after `data import`
    wrote the image into a dataset (convert, LANCZOS resize, PNG) and the loader cut it."""
    from fbcompress.data.importing.images import prepare_image
    from fbcompress.data.patches import image_to_patches, load_rgb

    rng = np.random.default_rng(sum(size))
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    source, written = tmp_path / "source.png", tmp_path / "written.png"
    image.save(source)
    assert prepare_image((str(source), str(written), 32)) is None
    want = image_to_patches(load_rgb(written, 32), 8)
    got = load_module(smoke_bundle).Preprocessor(smoke_bundle).image_patches(source.read_bytes())
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_texts_truncate_like_training_and_bad_input_is_refused(smoke_bundle):
    from fbcompress.modeling.backbone import load_tokenizer

    module = load_module(smoke_bundle)
    pre = module.Preprocessor(smoke_bundle)
    long_text = " ".join(["striped cotton shirt with long sleeves"] * 40)
    tokenizer = load_tokenizer(smoke_bundle / "tokenizer")
    expected = tokenizer([long_text, "a red shirt"], truncation=True, max_length=32)["input_ids"]
    assert pre.token_ids([long_text, "a red shirt"]) == expected and len(expected[0]) == 32
    with pytest.raises(module.FbError, match="empty"):
        pre.text_inputs(["a shirt", "   "])
    with pytest.raises(module.FbError, match="does not decode"):
        pre.image_patches(b"not an image")
    with pytest.raises(module.FbError, match="one image per text"):
        pre.inputs(["a", "b"], [png(Image.new("RGB", (32, 32)))])


def test_the_module_needs_no_torch_and_no_fbcompress(smoke_bundle):
    code = ("import sys\n"
            "for name in ('torch', 'fbcompress', 'transformers'):\n"
            "    sys.modules[name] = None  # importing any of them now raises\n"
            f"sys.path.insert(0, {str(smoke_bundle)!r})\n"
            "import io, numpy as np\nfrom PIL import Image\nfrom preprocess import Preprocessor\n"
            "buffer = io.BytesIO(); Image.new('RGB', (32, 32), (200, 10, 10)).save(buffer, format='PNG')\n"
            f"inputs = Preprocessor({str(smoke_bundle)!r}).inputs(['a red shirt'], [buffer.getvalue()])\n"
            "print(sorted(inputs), inputs['patches'].shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "['attention_mask', 'input_ids', 'patches', 'token_type_ids'] (1, 64, 48)" in result.stdout


def test_a_search_bundles_preprocess_gives_the_query_inputs_search_runs(query_encoder, tmp_path):
    from cli_helpers import run

    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_tower
    from fbcompress.runtime.embedding import query_inputs, tokenize_queries

    bundle = tmp_path / "search"
    assert run("export", "-m", query_encoder, "--target", "onnx", "--out", bundle, "--latency-runs", "0").exit_code == 0
    module = load_module(bundle)
    pre = module.Preprocessor(bundle)
    tower, _ = load_tower(query_encoder)
    queries = ["Red  floral\tmaxi dress", "shorts", " ".join(["striped shirt"] * 20)]
    tokenizer = load_tokenizer(bundle / "tokenizer")
    want = query_inputs(tokenize_queries(tokenizer, queries, tower.tower.max_query_len), int(tokenizer.pad_token_id))
    got = pre.query_inputs(queries)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k].numpy()) for k in want)
    assert got["input_ids"].shape[1] == tower.tower.max_query_len  # the long one is cut
    with pytest.raises(module.FbError, match="empty"):
        pre.query_inputs(["red dress", " "])
    with pytest.raises(module.FbError, match="reads queries"):
        pre.text_inputs(["a red dress"])
