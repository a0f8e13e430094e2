"""The public Python API, used the way a notebook user would: only `fbcompress`'s top-level names, on the
session's smoke teacher and its ONNX bundle, and the README's own example run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fbcompress
from fbcompress import load_model, load_recipe, match_scores, open_scorer

ROOT = Path(__file__).resolve().parents[1]


def _images(spec_size: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(spec_size, spec_size, 3), dtype=np.uint8) for _ in range(n)]


TEXTS = ["a red shirt", "a blue dress with long sleeves and a round neck", "green", "a yellow skirt, style 3",
         "black " * 80]  # the last one longer than any model's text length: truncated, not refused


def test_import_is_light_and_names_the_api():
    """`import fbcompress` must not pull torch in (the CLI's --help and a notebook's first cell stay fast)."""
    import subprocess

    code = "import sys, fbcompress; print('torch' in sys.modules, sorted(fbcompress.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "match_scores" in out and "open_scorer" in out
    with pytest.raises(AttributeError):
        fbcompress.not_an_api_name  # noqa: B018


def test_scores_agree_across_backends_and_follow_their_pairs(trained_smoke, smoke_bundle):
    """The same weights in PyTorch and ONNX Runtime give the same scores; each score belongs to its pair, whatever
    the order or the batch size (VSL batching reorders internally)."""
    model, checkpoint = load_model(trained_smoke)
    assert checkpoint.kind == "teacher" and model.spec.image_size > 0
    torch_scorer, onnx_scorer = open_scorer(trained_smoke), open_scorer(smoke_bundle)
    images = _images(model.spec.image_size, len(TEXTS))
    scores = match_scores(torch_scorer, TEXTS, images)
    assert scores.shape == (len(TEXTS),) and np.all((scores > 0) & (scores < 1))
    np.testing.assert_allclose(match_scores(onnx_scorer, TEXTS, images), scores, atol=1e-5)
    reverse = match_scores(torch_scorer, TEXTS[::-1], images[::-1], batch_size=2)
    np.testing.assert_allclose(reverse[::-1], scores, atol=1e-6)
    single = [match_scores(torch_scorer, [t], [i])[0] for t, i in zip(TEXTS, images, strict=True)]
    np.testing.assert_allclose(single, scores, atol=1e-5)


def test_images_can_be_files(trained_smoke, tmp_path):
    from PIL import Image

    scorer = open_scorer(trained_smoke)
    images = _images(scorer.spec.image_size, 2)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(match_scores(scorer, TEXTS[:2], paths), match_scores(scorer, TEXTS[:2], images))


def test_bad_inputs_are_one_line_errors(trained_smoke):
    from fbcompress.core.errors import FbError

    scorer = open_scorer(trained_smoke)
    size = scorer.spec.image_size
    with pytest.raises(FbError, match="2 texts but 1 images"):
        match_scores(scorer, TEXTS[:2], _images(size, 1))
    with pytest.raises(FbError, match=rf"the model expects uint8 \({size}, {size}, 3\)"):
        match_scores(scorer, ["a shirt"], [np.zeros((size + 1, size + 1, 3), np.uint8)])
    with pytest.raises(FbError, match="image not found"):
        match_scores(scorer, ["a shirt"], ["/nowhere/shirt.png"])


def test_the_readme_python_example_runs_as_written(smoke_bundle, tmp_path, monkeypatch):
    """The README's example, run in a folder laid out as it assumes: the quickstart's bundle (here the smoke
    bundle) and two product images at the model's size."""
    from PIL import Image

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert block, "the README has a Python example"
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "quickstart").symlink_to(smoke_bundle)
    size = open_scorer(smoke_bundle).spec.image_size
    for name, image in zip(("shirt.png", "dress.png"), _images(size, 2), strict=True):
        Image.fromarray(image).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["scores"].shape == (2,)
    assert load_recipe("quickstart").check.min_speedup > 0
