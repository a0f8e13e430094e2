"""Model I/O description, shape profiles and the `trtexec` command line: pure data, no TensorRT needed.

Everything a serving stack needs to know about tensor shapes is derived here from the model's `PatchSpec` and the
recipe's `export.profiles`, so the manifest, the TensorRT builder, the Triton config and the README cannot drift
apart. Kept free of TensorRT so it is unit-tested on machines without a GPU.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fbcompress.core.errors import FbError
from fbcompress.modeling.model import PatchSpec

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PATCH_INPUT = "patches"
INPUT_NAMES = (*TEXT_INPUTS, PATCH_INPUT)
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
TEXT_AXIS = "text"


def input_specs(spec: PatchSpec) -> list[dict]:
    """The design.md model inputs, with symbolic names for the dynamic axes (as in the ONNX graph)."""
    text_doc = {
        "input_ids": "WordPiece ids of `[CLS] text [SEP]`, right-padded with [PAD]=0 to the batch's longest text",
        "attention_mask": "1 for real tokens, 0 for padding",
        "token_type_ids": "all 0 (segment A); the model gives image tokens segment 1 itself",
    }
    specs = [
        {"name": name, "dtype": "int64", "shape": [BATCH_AXIS, TEXT_AXIS], "description": text_doc[name]}
        for name in TEXT_INPUTS
    ]
    what = "raw pixel patches scaled to [-1, 1]" if spec.patch_encoder == "pixels" else "precomputed patch features"
    specs.append({
        "name": PATCH_INPUT,
        "dtype": "float32",
        "shape": [BATCH_AXIS, spec.num_patches, spec.patch_dim],
        "description": f"{spec.num_patches} image patches, {what} (see preprocessing)",
    })
    return specs


def output_specs() -> list[dict]:
    return [{
        "name": OUTPUT_NAME,
        "dtype": "float32",
        "shape": [BATCH_AXIS, 2],
        "description": "alignment logits; match score = softmax(logits)[:, 1]",
    }]


@dataclass(frozen=True)
class Profile:
    """A resolved optimisation profile: [min, opt, max] for batch size and text length."""

    name: str
    batch: tuple[int, int, int]
    text: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"name": self.name, "batch": list(self.batch), "text": list(self.text)}

    @classmethod
    def from_dict(cls, payload: dict) -> Profile:
        return cls(str(payload["name"]), tuple(payload["batch"]), tuple(payload["text"]))  # type: ignore[arg-type]

    def fits(self, batch: int, text: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.text[0] <= text <= self.text[2]

    def tensor_shapes(self, spec: PatchSpec | None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...],
                                                                       tuple[int, ...]]]:
        """Per input: (min, opt, max) full tensor shapes, as TensorRT's `set_shape` and trtexec want them. Without a
        patch spec (a query encoder: text alone), the text inputs only."""
        out: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for name in TEXT_INPUTS:
            out[name] = tuple((b, t) for b, t in zip(self.batch, self.text, strict=True))  # type: ignore[assignment]
        if spec is not None:
            out[PATCH_INPUT] = tuple((b, spec.num_patches, spec.patch_dim)  # type: ignore[assignment]
                                     for b in self.batch)
        return out


def resolve_profiles(profiles: Iterable, max_positions: int, key: str = "export.profiles") -> list[Profile]:
    """Recipe profiles → `Profile`s, refusing text lengths the model's position table (or a query encoder's query
    length) cannot hold; `key` names the recipe setting in messages."""
    out = []
    for item in profiles:
        prof = Profile(item.name, tuple(item.batch), tuple(item.text))  # type: ignore[arg-type]
        if prof.text[2] > max_positions:
            raise FbError(
                f"export profile '{prof.name}': text max {prof.text[2]} exceeds the model's "
                f"{max_positions} text positions (lower {key}[].text in the recipe)"
            )
        out.append(prof)
    if not out:
        raise FbError(f"the recipe's {key} is empty: at least one shape profile is needed")
    return out


def pick_profile(profiles: Sequence[Profile], batch: int, text: int) -> int | None:
    """Index of the profile to run (batch, text) under: among those that fit, the one with the smallest maxima.

    The tightest profile is the one TensorRT tuned closest to this shape, so it is usually the fastest.
    """
    fitting = [i for i, p in enumerate(profiles) if p.fits(batch, text)]
    if not fitting:
        return None
    return min(fitting, key=lambda i: (profiles[i].batch[2] * profiles[i].text[2], i))


def describe_profiles(profiles: Sequence[Profile]) -> str:
    return "; ".join(f"{p.name}: batch {p.batch[0]}-{p.batch[2]} x text {p.text[0]}-{p.text[2]}" for p in profiles)


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of a batch run under profile `profile` as a batch of `rows` (>= stop - start: a remainder
    below the profile's min batch is padded with copies of its last row, whose scores are dropped)."""

    start: int
    stop: int
    profile: int
    rows: int


def plan_chunks(profiles: Sequence[Profile], batch: int, text: int) -> list[Chunk]:
    """Split a batch of `batch` rows at text length `text` into runs that fit the engine's profiles.

    An engine only runs shapes inside one of its profiles, while `eval` and `check` score in batches of 64: rows
    beyond the largest profile's max batch are run as several calls, each under the tightest profile that fits.
    A text length no profile covers cannot be split away, so it is an error that names the profiles.
    """
    for_text = [i for i, p in enumerate(profiles) if p.text[0] <= text <= p.text[2]]
    if not for_text:
        raise FbError(f"text length {text} is outside every optimisation profile of this engine "
                      f"({describe_profiles(profiles)}); add a profile to the recipe's export.profiles and rebuild")
    largest = max(profiles[i].batch[2] for i in for_text)
    smallest_min = min(for_text, key=lambda i: (profiles[i].batch[0], i))
    chunks: list[Chunk] = []
    start = 0
    while start < batch:
        stop = min(batch, start + largest)
        index = pick_profile(profiles, stop - start, text)
        if index is None:  # a remainder below every fitting profile's min batch: pad it up to the smallest min
            index = smallest_min
        chunks.append(Chunk(start, stop, index, max(stop - start, profiles[index].batch[0])))
        start = stop
    return chunks


def shape_arg(shapes: dict[str, tuple], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in shapes.items())


def trtexec_command(
    onnx_file: str | Path,
    plan_file: str | Path,
    profiles: Sequence[Profile],
    spec: PatchSpec | None,
    timing_cache: str | Path = "timing.cache",
    workspace_mib: int | None = None,
) -> list[str]:
    """The `trtexec` equivalent of the Python build, strongly typed so precision comes from the ONNX.

    Each profile is `--profile=i` followed directly by its --minShapes/--optShapes/--maxShapes: trtexec
    (samples/common/sampleOptions.cpp, `getOptimizationProfiles`) reads the three shape flags in the argv slots
    right behind `--profile=i`, and refuses shape flags left over ("Multiple --minShapes/--optShapes/--maxShapes
    without --profile are not allowed").
    """
    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan_file}"]
    for index, profile in enumerate(profiles):
        shapes = profile.tensor_shapes(spec)
        cmd += [f"--profile={index}", f"--minShapes={shape_arg(shapes, 0)}", f"--optShapes={shape_arg(shapes, 1)}",
                f"--maxShapes={shape_arg(shapes, 2)}"]
    cmd += ["--stronglyTyped", f"--timingCacheFile={timing_cache}"]
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    return cmd


def format_command(cmd: Sequence[str]) -> str:
    """A copy-pasteable shell line, continued with backslashes: one shape flag per line, for readability."""
    lines: list[list[str]] = [[]]
    for part in (shlex.quote(p) for p in cmd):
        if part.startswith(("--profile", "--minShapes", "--optShapes", "--maxShapes", "--stronglyTyped")):
            lines.append([])
        lines[-1].append(part)
    return " \\\n    ".join(" ".join(line) for line in lines if line)
