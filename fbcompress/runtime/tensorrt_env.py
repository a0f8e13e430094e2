"""TensorRT on this machine: importing it, which GPU is here, and whether an engine built elsewhere can run here.

Shared by the engine builder (export) and the engine runner (runtime). `tensorrt` is imported lazily: this module
imports, and its pure helpers are tested, without it.
"""

from __future__ import annotations

from typing import Any

from fbcompress.core.errors import BackendUnavailable, FbError

TENSORRT_MISSING = ("TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU and driver): "
                    "cannot build or run TensorRT engines here")


def import_tensorrt():
    """The `tensorrt` module, or an FbError naming what is missing."""
    try:
        import tensorrt  # noqa: PLC0415 - optional, GPU-only dependency
    except ImportError:
        raise BackendUnavailable(TENSORRT_MISSING) from None
    except OSError as exc:  # the wheel is there but libnvinfer or the CUDA libraries are not loadable
        raise BackendUnavailable(f"TensorRT is installed but cannot load its libraries ({exc})") from None
    return tensorrt


def gpu_identity(device_index: int = 0) -> dict[str, Any]:
    """Name and compute capability of the GPU (via torch, which the project already needs)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines are "
                                 "built for, and on, the GPU that will run them")
    if device_index >= torch.cuda.device_count():
        raise FbError(f"cuda:{device_index} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    major, minor = torch.cuda.get_device_capability(device_index)
    return {
        "gpu": torch.cuda.get_device_name(device_index),
        "compute_capability": f"{major}.{minor}",
        "cuda_runtime": torch.version.cuda,
    }


def require_tensorrt(device_index: int = 0) -> tuple[Any, dict[str, Any]]:
    """Check TensorRT and a GPU before anything is written, so a failed export leaves no trace."""
    trt = import_tensorrt()
    return trt, gpu_identity(device_index)


def tensorrt_major(version: str) -> int:
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        raise FbError(f"unrecognised TensorRT version string '{version}'") from None


def engine_compatibility_problem(recorded: dict[str, Any], trt_version: str, compute_capability: str) -> str | None:
    """Why an engine cannot run here (TensorRT version or GPU compute capability differ), or None."""
    built_version = str(recorded.get("version", "?"))
    built_cc = str(recorded.get("compute_capability", "?"))
    if built_version != trt_version:
        return (f"it was built with TensorRT {built_version}, this machine has TensorRT {trt_version}: "
                "engines are not portable across TensorRT versions; rebuild it here "
                "(fbcompress export --target tensorrt)")
    if built_cc != compute_capability:
        return (f"it was built for GPU compute capability {built_cc} ({recorded.get('gpu', '?')}), this GPU is "
                f"{compute_capability}: rebuild it on the GPU that will run it")
    return None


def engine_compatibility_warning(recorded: dict[str, Any], gpu_name: str) -> str | None:
    """A GPU of the same compute capability but another model runs the engine, with TensorRT's own warning that
    its kernels were tuned elsewhere (slower, and timing-dependent tactics may differ): say it, don't refuse."""
    built_on = str(recorded.get("gpu", "")).strip()
    if built_on and built_on != gpu_name.strip():
        return (f"the engine was built on {built_on} and runs here on {gpu_name} (same compute capability): it "
                "works, but its kernels were timed on the other GPU; rebuild it here for the best latency")
    return None
