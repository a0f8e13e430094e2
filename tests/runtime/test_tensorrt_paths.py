"""The TensorRT paths without TensorRT: the logic behind every GPU-only call, tested through seams that need none.

Each test names the defect it covers (the GPU-path issue's numbering) and the one-line break of today's code it
fails on. Behaviour that exists only with TensorRT and a GPU is tested at the end and skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from cli_helpers import run
from click.testing import CliRunner

from fbcompress.bundle.shapes import Profile, plan_chunks, trtexec_command
from fbcompress.core.errors import FbError, FbWarning
from fbcompress.modeling.model import PatchSpec

SPEC = PatchSpec("pixels", 48, 64, 32, 8, 32)
ONLINE = Profile("online", (1, 1, 8), (1, 16, 48))
OFFLINE = Profile("offline", (8, 32, 32), (8, 32, 48))



# ------------------------------------------------------------------------------------ 1. trtexec, two profiles


def parse_trtexec_profiles(argv: list[str]) -> list[dict[str, dict[str, str]]]:
    """trtexec's build-shape grammar, as `samples/common/sampleOptions.cpp` (TensorRT 10.x/11.x) implements it.

    * `argsToArgumentsMap`: each `--key=value` is split at the first '=' and remembered with its argv position.
    * `getOptimizationProfiles`: for every `--profile=i` at position p, the shape flags are taken from positions
      p+1, p+2, p+3 only (`getAndDelOptionBehind`: `position - pos == 1`, pos advancing), each flag once; an index
      used twice throws "Optimization profile index cannot be the same."; a gap throws "Found invalid or missing
      shape spec at profile index i".
    * Without any `--profile`, one --minShapes/--optShapes/--maxShapes set is read as profile 0.
    * Any shape flag left over throws "Multiple --minShapes/--optShapes/--maxShapes without --profile are not
      allowed."
    """
    args = []
    for position, arg in enumerate(argv[1:], start=1):
        key, _, value = arg.partition("=")
        args.append([key, value, position])
    shape_flags = {"--minShapes": "min", "--optShapes": "opt", "--maxShapes": "max"}
    profiles: dict[int, dict[str, dict[str, str]]] = {}
    for _, value, position in [a for a in args if a[0] == "--profile"]:
        index = int(value)
        if index in profiles:
            raise ValueError("Optimization profile index cannot be the same.")
        shapes: dict[str, dict[str, str]] = {}
        pos = position
        for _ in range(3):
            match = next((a for a in args if a[0] in shape_flags and shape_flags[a[0]] not in shapes
                          and a[2] - pos == 1), None)
            if match is None:
                break
            shapes[shape_flags[match[0]]] = dict(item.rsplit(":", 1) for item in match[1].split(","))
            args.remove(match)
            pos += 1
        profiles[index] = shapes
    args = [a for a in args if a[0] != "--profile"]
    if not profiles:  # getShapesBuild: the first of each shape flag (std::multimap::find) makes profile 0
        single: dict[str, dict[str, str]] = {}
        for flag, which in shape_flags.items():
            first = next((a for a in args if a[0] == flag), None)
            if first is not None:
                single[which] = dict(item.rsplit(":", 1) for item in first[1].split(","))
                args.remove(first)
        profiles[0] = single
    for index in range(max(profiles) + 1):
        if not profiles.get(index):
            raise ValueError(f"Found invalid or missing shape spec at profile index {index}. ")
    if any(a[0] in shape_flags for a in args):
        raise ValueError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed. ")
    return [profiles[i] for i in sorted(profiles)]


def test_the_grammar_mirror_refuses_what_trtexec_refuses():
    """The mirror itself: the old one-triple-per-profile line is refused, as trtexec refuses it."""
    triple = ["--minShapes=x:1x1", "--optShapes=x:1x2", "--maxShapes=x:1x4"]
    assert parse_trtexec_profiles(["trtexec", *triple]) == [{"min": {"x": "1x1"}, "opt": {"x": "1x2"},
                                                             "max": {"x": "1x4"}}]
    with pytest.raises(ValueError, match="without --profile are not allowed"):
        parse_trtexec_profiles(["trtexec", *triple, *triple])
    with pytest.raises(ValueError, match="without --profile are not allowed"):  # a flag not right behind --profile
        parse_trtexec_profiles(["trtexec", "--profile=0", *triple[:2], "--stronglyTyped", triple[2]])
    with pytest.raises(ValueError, match="cannot be the same"):
        parse_trtexec_profiles(["trtexec", "--profile=0", *triple, "--profile=0", *triple])


def test_trtexec_line_for_two_profiles_passes_trtexec_grammar():
    """Defect 1. Break: one --minShapes/--optShapes/--maxShapes triple per profile without `--profile=i` (the old
    line) makes trtexec throw, and this parse with it."""
    cmd = trtexec_command("model.fp16.onnx", "model.fp16.plan", [ONLINE, OFFLINE], SPEC, "timing.cache", 512)
    profiles = parse_trtexec_profiles(cmd)
    assert len(profiles) == 2
    assert profiles[0]["max"] == {"input_ids": "8x48", "attention_mask": "8x48", "token_type_ids": "8x48",
                                  "patches": "8x64x48"}
    assert profiles[1]["min"]["input_ids"] == "8x8" and profiles[1]["opt"]["patches"] == "32x64x48"
    options = {arg.split("=", 1)[0] for arg in cmd[1:]}
    # every option is one trtexec knows (each grepped from sampleOptions.cpp)
    assert options <= {"--onnx", "--saveEngine", "--profile", "--minShapes", "--optShapes", "--maxShapes",
                       "--stronglyTyped", "--timingCacheFile", "--memPoolSize"}


@pytest.mark.parametrize("recipe", ["quickstart", "fashiongen-bert-base", "smoke"])
def test_every_recipe_builds_a_line_trtexec_accepts(recipe):
    from fbcompress.bundle.shapes import resolve_profiles
    from fbcompress.recipes import load_recipe

    profiles = resolve_profiles(load_recipe(recipe).export.profiles, max_positions=512)
    cmd = trtexec_command("model.fp16.onnx", "model.fp16.plan", profiles, SPEC)
    assert len(parse_trtexec_profiles(cmd)) == len(profiles)


# ---------------------------------------------------------------------------- 2. batches larger than a profile


def test_a_batch_above_every_profile_is_split_to_fit():
    """Defect 2. Break: picking one profile for the whole batch (the old `pick_profile` call) raises for any
    batch above 32 here, where eval scores 64 at a time."""
    def runs(batch, text, profiles=(ONLINE, OFFLINE)):
        return [(c.start, c.stop, c.profile, c.rows) for c in plan_chunks(list(profiles), batch, text)]

    assert runs(64, 20) == [(0, 32, 1, 32), (32, 64, 1, 32)]
    assert runs(70, 20) == [(0, 32, 1, 32), (32, 64, 1, 32), (64, 70, 0, 6)]  # the remainder fits online
    assert runs(3, 20) == [(0, 3, 0, 3)]
    rows = [i for start, stop, _, _ in runs(70, 20) for i in range(start, stop)]
    assert rows == list(range(70))  # every row exactly once, in order
    # a remainder below the only fitting profile's min batch is padded up to it
    long = Profile("long", (8, 16, 16), (49, 60, 64))
    assert runs(20, 55, (ONLINE, long)) == [(0, 16, 1, 16), (16, 20, 1, 8)]


def test_padded_remainder_rows_are_copies_and_are_dropped():
    import numpy as np
    import torch

    from fbcompress.runtime.tensorrt import _rows

    ids = np.arange(20).reshape(10, 2)
    assert _rows(ids, 8, 10, 4).tolist() == [[16, 17], [18, 19], [18, 19], [18, 19]]
    assert _rows(torch.from_numpy(ids), 0, 3, 3).tolist() == ids[:3].tolist()
    assert _rows(torch.from_numpy(ids), 9, 10, 2).tolist() == [[18, 19], [18, 19]]


def test_a_text_longer_than_every_profile_is_an_error_naming_them():
    with pytest.raises(FbError, match=r"text length 60 is outside every optimisation profile.*online: batch 1-8"):
        plan_chunks([ONLINE, OFFLINE], 4, 60)


# -------------------------------------------------------------------------- 4. timing cache from another GPU


class _Config:
    """A recorder for the two builder-config calls the decision uses (not TensorRT: the decision is ours)."""

    def __init__(self, accepts):
        self.accepts = accepts
        self.created: list[bytes] = []

    def create(self, blob: bytes):
        self.created.append(blob)
        return ("cache", blob)

    def attach(self, cache) -> bool:
        return self.accepts(cache[1])


def test_a_refused_timing_cache_falls_back_to_a_fresh_one_with_a_warning():
    """Defect 4. Break: ignoring set_timing_cache's False (the old code) keeps the refused cache, and the build
    serialises `get_timing_cache()`, which is None after a refusal."""
    from fbcompress.export.tensorrt_build import attach_timing_cache

    said: list[str] = []
    config = _Config(accepts=lambda blob: blob == b"")  # a cache from another GPU is refused
    cache, state = attach_timing_cache(b"other GPU", config.create, config.attach, said.append)
    assert cache == ("cache", b"") and state == "replaced (mismatch)"
    assert config.created == [b"other GPU", b""] and "another GPU" in said[0]
    config = _Config(accepts=lambda blob: True)
    assert attach_timing_cache(b"ours", config.create, config.attach, said.append) == (("cache", b"ours"), "loaded")
    assert attach_timing_cache(b"", config.create, config.attach, said.append)[1] == "fresh" and len(said) == 1
    with pytest.raises(FbError, match="fresh, empty timing cache"):
        attach_timing_cache(b"", _Config(lambda blob: False).create, _Config(lambda blob: False).attach, said.append)


# ------------------------------------------------------------------------------------------------- 7. logger


def test_build_log_filters_by_severity_and_keeps_errors_apart():
    """Defect 7. Break: appending every message (the old logger) puts VERBOSE lines in the log and the failure
    message then shows the last verbose lines instead of the errors."""
    from fbcompress.export.tensorrt_build import BuildLog, keep_message

    assert [keep_message(s) for s in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")] == [
        True, True, True, True, False]
    log = BuildLog()
    log.add("ERROR", "Could not find any implementation for node MatMul_12")
    for i in range(50):
        log.add("VERBOSE", f"tactic {i}")
    log.add("INFO", "build done")
    assert log.lines == ["[ERROR] Could not find any implementation for node MatMul_12", "[INFO] build done"]
    assert log.failure_summary() == "Could not find any implementation for node MatMul_12"
    assert BuildLog().failure_summary().startswith("no error was logged")


# -------------------------------------------------------------------------------------- 6. cuda:N, 11. smaller


def test_device_index_parses_cuda_n():
    """Defect 6 (the part that runs here): `--device cuda:N` names GPU N for build, contexts and execution."""
    from fbcompress.runtime.tensorrt import device_index

    assert device_index("cuda:3") == 3 and device_index("cuda") == 0 and device_index("cuda:1") == 1
    with pytest.raises(FbError, match="NVIDIA GPU"):
        device_index("cpu")
    with pytest.raises(FbError, match="must be a number"):
        device_index("cuda:x")


def test_same_capability_on_another_gpu_model_warns_without_refusing():
    """Defect 11. Break: comparing compute capability only (the old check) says nothing for an H100 engine on an
    H200; TensorRT itself warns then."""
    from fbcompress.runtime.tensorrt_env import engine_compatibility_problem, engine_compatibility_warning

    recorded = {"version": "10.13.0.35", "compute_capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3"}
    assert engine_compatibility_problem(recorded, "10.13.0.35", "9.0") is None
    assert "NVIDIA H100 80GB HBM3" in engine_compatibility_warning(recorded, "NVIDIA H200")
    assert engine_compatibility_warning(recorded, "NVIDIA H100 80GB HBM3") is None


def test_an_fb_warning_is_one_cli_line():
    """The CLI prints an FbWarning as `warning: ...` (no file:line), other warnings as Python does."""
    import click

    from fbcompress.commands.group import FbGroup

    @click.group(cls=FbGroup)
    def group():
        pass

    @group.command()
    def warn():
        warnings.warn("engine built on another GPU", FbWarning, stacklevel=1)

    result = CliRunner().invoke(group, ["warn"])
    assert result.exit_code == 0 and result.output.strip() == "warning: engine built on another GPU"


def test_tensorrt_cu13_is_in_the_version_lookup():
    """Defect 11. Break: without tensorrt-cu13 (TensorRT 11.4's wheel) the bench records no TensorRT version."""
    from fbcompress.evaluation.latency import TENSORRT_DISTRIBUTIONS

    assert "tensorrt-cu13" in TENSORRT_DISTRIBUTIONS and "tensorrt" in TENSORRT_DISTRIBUTIONS


def test_engine_io_dtypes_map_to_torch():
    """The binding dtype map, by TensorRT DataType name (INT8/BF16 outputs were refused before)."""
    from fbcompress.runtime.tensorrt import torch_dtype_name

    class DataType:
        def __init__(self, name):
            self.name = name

    assert [torch_dtype_name(DataType(n), "t") for n in ("FLOAT", "HALF", "INT64", "INT32", "BOOL")] == [
        "float32", "float16", "int64", "int32", "bool"]
    with pytest.raises(FbError, match="FP8"):
        torch_dtype_name(DataType("FP8"), "tensor logits")


def test_tensorrt_unavailable_names_what_is_missing():
    """Defect 11, the quickstart side: the real check (not the suite's stand-in) on this machine."""
    import importlib.util

    import torch

    from fbcompress.pipeline import quickstart as qs

    reason = qs.tensorrt_unavailable()
    if importlib.util.find_spec("tensorrt") is None:
        assert reason and "TensorRT is not installed" in reason
    elif not torch.cuda.is_available():
        assert reason == "no CUDA GPU is visible"
    else:
        assert reason is None


# --------------------------------------------------------------------------------- the build kit, no TensorRT


@pytest.fixture(scope="module")
def kit_bundle(trained_smoke, tmp_path_factory) -> Path:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: export builds engines, the kit-only path is not taken")
    out = tmp_path_factory.mktemp("kit") / "smoke"
    recipe_override = "export.profiles=[{name: online, batch: [1, 1, 8], text: [1, 8, 32]}, " \
                      "{name: offline, batch: [8, 32, 64], text: [8, 32, 32]}]"
    result = run("export", "--model", trained_smoke, "--target", "tensorrt", "--out", out, "--latency-runs", "0",
                 "--set", recipe_override)
    assert result.exit_code == 0, result.output
    assert "engines not built here" in result.output and "build_engines.sh" in result.output
    return out


def test_export_without_tensorrt_writes_the_build_kit(kit_bundle):
    """The build kit: TensorRT-ready ONNX per precision, profiles in the manifest, build_engines.sh whose trtexec
    lines pass trtexec's grammar for both profiles, and a README that shows it."""
    from fbcompress.export.build_kit import script_commands

    manifest = json.loads((kit_bundle / "manifest.json").read_text())
    kit = manifest["tensorrt_build_kit"]
    assert kit["engines_built_here"] is False and "TensorRT is not installed" in kit["not_built_because"]
    assert [(e["precision"], e["onnx"]) for e in kit["engines"]] == [("fp16", "model.fp16.onnx")]
    assert {"model.onnx", "model.fp16.onnx", "build_engines.sh"} <= set(manifest["files"])
    assert [p["name"] for p in manifest["shape_profiles"]] == ["online", "offline"]
    assert not any(rel.endswith(".plan") for rel in manifest["files"])
    script = (kit_bundle / "build_engines.sh").read_text()
    (command,) = script_commands(script)
    assert command[0] == "$TRTEXEC" and len(parse_trtexec_profiles(command)) == 2
    assert command == ["$TRTEXEC", *kit["engines"][0]["trtexec"][1:]]
    assert (kit_bundle / "build_engines.sh").stat().st_mode & 0o111
    readme = (kit_bundle / "README.md").read_text()
    assert "bash build_engines.sh" in readme and "Engines were not built where this bundle was exported" in readme


def test_build_script_runs_trtexec_with_its_lines(kit_bundle, tmp_path):
    """The script as a serving team runs it: with a stand-in trtexec on PATH that records its argv, every line
    reaches trtexec whole (backslash continuations, quoting) from inside the bundle; a missing trtexec is exit 2."""
    import os
    import subprocess

    bundle = tmp_path / "bundle"
    shutil.copytree(kit_bundle, bundle)
    recorder = tmp_path / "bin" / "trtexec"
    recorder.parent.mkdir()
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@" > "$ARGV_OUT"\n')
    recorder.chmod(0o755)
    env = {**os.environ, "PATH": f"{recorder.parent}:{os.environ['PATH']}", "ARGV_OUT": str(tmp_path / "argv")}
    done = subprocess.run(["bash", str(bundle / "build_engines.sh")], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cwd, *argv = (tmp_path / "argv").read_text().splitlines()
    kit = json.loads((bundle / "manifest.json").read_text())["tensorrt_build_kit"]
    assert Path(cwd) == bundle and argv == kit["engines"][0]["trtexec"][1:]
    env["PATH"] = "/usr/bin:/bin"
    env["TRTEXEC"] = str(tmp_path / "nowhere" / "trtexec")
    missing = subprocess.run(["bash", str(bundle / "build_engines.sh")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "trtexec not found" in missing.stderr


@pytest.mark.parametrize("mode, side, first", [("grid", 256, "1x256x256x3"), ("crop", 224, "1x64x224x224x3")])
def test_image_encoder_kit_lines_are_strongly_typed_and_pass_trtexecs_grammar(mode, side, first):
    """The encoder's engines in the kit: one profile over the recipe's image batches (crop mode: each image's 64
    crops on the second axis, the batch axis still the images'), strongly typed from the precision's own graph,
    picked by name in build_engines.sh; the Python build's profile is the same shapes."""
    from fbcompress.export.build_kit import EngineBuild, ImageEncoderBuild, render_script, script_commands

    builds = [ImageEncoderBuild(p, mode, side, 8, (1, 16, 64)) for p in ("fp16", "int8")]
    assert [(b.selector, b.onnx, b.plan) for b in builds] == [
        ("image_encoder_fp16", "image_encoder.fp16.onnx", "image_encoder.fp16.plan"),
        ("image_encoder_int8", "image_encoder.int8.onnx", "image_encoder.int8.plan")]
    low, opt, high = builds[0].shapes()["images"]
    assert "x".join(map(str, low)) == first and opt[0] == 16 and high[0] == 64 and low[1:] == high[1:]
    command = builds[1].command([ONLINE], SPEC, 512)
    (profile,) = parse_trtexec_profiles(command)
    assert profile == {"min": {"images": first}, "opt": {"images": "x".join(map(str, opt))},
                       "max": {"images": "x".join(map(str, high))}}
    assert "--stronglyTyped" in command and "--fp16" not in command and "--int8" not in command
    assert "--onnx=image_encoder.int8.onnx" in command and "--memPoolSize=workspace:512M" in command
    script = render_script([EngineBuild("fp16", "model.fp16.onnx", "model.fp16.plan"), *builds], [ONLINE], SPEC, 512)
    assert "wanted=${*:-fp16 image_encoder_fp16 image_encoder_int8}" in script
    assert [c[1] for c in script_commands(script)] == ["--onnx=model.fp16.onnx", "--onnx=image_encoder.fp16.onnx",
                                                       "--onnx=image_encoder.int8.onnx"]


# ------------------------------------------------------------------------------------- only with TensorRT + GPU


def _needs_tensorrt_and_gpu():
    pytest.importorskip("tensorrt", reason="needs TensorRT (pip package tensorrt) and an NVIDIA GPU")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")


def test_engine_scorer_owns_a_stream_and_splits_batches(trained_smoke, tiny_data, tmp_path):
    """Defects 2, 5, 6 on a GPU: the scorer runs on its own (non-default) stream, on the device named, and scores
    a batch larger than every profile."""
    _needs_tensorrt_and_gpu()
    import numpy as np
    import torch

    from fbcompress.export.onnx_export import parity_inputs
    from fbcompress.runtime.tensorrt import TrtScorer

    device = f"cuda:{torch.cuda.device_count() - 1}"
    out = tmp_path / "bundle"
    result = run("export", "--model", trained_smoke, "--target", "tensorrt", "--precision", "fp16", "--out", out,
                 "--device", device, "--engines", "require", "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    scorer = TrtScorer.open(out / "model.fp16.plan", device)
    assert scorer.stream.cuda_stream != 0 and scorer.device == torch.device(device)
    largest = max(p.batch[2] for p in scorer.profiles)
    inputs = parity_inputs(scorer.spec, largest * 2 + 1, 8, 100)
    logits = scorer.logits(inputs)
    assert logits.shape == (largest * 2 + 1, 2)
    assert np.allclose(logits[:1], scorer.logits({k: v[:1] for k, v in inputs.items()}), atol=1e-2)
