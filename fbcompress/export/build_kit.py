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

from fbcompress.bundle.names import IMAGE_ENCODER_FILE, TIMING_CACHE
from fbcompress.bundle.shapes import Profile, format_command, trtexec_command
from fbcompress.modeling.model import PatchSpec

ROLE_BUILD_SCRIPT = "tensorrt-build-script"


@dataclass(frozen=True)
class EngineBuild:
    """One engine of the kit: its precision, the ONNX it is built from, the plan file it writes."""

    precision: str
    onnx: str
    plan: str

    def command(self, profiles: Sequence[Profile], spec: PatchSpec, workspace_mib: int | None) -> list[str]:
        return trtexec_command(self.onnx, self.plan, profiles, spec, TIMING_CACHE, workspace_mib)


@dataclass(frozen=True)
class ImageEncoderBuild:
    """The FP16 engine of `image_encoder.onnx` (features models): images in, patch features out, for the offline
    encoding of the catalogue. `rows_per_image` is grid*grid in crop mode (the graph takes every image's crops)."""

    input_size: int
    batch: tuple[int, int, int]  # images: min, opt, max
    rows_per_image: int = 1
    precision: str = "image_encoder"  # the script's selector (`bash build_engines.sh image_encoder`)
    onnx: str = IMAGE_ENCODER_FILE
    plan: str = "image_encoder.fp16.plan"

    def command(self, profiles: Sequence[Profile], spec: PatchSpec, workspace_mib: int | None) -> list[str]:
        del profiles, spec  # the scorer's shapes; the encoder has its own
        side = self.input_size
        shapes = [f"images:{n * self.rows_per_image}x{side}x{side}x3" for n in self.batch]
        cmd = ["trtexec", f"--onnx={self.onnx}", f"--saveEngine={self.plan}", f"--minShapes={shapes[0]}",
               f"--optShapes={shapes[1]}", f"--maxShapes={shapes[2]}", "--fp16", f"--timingCacheFile={TIMING_CACHE}"]
        if workspace_mib:
            cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
        return cmd


def render_script(builds: Sequence[EngineBuild | ImageEncoderBuild], profiles: Sequence[Profile], spec: PatchSpec,
                  workspace_mib: int | None) -> str:
    """A bash script that builds every engine of the kit from inside the bundle, stopping at the first failure.

    `TRTEXEC` overrides where trtexec is (NVIDIA's containers ship it in /usr/src/tensorrt/bin, not on PATH).
    """
    lines = [
        "#!/usr/bin/env bash",
        "# Build this bundle's TensorRT engines on the GPU that will serve them (engines are tied to the GPU model",
        "# and TensorRT version that build them). Written by `fbcompress export --target tensorrt`; run it inside",
        "# the bundle: bash build_engines.sh [precision ...]   (default: every precision below)",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
        'if [ ! -x "$TRTEXEC" ]; then',
        '  echo "error: trtexec not found (put TensorRT\'s bin/ on PATH or set TRTEXEC=/path/to/trtexec)" >&2',
        "  exit 2",
        "fi",
        f"wanted=${{*:-{' '.join(b.precision for b in builds)}}}",
        "",
    ]
    for build in builds:
        command = format_command(build.command(profiles, spec, workspace_mib)).replace("trtexec", '"$TRTEXEC"', 1)
        lines += [
            f"if [[ \" $wanted \" == *\" {build.precision} \"* ]]; then",
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
