"""Latency measurement as design.md defines it: p50/p90/p99 over ≥ 100 timed runs after warm-up.

The timer and the device synchronisation are injected, so the statistics can be tested on a fake clock and the
same code times PyTorch eager, ONNX Runtime and TensorRT (GPU runs pass `torch.cuda.synchronize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from fbcompress.modeling.model import PatchSpec


class LatencyStats(BaseModel):
    """One timed case: the percentiles design.md reports, over `runs` timed calls (also a field of typed reports)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    def to_dict(self) -> dict:
        return self.model_dump()


def summarise(durations_s: list[float]) -> LatencyStats:
    ms = np.asarray(durations_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(runs=len(ms), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                        mean_ms=float(ms.mean()), min_ms=float(ms.min()))


def time_interleaved(
    fns: list[Callable[[], object]],
    runs: int = 100,
    warmup: int = 10,
    block: int = 10,
    timer: Callable[[], float] = time.perf_counter,
    synchronize: list[Callable[[], None] | None] | None = None,
) -> list[LatencyStats]:
    """Time several callables in alternating blocks of `block` runs (each still timed call by call).

    Why: comparing two models (a speed-up gate) on a shared machine, a background burst during one model's
    timing would skew the ratio; alternating blocks spreads such drift over both. Blocks, not single calls, so each
    model keeps its weights warm in cache as it would in serving.
    """
    if runs < 1 or block < 1:
        raise ValueError("runs and block must be at least 1")
    if not fns:
        return []
    syncs = synchronize or [None] * len(fns)
    if len(syncs) != len(fns):
        raise ValueError("one synchronize (or None) per callable")
    for fn, sync in zip(fns, syncs, strict=True):
        for _ in range(warmup):
            fn()
        if sync:
            sync()
    durations: list[list[float]] = [[] for _ in fns]
    while len(durations[0]) < runs:
        n = min(block, runs - len(durations[0]))
        for fn, sync, out in zip(fns, syncs, durations, strict=True):
            for _ in range(n):
                start = timer()
                fn()
                if sync:
                    sync()
                out.append(timer() - start)
    return [summarise(d) for d in durations]


def time_callable(
    fn: Callable[[], object],
    runs: int = 100,
    warmup: int = 10,
    timer: Callable[[], float] = time.perf_counter,
    synchronize: Callable[[], None] | None = None,
) -> LatencyStats:
    """`warmup` untimed calls, then `runs` calls each timed alone (the sync, if any, inside the timed window)."""
    return time_interleaved([fn], runs, warmup, block=max(runs, 1), timer=timer, synchronize=[synchronize])[0]


def example_inputs(spec: PatchSpec, batch: int, text_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of the design.md contract at a given shape: real tokens only (no padding), random patches."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (batch, text_len), generator=gen)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "patches": torch.randn(batch, spec.num_patches, spec.patch_dim, generator=gen),
    }


def padded_inputs(inputs: dict[str, torch.Tensor], to_length: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The same texts padded to a fixed length (what a model without VSL would run)."""
    text_len = inputs["input_ids"].shape[1]
    extra = to_length - text_len
    if extra <= 0:
        return inputs
    pad = lambda t, value: torch.nn.functional.pad(t, (0, extra), value=value)  # noqa: E731
    return {
        "input_ids": pad(inputs["input_ids"], pad_id),
        "attention_mask": pad(inputs["attention_mask"], 0),
        "token_type_ids": pad(inputs["token_type_ids"], 0),
        "patches": inputs["patches"],
    }


def throughput(stats: LatencyStats, batch: int) -> float | None:
    """Pairs scored per second at the median latency (a batch of B pairs per call); None for a zero p50."""
    return batch / (stats.p50_ms / 1000.0) if stats.p50_ms > 0 else None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_info() -> dict:
    """CPU model, logical/physical cores and the cores this process may use, from /proc/cpuinfo (Linux).

    The usable core count (affinity) is what a latency figure depends on: a container often sees every host core
    in /proc/cpuinfo but may run on two of them.
    """
    import os
    import platform

    model = platform.processor() or platform.machine()
    physical: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    block: dict[str, str] = {}
    for line in [*_read_text("/proc/cpuinfo").splitlines(), ""]:
        if ":" in line:
            key, _, value = line.partition(":")
            block[key.strip()] = value.strip()
            continue
        if block:  # a blank line ends one logical processor's block
            model = block.get("model name", model)
            if "physical id" in block and "core id" in block:
                physical.add((block["physical id"], block["core id"]))
                sockets.add(block["physical id"])
            block = {}
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    mem_kib = next((int(line.split()[1]) for line in _read_text("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "sockets": len(sockets) or None,
        "usable_cores": usable,
        "memory_gib": round(mem_kib / 2**20, 1) if mem_kib else None,
    }


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (torch does not expose it): nvidia-smi, else /proc/driver/nvidia/version."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    text = _read_text("/proc/driver/nvidia/version")
    for word in text.split():
        if word[:1].isdigit() and "." in word:
            return word
    return None


def gpu_info(index: int = 0) -> dict | None:
    """Name, compute capability, memory, CUDA runtime, cuDNN and driver of a CUDA GPU; None without one."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "index": index,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": _nvidia_driver(),
    }


# The distributions TensorRT's Python bindings come in: the `tensorrt` meta-package, and the per-CUDA wheels that
# install alone (TensorRT 11.4 ships tensorrt-cu13). Metadata normalises '_' and '-', so one spelling each.
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")


def library_versions() -> dict[str, str | None]:
    """Versions of everything that moves a latency figure; optional libraries read from metadata, not imported
    (importing TensorRT on a machine without its CUDA libraries can fail loudly)."""
    import platform
    from importlib import metadata

    from fbcompress import __version__

    def version(*dists: str) -> str | None:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "fbcompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "transformers": version("transformers"),
        "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": version(*TENSORRT_DISTRIBUTIONS),
    }


def matmul_gflops(size: int = 1024, seconds: float = 0.3) -> float:
    """FP32 GEMM throughput of this machine with torch's threads, measured for `seconds`.

    Why: cloud VMs of one name differ. On two "AMD EPYC, 2 cores" VMs of this project the same quickstart stage
    took 1.6x longer on one than the other; the measured GFLOPS beside a wall time says which kind of machine it was.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        calls += 1
    return round(2 * size**3 * calls / elapsed / 1e9, 1)


class GpuRecord(BaseModel):
    """The GPU a figure was measured on (`gpu_info`)."""

    model_config = ConfigDict(extra="allow")

    gpu: str
    index: int
    compute_capability: str
    memory_gib: float | None = None
    cuda_runtime: str | None = None
    cudnn: int | None = None
    driver: str | None = None


class MachineRecord(BaseModel):
    """What every latency figure is reported with (design.md: always the machine beside the number): the one
    format of the machine in bench, check, export, quantize and the quickstart report."""

    model_config = ConfigDict(extra="allow")

    cpu: str
    logical_cores: int | None = None
    physical_cores: int | None = None
    sockets: int | None = None
    usable_cores: int | None = None
    memory_gib: float | None = None
    torch_threads: int
    os: str
    fp32_matmul_gflops: float
    gpu: GpuRecord | None = None
    versions: dict[str, str | None]
    onnxruntime_providers: list[str]


def machine_info(gpu_index: int | None = None) -> dict:
    """The machine record (`MachineRecord`, as JSON-ready dict): CPU, cores, torch threads, a measured FP32 GEMM
    speed, the GPU and driver when one is used or visible, library versions, ORT providers."""
    import platform

    gpu = gpu_info(gpu_index or 0) if gpu_index is not None or torch.cuda.is_available() else None
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    record = MachineRecord(**cpu_info(), torch_threads=torch.get_num_threads(), os=platform.platform(),
                           fp32_matmul_gflops=matmul_gflops(), gpu=gpu, versions=library_versions(),
                           onnxruntime_providers=providers)
    return record.model_dump(exclude_none=False, exclude={"gpu"} if gpu is None else set())


def machine_line(machine: dict | MachineRecord) -> str:
    """One line naming the machine beside every figure (design.md); the record, or its JSON as a report holds it."""
    if isinstance(machine, MachineRecord):
        machine = machine.model_dump(mode="json")
    cores = machine.get("usable_cores") or machine.get("logical_cores")
    gemm = f", FP32 GEMM {machine['fp32_matmul_gflops']:.0f} GFLOPS" if machine.get("fp32_matmul_gflops") else ""
    threads = machine.get("torch_threads")
    parts = [f"CPU {machine.get('cpu', '?')} ({cores} usable cores, torch threads {threads}{gemm})"]
    gpu = machine.get("gpu")
    if gpu:
        parts.append(
            f"GPU {gpu['gpu']} (CC {gpu['compute_capability']}, driver {gpu.get('driver') or '?'}, "
            f"CUDA {gpu.get('cuda_runtime') or '?'})"
        )
    versions = machine.get("versions", {})
    libs = ", ".join(f"{name} {versions[name]}" for name in ("torch", "onnxruntime", "tensorrt") if versions.get(name))
    parts.append(libs)
    return "; ".join(p for p in parts if p)


def machine_slug(info: dict, device: str = "cpu") -> str:
    """A file-name-safe machine name for result files: the GPU for GPU runs, else CPU model and usable cores."""
    import re

    if device != "cpu" and info.get("gpu"):
        name = str(info["gpu"]["gpu"])
    else:
        name = f"{info.get('cpu', 'cpu')} {info.get('usable_cores') or info.get('logical_cores')}c"
    name = re.sub(r"\((?:r|tm|c)\)|\bcpu\b|@.*?ghz|\bprocessor\b", " ", name, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "machine"

