"""The schema of a bundle's `manifest.json`: the parts that readers index or iterate, as pydantic models.

Readers index these parts directly (`files[rel].sha256`, `models.items()`, `int(max_text_positions)`, the profiles'
[min, opt, max]), so a hand-edited or corrupted manifest must fail when the bundle is opened, in one line naming
the key, not as a KeyError in whichever stage reads it first. Stages add keys of their own (`quantization`,
`tensorrt_build_kit`, a user's notes): unknown keys are kept as they are (`extra="allow"`), only what is declared
here is typed. Strict mode: `true` is not a number and "3" is not an integer, as in the JSON the writer produces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from fbcompress.core.errors import FbError, validation_error_line
from fbcompress.modeling.model import PatchSpec

FORMAT = "fbcompress-bundle"
FORMAT_VERSION = 1

Number = float  # strict: an int is a number, a bool or a numeric string is not
PositiveInt = Annotated[StrictInt, Field(ge=1)]
MinOptMax = Annotated[list[StrictInt], Field(min_length=3, max_length=3)]
JsonObject = dict[str, Any]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FileEntry(_Part):
    sha256: StrictStr
    role: StrictStr | None = None


class LatencyCase(_Part):
    batch: Number
    text: Number
    p50_ms: Number


class LatencyRecord(_Part):
    machine: JsonObject = {}
    cases: list[LatencyCase] = []


class ModelEntry(_Part):
    role: StrictStr | None = None
    parity: JsonObject = {}
    accuracy: JsonObject = {}
    tensorrt: JsonObject = {}
    io: JsonObject = {}
    latency: LatencyRecord = LatencyRecord()


class TensorDescription(_Part):
    name: StrictStr
    dtype: StrictStr
    shape: list[Any]


class ShapeProfileEntry(_Part):
    name: StrictStr
    batch: MinOptMax
    text: MinOptMax


class TritonEntry(_Part):
    model_name: StrictStr
    platform: StrictStr
    max_batch_size: StrictInt


class RecipeEntry(_Part):
    export: JsonObject = {}


class BundleManifest(_Part):
    format: Literal["fbcompress-bundle"]
    format_version: StrictInt = 0
    files: dict[str, FileEntry]
    models: dict[str, ModelEntry] = {}
    source: JsonObject = {}
    recipe: RecipeEntry = RecipeEntry()
    tokenizer: JsonObject = {}
    preprocessing: JsonObject = {}
    triton: TritonEntry | None = None
    inputs: list[TensorDescription] = []
    outputs: list[TensorDescription] = []
    shape_profiles: list[ShapeProfileEntry] = []
    history: list[Any] = []
    max_text_positions: PositiveInt | None = None  # absent: the model's own max_text_len


class PatchSpecEntry(BaseModel):
    """`patch_spec`: PatchSpec is a plain dataclass, so a corrupted value would otherwise load and only fail later,
    as a TypeError in the preprocessing or a shape error inside the runtime."""

    model_config = ConfigDict(extra="forbid", strict=True)

    patch_encoder: Literal["pixels", "features"]
    patch_dim: PositiveInt
    num_patches: PositiveInt
    image_size: PositiveInt
    grid: PositiveInt
    max_text_len: PositiveInt
    feature_encoder: str | None = Field(None, pattern="^[0-9a-f]{64}$")  # the image encoder's sha256 (features)
    feature_mode: Literal["grid", "crop"] | None = None
    feature_input_size: PositiveInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PatchSpecEntry:
        patch = self.image_size // self.grid
        pixels_wrong = self.patch_encoder == "pixels" and (
            self.image_size % self.grid != 0 or self.patch_dim != 3 * patch * patch
        )
        if self.num_patches != self.grid**2 or pixels_wrong:
            raise ValueError(
                f"inconsistent: num_patches {self.num_patches}, grid {self.grid}, image_size {self.image_size}, "
                f"patch_dim {self.patch_dim}"
            )
        return self


def parse_manifest(raw: object, where: str) -> BundleManifest:
    """`raw` (parsed JSON) checked against the schema; one FbError line naming the first bad key otherwise. A
    newer bundle format is named as such, so the user knows to upgrade rather than to re-export."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FbError(f"{where} is not an fbcompress bundle manifest (format is not '{FORMAT}')")
    version = raw.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FbError(
            f"{where} has bundle format {version}; this fbcompress reads up to {FORMAT_VERSION} (upgrade fbcompress)"
        )
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise FbError(validation_error_line(where, exc)) from None


def parse_patch_spec(manifest: dict, where: str) -> PatchSpec:
    """The manifest's `patch_spec` as the PatchSpec the model was trained with, checked."""
    raw = manifest.get("patch_spec")
    if not isinstance(raw, dict):
        raise FbError(f"{where} has no valid patch_spec (missing or not an object)")
    try:
        entry = PatchSpecEntry.model_validate(raw)
    except ValidationError as exc:
        raise FbError(validation_error_line(where, exc, prefix="patch_spec")) from None
    return PatchSpec(**entry.model_dump())
