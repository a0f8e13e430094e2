"""ONNX Runtime backend of the `Scorer` protocol, for any `.onnx` file of an export bundle.

The file is hash-checked against the bundle manifest before a session is created, and the preprocessing (patch
spec) and tokenizer come from the bundle, so eval/check/bench score exactly what was exported and measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.errors import FbError
from fbcompress.model import PatchSpec

_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
           "tensor(float16)": np.float16}
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise FbError(f"--device {device}: the device index must be a number (e.g. cuda:0)")
    return int(index)


def providers_for(device: str, available: list[str] | None = None) -> list[Any]:
    """ORT execution providers for `--device`: cpu | cuda[:N] | tensorrt[:N] | auto (best available, CPU last)."""
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
        raise FbError(f"--device {device}: this onnxruntime has no {wanted} (available: {', '.join(available)}); "
                      "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu")
    options = {"device_id": _device_index(device)}
    chain: list[Any] = [(wanted, options)]
    if kind == "tensorrt" and PROVIDER_NAMES["cuda"] in available:
        chain.append((PROVIDER_NAMES["cuda"], options))
    return [*chain, PROVIDER_NAMES["cpu"]]


class OrtScorer:
    """Scores through an `onnxruntime.InferenceSession`; feeds only the inputs the graph declares."""

    parity: dict[str, Any] | None = None  # set when the graph was exported from a checkpoint just now

    def __init__(self, path: Path, spec: PatchSpec, tokenizer_dir: Path, name: str, device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.spec = spec
        self.tokenizer_dir = tokenizer_dir
        self.name = name
        self.precision = precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise to a user
        if threads:  # benchmarks pin the intra-op pool; None keeps ORT's choice (one thread per core)
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers_for(device))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise FbError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        used = self.session.get_providers()[0]
        short = {v: k for k, v in PROVIDER_NAMES.items()}.get(used, used)
        self.backend = f"onnxruntime-{short}"
        self.providers = self.session.get_providers()
        self._inputs = [(i.name, _DTYPES.get(i.type, np.float32)) for i in self.session.get_inputs()]

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> OrtScorer:
        """Open a bundle's `.onnx` file after checking its hash (and the tokenizer's) against the manifest."""
        from fbcompress.export.bundle import verify_bundle_file

        bundle, rel = verify_bundle_file(path)
        tokenizer_dir = bundle.verify_tokenizer()
        entry = bundle.models.get(rel, {})
        return cls(Path(path), bundle.spec, tokenizer_dir, str(path), device, str(entry.get("precision", "fp32")),
                   threads)

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

    def logits(self, inputs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.session.run(None, self.feed(inputs))[0], dtype=np.float32)
