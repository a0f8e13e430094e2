"""ONNX Runtime backend of the `Scorer` protocol, for any `.onnx` file of an export bundle.

The file is hash-checked against the bundle manifest before a session is created, and the preprocessing (patch
spec) and tokenizer come from the bundle, so eval/check/bench score exactly what was exported and measured.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.bundle.shapes import INPUT_NAMES, Profile
from fbcompress.bundle.store import ORT_TRT_CACHE_DIR
from fbcompress.core.errors import BackendUnavailable, FbError
from fbcompress.modeling.dual_tower import TowerSpec
from fbcompress.modeling.model import PatchSpec

_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
           "tensor(float16)": np.float16}
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
TRT_EP_PRECISIONS = ("fp32", "fp16")


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise FbError(f"--device {device}: the device index must be a number (e.g. cuda:0)")
    return int(index)


def providers_for(device: str, available: list[str] | None = None,
                  tensorrt_options: dict[str, Any] | None = None) -> list[Any]:
    """ORT execution providers for `--device`: cpu | cuda[:N] | tensorrt[:N] | auto (best available, CPU last).

    `tensorrt_options` (see `tensorrt_provider_options`) replace the bare `device_id` of the TensorRT provider, so a
    session builds the recipe's profiles at the chosen precision instead of an FP32 engine shaped by warm-up inputs.
    A provider this onnxruntime does not list is `BackendUnavailable`: a benchmark skips that model, the rest runs.
    """
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    kind = device.split(":", 1)[0].lower()
    if kind == "trt":
        kind = "tensorrt"
    if kind == "auto":
        chosen = [p for p in (PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]) if p in available]
        return [*chosen, PROVIDER_NAMES["cpu"]]
    if kind not in PROVIDER_NAMES:
        raise FbError(f"--device {device} is not one of cpu, cuda[:N], tensorrt[:N], auto")
    if kind == "cpu":
        return [PROVIDER_NAMES["cpu"]]
    wanted = PROVIDER_NAMES[kind]
    if wanted not in available:
        raise BackendUnavailable(
            f"--device {device}: this onnxruntime has no {wanted} (available: {', '.join(available)}); "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu")
    options = {"device_id": _device_index(device)}
    chain: list[Any] = [(wanted, tensorrt_options if kind == "tensorrt" and tensorrt_options else options)]
    if kind == "tensorrt" and PROVIDER_NAMES["cuda"] in available:
        chain.append((PROVIDER_NAMES["cuda"], options))
    return [*chain, PROVIDER_NAMES["cpu"]]


def _ort_bool(value: bool) -> str:
    """ORT's Python binding parses TensorRT flags from strings and accepts only 'True'/'False' (or lower case):
    '1' is refused. Spelling them out here makes the recorded options exactly what ORT parsed."""
    return "True" if value else "False"


def profile_shapes_option(profiles: Sequence[Profile], spec: PatchSpec, which: int,
                          inputs: Sequence[str] = INPUT_NAMES) -> str:
    """One of `trt_profile_{min,opt,max}_shapes` (which = 0, 1, 2): `name:d1xd2,...` for every input of profile 0,
    then the same names again for profile 1, ... (ORT starts a new profile when an input name repeats)."""
    parts = []
    for profile in profiles:
        shapes = profile.tensor_shapes(spec)
        parts += [f"{name}:{'x'.join(str(d) for d in shapes[name][which])}" for name in inputs]
    return ",".join(parts)


def tensorrt_provider_options(profiles: Sequence[Profile], spec: PatchSpec, cache_dir: str | Path,
                              precision: str = "fp32", device_id: int = 0) -> dict[str, Any]:
    """Options for ORT's TensorRT provider that make its row comparable with the bundle's own engines.

    Why each: without explicit profiles the provider builds an engine for the first input shape and rebuilds it
    whenever a later shape falls outside (so warm-up and even timed runs may include engine builds); without
    `trt_fp16_enable` it builds FP32 while the bundle's engines are FP16; without the caches every session pays the
    build again. Engines go to `<cache_dir>/<precision>`, the timing cache to `<cache_dir>`. Every dynamic input
    must be listed in each profile (ORT's constraint), hence all four inputs, patches included.
    """
    if precision not in TRT_EP_PRECISIONS:
        raise FbError(f"ONNX Runtime's TensorRT provider is run at {' or '.join(TRT_EP_PRECISIONS)} here, "
                      f"not {precision}")
    cache_dir = Path(cache_dir)
    options: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": _ort_bool(precision == "fp16"),
        "trt_engine_cache_enable": _ort_bool(True),
        "trt_engine_cache_path": str(cache_dir / precision),
        "trt_timing_cache_enable": _ort_bool(True),
        "trt_timing_cache_path": str(cache_dir),
    }
    if profiles:
        for which, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = profile_shapes_option(profiles, spec, which)
    return options


def bundle_tensorrt_options(bundle: Any, precision: str = "fp32", device_id: int = 0) -> dict[str, Any]:
    """`tensorrt_provider_options` from a bundle's manifest (its `shape_profiles` and `patch_spec`), caching under
    `<bundle>/ort-trt-cache/`: the profiles are the recipe's, the same the bundle's `.plan` files were built with."""
    profiles = [Profile.from_dict(item.model_dump()) for item in bundle.typed.shape_profiles]
    return tensorrt_provider_options(profiles, bundle.spec, Path(bundle.root) / ORT_TRT_CACHE_DIR, precision,
                                     device_id)


def session_options(threads: int | None = None) -> Any:
    """The options of every ONNX Runtime session fbcompress opens: every graph optimisation, ORT's warnings
    (unused initializers and the like) silenced as noise to a user, and, for benchmarks, a pinned intra-op pool
    (None keeps ORT's choice, one thread per core).

    `session.x64quantprecision`: on x86 CPUs without VNNI (AVX2, AVX-512) ORT's u8s8 integer kernels sum pairs of
    products into int16 and saturate (ORT PR #12088). With 8-bit weights outside [-64, 63], as the symmetric QDQ
    graphs meant for TensorRT have, the result is another function: the INT8 image encoder's features were off by
    70% of their range on an AVX2 VM (3% with this option). The option widens those kernels where it matters; the CPU
    files `quantize` writes for such CPUs keep 7-bit weights, which it leaves alone, and VNNI CPUs are unaffected."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def cpu_session(model: Any, threads: int | None = None) -> Any:
    """A CPU session of an ONNX file path or an in-memory `onnx.ModelProto` (quantization tries graphs before
    writing them)."""
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])


class OrtGraph:
    """One ONNX graph in an `onnxruntime.InferenceSession` on the providers `device` asks for; feeds only the
    inputs the graph declares, in its dtypes. The scorer and the query encoder are both this."""

    def __init__(self, path: Path, name: str, device: str = "cpu", threads: int | None = None,
                 tensorrt_options: dict[str, Any] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name
        options = session_options(threads)
        self.tensorrt_options = tensorrt_options
        providers = providers_for(device, tensorrt_options=tensorrt_options)
        try:
            # ORT prints "EP Error ... Falling back" to stdout when a listed provider fails to load; stdout may be a
            # JSON document (`--json -`), so its chatter goes to stderr
            with contextlib.redirect_stdout(sys.stderr):
                self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise FbError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        used = self.session.get_providers()[0]
        short = {v: k for k, v in PROVIDER_NAMES.items()}.get(used, used)
        self.backend = f"onnxruntime-{short}"
        self.providers = self.session.get_providers()
        self._inputs = [(i.name, _DTYPES.get(i.type, np.float32)) for i in self.session.get_inputs()]

    def feed(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The graph's declared inputs as contiguous numpy arrays of the graph's dtypes."""
        feed = {}
        for name, dtype in self._inputs:
            if name not in inputs:
                raise FbError(f"{self.path} needs input '{name}', which the caller did not provide")
            value = inputs[name]
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            feed[name] = np.ascontiguousarray(value, dtype=dtype)
        return feed

    def first_output(self, inputs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.session.run(None, self.feed(inputs))[0], dtype=np.float32)


class OrtScorer(OrtGraph):
    """The scorer (`model*.onnx`) in ONNX Runtime."""

    parity: dict[str, Any] | None = None  # set when the graph was exported from a checkpoint just now

    def __init__(self, path: Path, spec: PatchSpec, tokenizer_dir: Path, name: str, device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None,
                 tensorrt_options: dict[str, Any] | None = None):
        super().__init__(path, name, device, threads, tensorrt_options)
        self.spec = spec
        self.tokenizer_dir = tokenizer_dir
        self.precision = precision

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
             trt_precision: str = "fp32") -> OrtScorer:
        """Open a bundle's `.onnx` file after checking its hash (and the tokenizer's) against the manifest.

        On `tensorrt[:N]` the TensorRT provider gets the bundle's profiles, `trt_precision` and its cache folder
        (`bundle_tensorrt_options`)."""
        from fbcompress.bundle.store import verify_bundle_file

        bundle, rel = verify_bundle_file(path)
        tokenizer_dir = bundle.verify_tokenizer()
        entry = bundle.models.get(rel, {})
        trt = None
        if device.split(":", 1)[0].lower() in ("tensorrt", "trt"):
            trt = bundle_tensorrt_options(bundle, trt_precision, _device_index(device))
        return cls(Path(path), bundle.spec, tokenizer_dir, str(path), device, str(entry.get("precision", "fp32")),
                   threads, trt)

    def logits(self, inputs: dict[str, Any]) -> np.ndarray:
        return self.first_output(inputs)


class OrtQueryEncoder(OrtGraph):
    """A query encoder graph (the three text inputs → `embedding` [B, E]) in ONNX Runtime (`runtime/embedding.py`
    says what a query encoder is)."""

    def __init__(self, path: Path, tower: TowerSpec, tokenizer_dir: Path, name: str, device: str = "cpu",
                 threads: int | None = None):
        super().__init__(path, name, device, threads)
        self.tower = tower
        self.tokenizer_dir = Path(tokenizer_dir)

    def queries(self, inputs: dict[str, Any]) -> np.ndarray:
        return self.first_output(inputs)
