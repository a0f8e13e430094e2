"""TensorRT backend of the `Scorer` protocol for a bundle's `.plan` engine (dynamic shapes, several profiles), and
the runner of the image encoder's engine.

Before deserialising, the engine file is hash-checked against the manifest and the TensorRT version and GPU compute
capability it was built with are compared to this machine's: a mismatched engine is refused with one line instead
of crashing (or silently mis-running) inside TensorRT; the same capability on another GPU model is a warning.

Per call: split the batch into runs that fit the engine's profiles (`shapes.plan_chunks`: `eval` scores in batches
of 64, engines often stop below), pick the tightest profile for each, `set_input_shape` for every input, bind device
buffers with `set_tensor_address`, run `execute_async_v3`. Why a stream of our own: outside a stream context
torch's current stream is the legacy default stream (handle 0), and `enqueueV3`'s documentation warns that it adds
synchronisations; copies, execution and the final synchronise all go on the scorer's stream. Why the device
context: TensorRT works on the calling thread's current CUDA device, so deserialising, creating contexts and
executing all happen under `torch.cuda.device(cuda:N)` for the GPU the user named. One execution context per
profile is created lazily, so switching between online and offline shapes never re-selects a profile on a busy
context. Device buffers are torch CUDA tensors (torch is a project dependency), so no pycuda/cuda-python is needed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.bundle.shapes import Profile, plan_chunks
from fbcompress.core.errors import FbError, FbWarning
from fbcompress.modeling.model import PatchSpec
from fbcompress.runtime.tensorrt_env import (
    engine_compatibility_problem,
    engine_compatibility_warning,
    gpu_identity,
    import_tensorrt,
)

# TensorRT DataType name → torch dtype name: the engine's I/O types this runner can bind.
TORCH_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                     "INT8": "int8", "BOOL": "bool"}


def device_index(device: str) -> int:
    """The GPU index of `--device cuda[:N]` (also `tensorrt[:N]`, `trt[:N]`, `auto`)."""
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "tensorrt", "trt", "auto"):
        raise FbError(f"--device {device}: TensorRT engines run on an NVIDIA GPU (use --device cuda[:N])")
    if index and not index.isdigit():
        raise FbError(f"--device {device}: the device index must be a number")
    return int(index or 0)


def torch_dtype_name(trt_dtype: Any, where: str) -> str:
    """torch dtype name for a TensorRT DataType (by its enum name, so it is checked without TensorRT)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TORCH_DTYPE_NAMES:
        raise FbError(f"{where} has TensorRT dtype {name}, not supported by this runner")
    return TORCH_DTYPE_NAMES[name]


class TrtEngine:
    """A deserialised `.plan` on one GPU: compatibility checked first, one execution context per profile, inputs
    bound from host or device arrays on the engine's own stream. `TrtScorer` and `TrtImageEncoder` add what their
    graph's inputs mean."""

    def __init__(self, path: Path, name: str, recorded: dict[str, Any], device: str = "cuda"):
        import torch

        index = device_index(device)
        trt = import_tensorrt()
        here = gpu_identity(index)
        problem = engine_compatibility_problem(recorded, str(trt.__version__), here["compute_capability"])
        if problem:
            raise FbError(f"refusing {path}: {problem}")
        caution = engine_compatibility_warning(recorded, here["gpu"])
        if caution:
            warnings.warn(f"{Path(path).name}: {caution}", FbWarning, stacklevel=3)
        self.trt = trt
        self.torch = torch
        self.device = torch.device("cuda", index)
        self.path = Path(path)
        self.name = name
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FbError(f"TensorRT could not deserialise {path} (corrupt, or built by another TensorRT)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._contexts: dict[int, Any] = {}

    def profile_shapes(self, tensor: str, index: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """min, opt, max shape of an input in optimisation profile `index`, as the engine records them."""
        low, opt, high = self.engine.get_tensor_profile_shape(tensor, index)
        return tuple(int(d) for d in low), tuple(int(d) for d in opt), tuple(int(d) for d in high)

    def _context(self, index: int):
        if index not in self._contexts:
            context = self.engine.create_execution_context()
            if context is None:
                raise FbError(f"{self.path.name}: TensorRT could not create an execution context (out of GPU memory?)")
            if not context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise FbError(f"{self.path.name}: TensorRT refused optimisation profile {index}")
            self.stream.synchronize()
            self._contexts[index] = context
        return self._contexts[index]

    def _torch_dtype(self, name: str):
        return getattr(self.torch, torch_dtype_name(self.engine.get_tensor_dtype(name), f"{self.path}: tensor {name}"))

    def bind_profile(self, inputs: dict[str, Any], profile: int) -> tuple[Any, dict[str, Any], list[Any]]:
        """Copy the inputs to the GPU on the engine's stream and bind them and fresh output buffers to the context
        of `profile`. Returns (context, outputs by name, device tensors to keep alive while the context may run)."""
        torch = self.torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            context = self._context(profile)
            keep = []
            for name in self.inputs:
                value = inputs[name]
                tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
                tensor = tensor.to(self.device, self._torch_dtype(name), non_blocking=True).contiguous()
                keep.append(tensor)
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise FbError(f"{self.path.name}: TensorRT refused shape {tuple(tensor.shape)} for {name}")
                context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
                outputs[name] = out
                context.set_tensor_address(name, out.data_ptr())
        return context, outputs, keep

    def execute(self, context: Any) -> None:
        """Enqueue one inference on the engine's stream (returns before the GPU is done)."""
        with self.torch.cuda.device(self.device):
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise FbError(f"{self.path.name}: TensorRT execution failed")

    def synchronize(self) -> None:
        self.stream.synchronize()

    def run(self, inputs: dict[str, Any], profile: int, output: str) -> np.ndarray:
        """One bound, executed and synchronised call; `output` copied back as float32 numpy."""
        context, outputs, keep = self.bind_profile(inputs, profile)
        self.execute(context)
        self.synchronize()
        del keep
        return outputs[output].float().cpu().numpy()


class TrtScorer(TrtEngine):
    backend = "tensorrt"

    def __init__(self, path: Path, spec: PatchSpec, tokenizer_dir: Path, name: str, recorded: dict[str, Any],
                 device: str = "cuda", precision: str = "fp16"):
        super().__init__(path, name, recorded, device)
        self.spec = spec
        self.tokenizer_dir = tokenizer_dir
        self.precision = precision
        self.profiles = self._profiles_from_engine()

    def _profiles_from_engine(self) -> list[Profile]:
        """The engine's own profiles (authoritative), read from its first text input's min/opt/max shapes."""
        probe = next((n for n in self.inputs if n != "patches"), self.inputs[0])
        profiles = []
        for index in range(self.engine.num_optimization_profiles):
            low, opt, high = self.profile_shapes(probe, index)
            batch = (low[0], opt[0], high[0])
            text = (low[1], opt[1], high[1]) if len(low) > 1 else (1, 1, 1)
            profiles.append(Profile(f"profile{index}", batch, text))
        return profiles

    @classmethod
    def open(cls, path: str | Path, device: str = "cuda") -> TrtScorer:
        from fbcompress.bundle.store import verify_bundle_file

        bundle, rel = verify_bundle_file(path)
        entry = bundle.models.get(rel)
        if not entry or "tensorrt" not in entry:
            raise FbError(f"{path}: the manifest records no TensorRT build info for it (TensorRT version, GPU), "
                          "so it cannot be checked for this machine; rebuild it with fbcompress export")
        tokenizer_dir = bundle.verify_tokenizer()
        device = "cuda" if device == "auto" else device
        return cls(Path(path), bundle.spec, tokenizer_dir, str(path), entry["tensorrt"], device,
                   str(entry.get("precision", "?")))

    def bind(self, inputs: dict[str, Any], profile: int | None = None) -> tuple[Any, dict[str, Any], list[Any]]:
        """`bind_profile` at `profile` (default: the tightest that fits; the batch must fit one profile, see
        `logits` for splitting). `logits` runs it once per chunk; `fbcompress bench` binds once and times
        `execute` alone."""
        ids = inputs["input_ids"]
        batch, text = int(ids.shape[0]), int(ids.shape[1])
        if profile is None:
            first, *rest = plan_chunks(self.profiles, batch, text)
            profile = first.profile
            if rest or first.rows != batch:
                largest = max(p.batch[2] for p in self.profiles if p.text[0] <= text <= p.text[2])
                raise FbError(f"{self.path.name}: batch {batch} at text {text} is outside every profile's batch range "
                              f"(largest max {largest}): time another batch, or add a profile and rebuild")
        return self.bind_profile(inputs, profile)

    def logits(self, inputs: dict[str, Any]) -> np.ndarray:
        """Logits for any batch: split into runs the profiles fit, each run bound, executed and copied back."""
        batch, text = int(inputs["input_ids"].shape[0]), int(inputs["input_ids"].shape[1])
        parts = []
        for chunk in plan_chunks(self.profiles, batch, text):
            rows = {name: _rows(value, chunk.start, chunk.stop, chunk.rows) for name, value in inputs.items()}
            output = "logits" if "logits" in self.outputs else self.outputs[0]
            parts.append(self.run(rows, chunk.profile, output)[: chunk.stop - chunk.start])
        return np.concatenate(parts, axis=0)


class TrtImageEncoder(TrtEngine):
    """The image encoder's engine (`image_encoder.{fp16,int8}.plan`): images -> patch features, any number of images
    in runs of at most the profile's max batch (the last run padded up to its min)."""

    def __init__(self, path: Path, name: str, recorded: dict[str, Any], device: str = "cuda"):
        super().__init__(path, name, recorded, device)
        low, _, high = self.profile_shapes(self.inputs[0], 0)
        self.batch_range = (low[0], high[0])

    def features(self, images: np.ndarray) -> np.ndarray:
        low, high = self.batch_range
        parts = []
        for start in range(0, len(images), high):
            stop = min(start + high, len(images))
            rows = _rows(images, start, stop, max(stop - start, low))
            parts.append(self.run({self.inputs[0]: rows}, 0, self.outputs[0])[: stop - start])
        return np.concatenate(parts, axis=0)


def _rows(value: Any, start: int, stop: int, rows: int) -> Any:
    """value[start:stop], padded to `rows` rows with copies of its last row (numpy arrays or torch tensors)."""
    part = value[start:stop]
    missing = rows - (stop - start)
    if missing <= 0:
        return part
    tail = part[-1:]
    if isinstance(part, np.ndarray):
        return np.concatenate([part, np.repeat(tail, missing, axis=0)], axis=0)
    import torch

    return torch.cat([part, tail.expand(missing, *tail.shape[1:])], dim=0)
