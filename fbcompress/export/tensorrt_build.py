"""Build TensorRT engines from the bundle's ONNX with the TensorRT Python API (10.x and 11.x).

* Strongly typed network: precision comes from the ONNX itself (FP16 graph from `convert_fp16`, INT8 from the QDQ
  graph `fbcompress quantize` writes), never from builder flags. TensorRT 11 removed the weak-typing flags
  (`BuilderFlag.FP16/INT8`) and makes every network strongly typed (the creation flag is accepted and ignored), so
  the same code builds on 10.x (where the flag is required) and 11.x.
* One optimisation profile per recipe entry (min/opt/max of batch and text length; patches follow the batch); the
  image encoder's engine has one, over `export.image_encoder_batch` images.
* A timing cache file is loaded when present and saved after the build, so rebuilding (another precision, another
  bundle on the same GPU) skips kernel timing. A cache made on another GPU or TensorRT is refused by
  `set_timing_cache` (it returns False); the build then starts from a fresh cache, says so, and saves that one.
* Builder messages are filtered by severity in the logger itself (a Python `ILogger` subclass receives every
  message, VERBOSE included); errors are kept apart so a failed build names them, not the last info lines.
* Everything runs on the GPU the user named (`cuda:N`): the builder uses the calling thread's current device.
* The builder's log is saved next to the engine; TensorRT version, its major version (10 vs 11), the GPU and its
  compute capability go into the manifest, because an engine only runs on what built it.

`tensorrt` is imported lazily: this module imports (and its pure helpers are tested) without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.runtime.tensorrt_env import require_tensorrt, tensorrt_major

# TensorRT's ILogger.Severity, most severe first (NvInferRuntimeBase.h: kINTERNAL_ERROR=0 ... kVERBOSE=4).
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
ERROR_SEVERITIES = ("INTERNAL_ERROR", "ERROR")


def keep_message(severity: str, threshold: str = "INFO") -> bool:
    """Whether a builder message of this severity goes to the build log (unknown severities are kept)."""
    if severity not in SEVERITIES:
        return True
    return SEVERITIES.index(severity) <= SEVERITIES.index(threshold)


class BuildLog:
    """What the builder said: the lines kept for the saved log, and the errors apart for the failure message."""

    def __init__(self, threshold: str = "INFO"):
        self.threshold = threshold
        self.lines: list[str] = []
        self.errors: list[str] = []

    def add(self, severity: str, message: str) -> None:
        if not keep_message(severity, self.threshold):
            return
        self.lines.append(f"[{severity}] {message}")
        if severity in ERROR_SEVERITIES:
            self.errors.append(message)

    def failure_summary(self, last: int = 3) -> str:
        return " | ".join(self.errors[-last:]) or "no error was logged; see the build log"


def _make_logger(trt, log: BuildLog):
    names = {getattr(trt.ILogger.Severity, name): name for name in SEVERITIES if hasattr(trt.ILogger.Severity, name)}

    class CapturingLogger(trt.ILogger):
        """Hands every message to `BuildLog`, which filters by severity (TensorRT does not for Python loggers)."""

        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            log.add(names.get(severity, str(severity)), str(msg))

    return CapturingLogger()


def attach_timing_cache(blob: bytes, create: Callable[[bytes], Any], attach: Callable[[Any], bool],
                        warn: Callable[[str], None]) -> tuple[Any, str]:
    """Give the builder config a timing cache: the saved one if TensorRT accepts it, else a fresh one.

    `create` is `config.create_timing_cache`, `attach` is `lambda c: config.set_timing_cache(c, False)`, which
    returns False for a cache from another GPU or TensorRT version (with ignore_mismatch False). Returns the cache
    object the build uses, the one to serialise afterwards (`get_timing_cache()` returns None after a refusal).
    """
    if blob:
        cache = create(blob)
        if attach(cache):
            return cache, "loaded"
        warn("the timing cache was made on another GPU or TensorRT version and was refused: building with a fresh "
             "one (kernel timing starts over) and saving that instead")
    cache = create(b"")
    if not attach(cache):
        raise FbError("TensorRT refused a fresh, empty timing cache")
    return cache, "fresh" if not blob else "replaced (mismatch)"


ShapeSet = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input name -> (min, opt, max)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    shape_sets: list[ShapeSet],
    timing_cache: Path,
    log_path: Path,
    workspace_mib: int = 4096,
    device_index: int = 0,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parse `onnx_path` into a strongly typed network, add one optimisation profile per shape set (the scorer:
    `Profile.tensor_shapes`; the image encoder: `ImageEncoderBuild.shapes`), build and save `plan_path` on GPU
    `device_index` (the builder, like every CUDA call, works on the thread's current device). Returns what the
    manifest records of the build; the caller adds its profiles and trtexec line."""
    import torch

    trt, gpu = require_tensorrt(device_index)
    log = BuildLog()
    warn = warn or (lambda text: None)
    start = time.perf_counter()
    try:
        with torch.cuda.device(device_index):
            logger = _make_logger(trt, log)
            builder = trt.Builder(logger)
            strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            flags = 1 << int(strongly_typed) if strongly_typed is not None else 0
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_path)):
                errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
                raise FbError(f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors) or 'unknown error'}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
            cache, cache_state = attach_timing_cache(
                timing_cache.read_bytes() if timing_cache.is_file() else b"",
                config.create_timing_cache, lambda c: config.set_timing_cache(c, False), warn)
            input_names = [network.get_input(i).name for i in range(network.num_inputs)]
            for shapes in shape_sets:
                trt_profile = builder.create_optimization_profile()
                for name, (low, opt, high) in shapes.items():
                    if name in input_names:
                        trt_profile.set_shape(name, low, opt, high)
                config.add_optimization_profile(trt_profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise FbError(f"TensorRT failed to build an engine from {onnx_path.name}: {log.failure_summary()}")
            plan_path.write_bytes(bytes(serialized))
            timing_cache.write_bytes(bytes(cache.serialize()))
    finally:
        log_path.write_text("\n".join(log.lines) + "\n")
    version = str(trt.__version__)
    return {
        "version": version,
        "major": tensorrt_major(version),
        **gpu,
        "device_index": device_index,
        "strongly_typed": True,
        "workspace_mib": workspace_mib,
        "build_seconds": round(time.perf_counter() - start, 2),
        "onnx_source": onnx_path.name,
        "timing_cache": timing_cache.name,
        "timing_cache_state": cache_state,
        "build_log": log_path.name,
    }
