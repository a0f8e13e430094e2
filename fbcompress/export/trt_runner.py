"""TensorRT backend of the `Scorer` protocol for a bundle's `.plan` engine (dynamic shapes, several profiles).

Before deserialising, the engine file is hash-checked against the manifest and the TensorRT version and GPU compute
capability it was built with are compared to this machine's: a mismatched engine is refused with one line instead
of crashing (or silently mis-running) inside TensorRT.

Per call: pick the tightest profile that fits (batch, text), `set_input_shape` for every input, bind device buffers
with `set_tensor_address`, run `execute_async_v3` on the current torch CUDA stream. One execution context per profile
is created lazily, so switching between online and offline shapes never re-selects a profile on a busy context.
Device buffers are torch CUDA tensors (torch is a project dependency), so no pycuda/cuda-python is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.errors import FbError
from fbcompress.export.shapes import Profile, pick_profile
from fbcompress.export.tensorrt_build import (
    engine_compatibility_problem,
    gpu_identity,
    import_tensorrt,
)
from fbcompress.model import PatchSpec


def _device_index(device: str) -> int:
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "tensorrt", "trt", "auto"):
        raise FbError(f"--device {device}: TensorRT engines run on an NVIDIA GPU (use --device cuda[:N])")
    if index and not index.isdigit():
        raise FbError(f"--device {device}: the device index must be a number")
    return int(index or 0)


class TrtScorer:
    backend = "tensorrt"

    def __init__(self, path: Path, spec: PatchSpec, tokenizer_dir: Path, name: str, recorded: dict[str, Any],
                 device: str = "cuda", precision: str = "fp16"):
        import torch

        index = _device_index(device)
        trt = import_tensorrt()
        here = gpu_identity(index)
        problem = engine_compatibility_problem(recorded, str(trt.__version__), here["compute_capability"])
        if problem:
            raise FbError(f"refusing {path}: {problem}")
        self.trt = trt
        self.torch = torch
        self.device = torch.device("cuda", index)
        self.path = Path(path)
        self.spec = spec
        self.tokenizer_dir = tokenizer_dir
        self.name = name
        self.precision = precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FbError(f"TensorRT could not deserialise {path} (corrupt, or built by another TensorRT)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.profiles = self._profiles_from_engine()
        self._contexts: dict[int, Any] = {}

    def _profiles_from_engine(self) -> list[Profile]:
        """The engine's own profiles (authoritative), read from its first text input's min/opt/max shapes."""
        probe = next((n for n in self.inputs if n != "patches"), self.inputs[0])
        profiles = []
        for index in range(self.engine.num_optimization_profiles):
            low, opt, high = self.engine.get_tensor_profile_shape(probe, index)
            batch = (int(low[0]), int(opt[0]), int(high[0]))
            text = (int(low[1]), int(opt[1]), int(high[1])) if len(low) > 1 else (1, 1, 1)
            profiles.append(Profile(f"profile{index}", batch, text))
        return profiles

    @classmethod
    def open(cls, path: str | Path, device: str = "cuda") -> TrtScorer:
        from fbcompress.export.bundle import verify_bundle_file

        bundle, rel = verify_bundle_file(path)
        entry = bundle.models.get(rel)
        if not entry or "tensorrt" not in entry:
            raise FbError(f"{path}: the manifest records no TensorRT build info for it (TensorRT version, GPU), "
                          "so it cannot be checked for this machine; rebuild it with fbcompress export")
        tokenizer_dir = bundle.verify_tokenizer()
        device = "cuda" if device == "auto" else device
        return cls(Path(path), bundle.spec, tokenizer_dir, str(path), entry["tensorrt"], device,
                   str(entry.get("precision", "?")))

    def _context(self, index: int):
        if index not in self._contexts:
            context = self.engine.create_execution_context()
            stream = self.torch.cuda.current_stream(self.device)
            context.set_optimization_profile_async(index, stream.cuda_stream)
            stream.synchronize()
            self._contexts[index] = context
        return self._contexts[index]

    def _torch_dtype(self, name: str):
        mapping = {
            self.trt.DataType.FLOAT: self.torch.float32,
            self.trt.DataType.HALF: self.torch.float16,
            self.trt.DataType.INT32: self.torch.int32,
            self.trt.DataType.INT64: self.torch.int64,
            self.trt.DataType.BOOL: self.torch.bool,
        }
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in mapping:
            raise FbError(f"{self.path}: tensor {name} has TensorRT dtype {dtype}, not supported by this runner")
        return mapping[dtype]

    def bind(self, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any], list[Any]]:
        """Pick the profile for (batch, text), copy the inputs to the GPU and bind them and fresh output buffers.

        Returns (context, outputs by name, device tensors to keep alive while the context may run). `logits` runs
        it once; `fbcompress bench` binds once and times `execute_async_v3` alone.
        """
        torch = self.torch
        ids = inputs["input_ids"]
        batch, text = int(ids.shape[0]), int(ids.shape[1])
        index = pick_profile(self.profiles, batch, text)
        if index is None:
            ranges = "; ".join(f"batch {p.batch[0]}-{p.batch[2]} x text {p.text[0]}-{p.text[2]}" for p in self.profiles)
            raise FbError(f"{self.path.name}: no optimisation profile fits batch {batch} x text {text} ({ranges}); "
                          "add a profile to the recipe's export.profiles and rebuild")
        context = self._context(index)
        keep = []
        for name in self.inputs:
            value = inputs[name]
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            tensor = tensor.to(self.device, self._torch_dtype(name)).contiguous()
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
        """Enqueue one inference on the current torch CUDA stream (returns before the GPU is done)."""
        if not context.execute_async_v3(self.torch.cuda.current_stream(self.device).cuda_stream):
            raise FbError(f"{self.path.name}: TensorRT execution failed")

    def logits(self, inputs: dict[str, Any]) -> np.ndarray:
        context, outputs, keep = self.bind(inputs)
        self.execute(context)
        self.torch.cuda.current_stream(self.device).synchronize()
        del keep
        logits = outputs.get("logits", next(iter(outputs.values())))
        return logits.float().cpu().numpy()
