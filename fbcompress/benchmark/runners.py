"""Backends for timing: each turns one batch of design.md inputs into a zero-argument call.

Why not time `Scorer.logits`: a scorer converts inputs, copies them to the device and the logits back on every call,
which is right for evaluation but hides the model's own latency (and on a GPU dominates it at batch 1). A runner
does all of that once in `prepare` (inputs resident on the device, TensorRT/ORT I/O buffers bound, CUDA graphs
captured, compiled graphs specialised by the warm-up) so the timed call is the inference itself. What each row
includes is recorded in the runner's `info["timed"]`.

Model forms and their backends (the backend follows from the form, `--backend` picks among the valid ones):
  checkpoint dir → pytorch (eager fp32/fp16/bf16, optional torch.compile and CUDA graphs on CUDA)
  .onnx / bundle dir → onnxruntime (CPU EP; onnxruntime-cuda / onnxruntime-tensorrt EPs where installed)
  .plan → tensorrt (the bundle's engine, checked against this GPU and TensorRT version)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from fbcompress.benchmark import BACKENDS
from fbcompress.core.errors import BackendUnavailable, FbError
from fbcompress.modeling.model import PatchSpec
from fbcompress.runtime.scoring import Scorer, TorchScorer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRT_EP_DTYPES = ("fp32", "fp16")  # what ONNX Runtime's TensorRT provider is asked to build (trt_fp16_enable)
FORM_BACKENDS = {
    "checkpoint": ("pytorch",),
    "onnx": ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"),
    "plan": ("tensorrt",),
}
MEMORY_CPU = "cpu-rss"  # process resident set size (/proc/self/statm, getrusage)
MEMORY_TORCH_CUDA = "cuda-torch-allocator"  # torch.cuda.max_memory_allocated: exact for PyTorch on CUDA
MEMORY_CUDA_DEVICE = "cuda-device-used"  # torch.cuda.mem_get_info: device-wide, for ORT/TensorRT allocations


@dataclass(frozen=True)
class Target:
    """One model to time and how: the unit of a benchmark (a row group in the table, a line in the plots)."""

    path: Path
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False
    threads: int | None = None
    label: str | None = None


class Runner(Protocol):
    """What the benchmark matrix needs from a backend."""

    target: Target
    label: str
    spec: PatchSpec
    max_text_len: int  # what the tokenizer emits: the longest real text a served request has
    max_positions: int  # the longest text the model (or engine profile) can run at all
    memory_kind: str
    info: dict[str, Any]
    scorer: Scorer  # the same loaded model behind the `Scorer` protocol, for evaluation (`fbcompress check`)

    def prepare(self, inputs: dict[str, torch.Tensor]) -> Callable[[], object]: ...

    def synchronize(self) -> None: ...


def model_form(path: str | Path) -> tuple[str, Path]:
    """('checkpoint' | 'onnx' | 'plan', the file or dir to open); a bundle dir means its primary model file."""
    path = Path(path)
    if path.is_dir():
        if (path / "fbcompress.json").is_file():
            return "checkpoint", path
        if (path / "manifest.json").is_file():
            from fbcompress.bundle.store import Bundle

            return model_form(path / Bundle.open(path).primary_model())
        raise FbError(
            f"{path} is neither a checkpoint dir (no fbcompress.json) nor an export bundle (no manifest.json)"
        )
    if not path.exists():
        raise FbError(f"model not found: {path}")
    if path.suffix == ".onnx":
        return "onnx", path
    if path.suffix == ".plan":
        return "plan", path
    raise FbError(f"{path}: unsupported model form (expected a checkpoint directory, an .onnx or a .plan file)")


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise FbError(f"--device {device} is not one of cpu, cuda, cuda:N")


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def resolve_backend(form: str, path: Path, backend: str, device: str) -> str:
    """The concrete backend for a model form; a backend the form cannot run is bad input, said in one line."""
    if backend not in BACKENDS:
        raise FbError(f"--backend {backend} is not one of {', '.join(BACKENDS)}")
    allowed = FORM_BACKENDS[form]
    if backend == "auto":
        if form == "onnx" and device.startswith("cuda"):
            return "onnxruntime-cuda"
        return allowed[0]
    if backend not in allowed:
        hint = {
            "checkpoint": "export it first (fbcompress export --target onnx|tensorrt)",
            "onnx": "ONNX graphs run on ONNX Runtime",
            "plan": "TensorRT engines run on TensorRT",
        }[form]
        raise FbError(f"--backend {backend} cannot run {path} (a {form}): {hint}")
    return backend


def targets_from_options(
    paths: list[Path],
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "fp32",
    compile: bool = False,
    cuda_graphs: bool = False,
    threads: int | None = None,
) -> list[Target]:
    """Targets for the CLI's global flags. `--dtype/--compile/--cuda-graphs` shape PyTorch runs only (an ONNX
    graph or engine has its precision fixed at export), so they are an error only when no model is a checkpoint."""
    _check_device(device)
    if dtype not in DTYPES:
        raise FbError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    targets = []
    for path in paths:
        form, resolved = model_form(path)
        chosen = resolve_backend(form, Path(path), backend, device)
        if chosen == "pytorch":
            targets.append(Target(resolved, chosen, device, dtype, compile, cuda_graphs, threads))
        elif chosen == "onnxruntime-tensorrt" and dtype in TRT_EP_DTYPES:  # the provider builds its own engine
            targets.append(Target(resolved, chosen, device, dtype, False, False, threads))
        else:
            targets.append(Target(resolved, chosen, device, "fp32", False, False, threads))
    _check_torch_flags(targets, dtype, compile, cuda_graphs)
    return targets


def _check_torch_flags(targets: list[Target], dtype: str, compile: bool, cuda_graphs: bool) -> None:
    """A flag no --model can honour is an error, not silently ignored: --dtype shapes PyTorch runs and the engine
    ONNX Runtime's TensorRT provider builds (fp32/fp16); --compile/--cuda-graphs shape PyTorch runs only."""
    takes_dtype = any(
        t.backend == "pytorch" or (t.backend == "onnxruntime-tensorrt" and dtype in TRT_EP_DTYPES) for t in targets
    )
    flags = [
        name
        for name, on in (
            ("--dtype " + dtype, dtype != "fp32" and not takes_dtype),
            ("--compile", compile and not any(t.backend == "pytorch" for t in targets)),
            ("--cuda-graphs", cuda_graphs and not any(t.backend == "pytorch" for t in targets)),
        )
        if on
    ]
    if flags:
        raise FbError(
            f"{', '.join(flags)} apply to PyTorch checkpoints (--dtype fp16 also to --backend onnxruntime-tensorrt), "
            "and no --model is one (ONNX graphs and TensorRT engines have their precision fixed at export)"
        )


# ------------------------------------------------------------------------------------------------------- PyTorch


def _raise_recompile_limit(limit: int = 256) -> None:
    """A benchmark matrix compiles one static graph per (batch, text) shape; dynamo's default limit (8) would
    silently fall back to eager after the eighth shape and time the wrong thing."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), limit))


class TorchRunner:
    """PyTorch eager (fp32; fp16/bf16), optionally `torch.compile`d and/or replayed as a CUDA graph."""

    memory_kind = MEMORY_CPU

    def __init__(self, target: Target):
        from fbcompress.modeling.checkpoint import load_model

        _check_device(target.device)
        on_cuda = target.device.startswith("cuda")
        if on_cuda and not torch.cuda.is_available():
            raise FbError(f"--device {target.device} asked for, but torch sees no CUDA device")
        if target.dtype == "fp16" and not on_cuda:
            raise FbError("--dtype fp16 needs --device cuda (CPU fp16 kernels are missing or slow); use bf16 on CPU")
        if (target.compile or target.cuda_graphs) and not on_cuda:
            flag = "--compile" if target.compile else "--cuda-graphs"
            raise FbError(
                f"{flag} is supported on --device cuda only (CPU inductor needs a C++ toolchain and its "
                "numbers are not what serving runs)"
            )
        model, ckpt = load_model(target.path, target.device)
        self.target = target
        self.device = torch.device(target.device)
        self.dtype = DTYPES[target.dtype]
        self.scorer = TorchScorer(model, ckpt.directory, str(target.path), target.device)
        self.model = self.scorer.model.to(dtype=self.dtype)  # fp16/bf16: bench only (check runs fp32)
        self.spec = model.spec
        self.max_text_len = self.spec.max_text_len
        self.max_positions = int(model.config.max_position_embeddings)
        self.memory_kind = MEMORY_TORCH_CUDA if on_cuda else MEMORY_CPU
        self.call_model: Callable[..., torch.Tensor] = self.model
        mode = "eager"
        if target.compile:
            _raise_recompile_limit()
            # reduce-overhead = inductor kernels replayed through CUDA graphs (cudagraph trees).
            compile_mode = "reduce-overhead" if target.cuda_graphs else "default"
            self.call_model = torch.compile(self.model, mode=compile_mode, dynamic=False)
            mode = "compile+cuda-graphs" if target.cuda_graphs else "compile"
        elif target.cuda_graphs:
            mode = "cuda-graphs"
        self.mode = mode
        parameters = sum(p.numel() for p in self.model.parameters())
        variant = " ".join(
            part for part in (target.dtype if target.dtype != "fp32" else "", mode if mode != "eager" else "") if part
        )
        self.label = target.label or (f"{ckpt.directory.name} [{variant}]" if variant else ckpt.directory.name)
        self.info = {
            "backend": "pytorch",
            "mode": mode,
            "device": target.device,
            "precision": target.dtype,
            "kind": ckpt.kind,
            "parameters": int(parameters),
            "layers": int(model.config.num_hidden_layers),
            "hidden_size": int(model.config.hidden_size),
            "timed": "forward on device-resident inputs; logits stay on the device",
        }

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
        x = {k: v.to(self.device) for k, v in inputs.items()}
        x["patches"] = x["patches"].to(self.dtype)
        if self.mode == "cuda-graphs":
            return self._capture(x)
        model = self.call_model
        if self.mode == "compile+cuda-graphs":

            def call() -> object:
                torch.compiler.cudagraph_mark_step_begin()  # previous outputs may be overwritten: we drop them
                return model(**x)

            return call
        return lambda: model(**x)

    def _capture(self, x: dict[str, torch.Tensor]) -> Callable[[], object]:
        """Capture one forward at this shape into a CUDA graph (static inputs); the timed call is a replay."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as torch.cuda.graph requires
            for _ in range(3):
                self.model(**x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(**x)
        keep = (x, out)

        def replay() -> object:
            graph.replay()
            return keep

        return replay


# ------------------------------------------------------------------------------------------------- ONNX Runtime


class OrtRunner:
    """ONNX Runtime with a session of our own (thread count, I/O binding); the file is hash-checked first."""

    def __init__(self, target: Target):
        import onnxruntime as ort

        from fbcompress.bundle.store import find_bundle
        from fbcompress.runtime.onnxruntime import PROVIDER_NAMES, OrtScorer, providers_for

        _check_device(target.device)
        index = _device_index(target.device)
        ort_device = {
            "onnxruntime": target.device,
            "onnxruntime-cuda": f"cuda:{index}",
            "onnxruntime-tensorrt": f"tensorrt:{index}",
        }[target.backend]
        trt_precision = target.dtype if target.backend == "onnxruntime-tensorrt" else "fp32"
        # OrtScorer.open hash-checks the file and the tokenizer against the bundle manifest
        self.scorer = OrtScorer.open(target.path, ort_device, threads=target.threads, trt_precision=trt_precision)
        self.session = self.scorer.session
        provider = self.session.get_providers()[0]
        wanted = providers_for(ort_device)[0]
        wanted = wanted[0] if isinstance(wanted, tuple) else wanted
        if provider != wanted:  # listed but not loadable (onnxruntime-gpu lists TensorRT even without libnvinfer)
            raise BackendUnavailable(
                f"ONNX Runtime could not start {wanted} for {target.path} (it fell back to {provider})"
            )
        bundle, rel = find_bundle(target.path) or (None, target.path.name)
        manifest = bundle.manifest if bundle is not None else {}
        self.target = target
        self.spec = self.scorer.spec
        self.max_text_len = self.spec.max_text_len
        self.max_positions = _ort_max_positions(manifest, self.spec.max_text_len, self.scorer.tensorrt_options)
        self.on_gpu = provider in (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"])
        self.device_index = index
        self.memory_kind = MEMORY_CUDA_DEVICE if self.on_gpu else MEMORY_CPU
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        trt_tag = " [ort-trt]" if trt_precision == "fp32" else f" [ort-trt {trt_precision}]"
        variant = {"onnxruntime-cuda": " [ort-cuda]", "onnxruntime-tensorrt": trt_tag}.get(target.backend, "")
        root = bundle.root.name if bundle is not None else target.path.parent.name
        self.label = target.label or f"{root}/{rel}{variant}"
        self.info = {
            "backend": target.backend,
            "mode": "session",
            "device": "cpu" if not self.on_gpu else f"cuda:{index}",
            "precision": trt_precision if self.scorer.tensorrt_options else self.scorer.precision,
            "providers": self.session.get_providers(),
            "intra_op_threads": target.threads,
            "onnxruntime": ort.__version__,
            "timed": (
                "session.run on CPU numpy inputs"
                if not self.on_gpu
                else "run_with_iobinding on device-resident inputs and outputs"
            ),
        }
        if self.scorer.tensorrt_options:  # what the TensorRT provider built: profiles, precision, caches
            self.info["provider_options"] = dict(self.scorer.tensorrt_options)

    def synchronize(self) -> None:
        """ORT's run returns when the outputs are ready, on every provider."""

    def prepare(self, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
        feed = self.scorer.feed(inputs)
        session = self.session
        if not self.on_gpu:
            return lambda: session.run(None, feed)
        binding = session.io_binding()
        values = []
        for name, array in feed.items():
            value = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_index)
            values.append(value)
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device_index)

        def call() -> object:
            session.run_with_iobinding(binding)
            return values

        return call


def _ort_max_positions(manifest: dict[str, Any], max_text_len: int, trt_options: dict[str, Any] | None) -> int:
    """The longest text the session can run: the graph's position table (manifest) and, for the TensorRT
    provider with explicit profiles, the profiles' largest text max (beyond it ORT would have to build another
    engine, which is not the row this benchmark means to time)."""
    positions = int(manifest.get("max_text_positions") or max_text_len)
    profiles = manifest.get("shape_profiles") or []
    if trt_options and "trt_profile_max_shapes" in trt_options and profiles:
        positions = min(positions, max(int(p["text"][2]) for p in profiles))
    return positions


# ---------------------------------------------------------------------------------------------------- TensorRT


class TrtRunner:
    """A bundle's TensorRT engine: the profile that fits, device buffers bound once, `execute_async_v3` timed."""

    memory_kind = MEMORY_CUDA_DEVICE

    def __init__(self, target: Target):
        from fbcompress.runtime.tensorrt import TrtScorer

        device = "cuda" if target.device == "cpu" else target.device
        _check_device(device)
        self.scorer = TrtScorer.open(target.path, device)  # hash, TensorRT version and GPU checks live there
        self.target = replace(target, device=device)
        self.spec = self.scorer.spec
        self.max_text_len = self.spec.max_text_len
        self.max_positions = max(p.text[2] for p in self.scorer.profiles)
        engine = self.scorer.engine
        memory = getattr(engine, "device_memory_size_v2", None) or getattr(engine, "device_memory_size", None)
        self.label = target.label or f"{Path(target.path).parent.name}/{Path(target.path).name}"
        self.info = {
            "backend": "tensorrt",
            "mode": "engine",
            "device": device,
            "precision": self.scorer.precision,
            "profiles": [{"batch": list(p.batch), "text": list(p.text)} for p in self.scorer.profiles],
            "engine_device_memory_mib": round(int(memory) / 2**20, 1) if memory else None,
            "tensorrt": str(self.scorer.trt.__version__),
            "timed": "execute_async_v3 on device-resident, pre-bound buffers + stream synchronise",
        }

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.scorer.device)

    def prepare(self, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
        scorer = self.scorer
        context, outputs, keep = scorer.bind(inputs)  # profile, device copies and buffer addresses, once

        def call() -> object:
            scorer.execute(context)
            return keep, outputs

        return call


def open_runner(target: Target) -> Runner:
    """The runner for a target; bad paths, forms, devices and flags are FbErrors (one line, exit 2)."""
    form, path = model_form(target.path)
    backend = resolve_backend(form, path, target.backend, target.device)
    target = replace(target, path=path, backend=backend)
    if backend == "pytorch":
        return TorchRunner(target)
    if backend.startswith("onnxruntime"):
        return OrtRunner(target)
    return TrtRunner(target)
