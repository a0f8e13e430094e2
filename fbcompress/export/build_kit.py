"""The TensorRT engine build kit: what a bundle carries so engines can be built on the serving GPU.

Users often export on a training box and build engines where they serve; an engine only runs on the GPU model and
TensorRT version that built it anyway. So `export --target tensorrt` always writes, beside the TensorRT-ready
ONNX graphs (`model.onnx` FP32, `model.fp16.onnx`, `model.int8.trt.onnx` QDQ), `build_engines.sh`: one trtexec
line per precision with the recipe's shape profiles, runnable as is inside the bundle on the target GPU. Where
TensorRT and a GPU are present the engines are also built here; the script is then the recorded equivalent.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from fbcompress.bundle.names import IMAGE_ENCODER_FP16_FILE, IMAGE_ENCODER_INT8_FILE, TIMING_CACHE
from fbcompress.bundle.shapes import Profile, format_command, shape_arg, trtexec_command
from fbcompress.modeling.image_encoder import input_shape
from fbcompress.modeling.model import PatchSpec

ROLE_BUILD_SCRIPT = "tensorrt-build-script"
IMAGE_INPUT = "images"  # image_encoder.onnx's input (export/image_encoder_export.py)


@dataclass(frozen=True)
class EngineBuild:
    """One engine of the kit: its precision, the ONNX it is built from, the plan file it writes."""

    precision: str
    onnx: str
    plan: str

    @property
    def selector(self) -> str:
        """The name that picks this engine in `bash build_engines.sh NAME ...`."""
        return self.precision

    def command(self, profiles: Sequence[Profile], spec: PatchSpec | None, workspace_mib: int | None) -> list[str]:
        """The trtexec line; `spec` None for a query encoder (its text inputs alone)."""
        return trtexec_command(self.onnx, self.plan, profiles, spec, TIMING_CACHE, workspace_mib)


@dataclass(frozen=True)
class ImageEncoderBuild:
    """An engine of `image_encoder.onnx` (features models): images in, patch features out, for the offline encoding
    of the catalogue. Strongly typed like the scorer's: FP16 from `image_encoder.fp16.onnx` (export), INT8 from the
    QDQ `image_encoder.int8.onnx` that `quantize` writes only when the end-to-end guard held. One profile over the
    recipe's `export.image_encoder_batch` (images: min, opt, max)."""

    precision: str  # fp16 | int8
    mode: str
    input_size: int
    grid: int
    batch: tuple[int, int, int]

    @property
    def selector(self) -> str:
        return f"image_encoder_{self.precision}"

    @property
    def onnx(self) -> str:
        return image_encoder_source(self.precision)

    @property
    def plan(self) -> str:
        return image_encoder_engine(self.precision)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """min/opt/max of the graph input, for the Python build's profile and the trtexec line alike."""
        low, opt, high = (input_shape(self.mode, self.input_size, self.grid, n) for n in self.batch)
        return {IMAGE_INPUT: (low, opt, high)}

    def command(self, profiles: Sequence[Profile], spec: PatchSpec, workspace_mib: int | None) -> list[str]:
        del profiles, spec  # the scorer's shapes; the encoder has its own
        shapes = self.shapes()
        cmd = ["trtexec", f"--onnx={self.onnx}", f"--saveEngine={self.plan}", f"--minShapes={shape_arg(shapes, 0)}",
               f"--optShapes={shape_arg(shapes, 1)}", f"--maxShapes={shape_arg(shapes, 2)}", "--stronglyTyped",
               f"--timingCacheFile={TIMING_CACHE}"]
        if workspace_mib:
            cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
        return cmd


def image_encoder_source(precision: str) -> str:
    return {"fp16": IMAGE_ENCODER_FP16_FILE, "int8": IMAGE_ENCODER_INT8_FILE}[precision]


def image_encoder_engine(precision: str) -> str:
    return f"image_encoder.{precision}.plan"


def render_script(builds: Sequence[EngineBuild | ImageEncoderBuild], profiles: Sequence[Profile],
                  spec: PatchSpec | None, workspace_mib: int | None) -> str:
    """A bash script that builds every engine of the kit from inside the bundle, stopping at the first failure.

    `TRTEXEC` overrides where trtexec is (NVIDIA's containers ship it in /usr/src/tensorrt/bin, not on PATH).
    """
    lines = [
        "#!/usr/bin/env bash",
        "# Build this bundle's TensorRT engines on the GPU that will serve them (engines are tied to the GPU model",
        "# and TensorRT version that build them). Written by `fbcompress export --target tensorrt`; run it inside",
        "# the bundle: bash build_engines.sh [name ...]   (default: every engine below)",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
        'if [ ! -x "$TRTEXEC" ]; then',
        '  echo "error: trtexec not found (put TensorRT\'s bin/ on PATH or set TRTEXEC=/path/to/trtexec)" >&2',
        "  exit 2",
        "fi",
        f"wanted=${{*:-{' '.join(b.selector for b in builds)}}}",
        "",
    ]
    for build in builds:
        command = format_command(build.command(profiles, spec, workspace_mib)).replace("trtexec", '"$TRTEXEC"', 1)
        lines += [
            f"if [[ \" $wanted \" == *\" {build.selector} \"* ]]; then",
            f"  echo \"building {build.plan} from {build.onnx} ...\" >&2",
            "  " + command.replace("\n", "\n  "),
            "fi",
        ]
    lines += ["", f"echo \"done: {' '.join(shlex.quote(b.plan) for b in builds)} (as asked)\" >&2", ""]
    return "\n".join(lines)


def script_commands(text: str) -> list[list[str]]:
    """The trtexec argv lists in a rendered script (for tests and for the manifest), backslash lines joined."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.strip())[0:] for line in joined.splitlines() if line.strip().startswith('"$TRTEXEC"')]
