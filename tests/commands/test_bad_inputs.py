"""Bad inputs: each gives one clear line, exit code 2, and leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import run
from PIL import Image


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_data_dir(tmp_path):
    result = run("train-teacher", "-r", "smoke", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t"))
    assert_one_line_error(result, "dataset dir not found")
    assert not (tmp_path / "t").exists()


def test_missing_model(tiny_data, tmp_path):
    assert_one_line_error(run("eval", "--model", str(tmp_path / "none"), "--data", str(tiny_data)), "not found")


def test_not_a_checkpoint(tiny_data, tmp_path):
    result = run("eval", "--model", str(tmp_path), "--data", str(tiny_data))
    assert_one_line_error(result, "not an fbcompress checkpoint")


def test_hdf5_without_expected_keys(tmp_path):
    path = tmp_path / "fashiongen_256_256_train.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("something_else", data=np.zeros((3, 2)))
    result = run("data", "fashiongen", "--h5", str(path), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "input_image")
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors(trained_smoke, tiny_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_smoke, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_one_line_error(run("eval", "--model", str(broken), "--data", str(tiny_data)), "truncated or corrupt")


def test_unknown_recipe_key(tiny_data, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  stepz: 3\n")
    result = run("train-teacher", "-r", str(recipe), "--data", str(tiny_data), "--out", str(tmp_path / "t"))
    assert_one_line_error(result, "unknown recipe key 'train.stepz'")
    assert not (tmp_path / "t").exists()


def test_bad_recipe_value_names_the_key(tiny_data, tmp_path):
    result = run("train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out", str(tmp_path / "t"),
                 "--set", "train.loss_weighting=magic")
    assert_one_line_error(result, "train.loss_weighting")


def _copy_with(tiny_data: Path, tmp_path: Path, edit) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    edit(data)
    return data


def test_image_of_wrong_size(tiny_data, tmp_path):
    def shrink_first_train_image(data: Path) -> None:
        first = json.loads((data / "manifest-train.jsonl").read_text().splitlines()[0])
        Image.new("RGB", (20, 24)).save(data / first["image"])

    data = _copy_with(tiny_data, tmp_path, shrink_first_train_image)
    result = run("train-teacher", "-r", "smoke", "--data", str(data), "--out", str(tmp_path / "t"),
                 "--set", "train.batch_size=200")
    assert_one_line_error(result, "20x24", "expects 32x32")
    assert not (tmp_path / "t").exists()


def test_empty_text(tiny_data, tmp_path):
    def blank_a_text(data: Path) -> None:
        path = data / "manifest-train.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[3]["text"] = "   "
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    data = _copy_with(tiny_data, tmp_path, blank_a_text)
    result = run("train-teacher", "-r", "smoke", "--data", str(data), "--out", str(tmp_path / "t"))
    assert_one_line_error(result, "empty text")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--resume", "--force"], "contradict"),
    (["--stop-after", "0"], "0"),
])
def test_bad_flags(tiny_data, tmp_path, args, fragment):
    result = run("train-teacher", "-r", "smoke", "--data", str(tiny_data), "--out", str(tmp_path / "t"), *args)
    assert result.exit_code == 2 and fragment in result.output


def test_every_command_has_help_with_example():
    for command in (["data", "synth"], ["data", "fashiongen"], ["train-teacher"], ["eval"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_quickstart_output_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_line_error(run("quickstart", "--recipe", "smoke", "--out", str(blocker / "run")),
                          "cannot create output folder", str(blocker / "run"))
