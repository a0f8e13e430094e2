"""The standard benchmark matrices, written to bench/results/<machine>-<date>.{json,md} + <machine>-<date>/*.png.

`fbcompress bench` applies one set of flags to every model; a standard matrix mixes variants (the same student
in fp32 and fp16, eager and CUDA graphs, PyTorch and ONNX Runtime and TensorRT), so it builds its targets here
through the same library calls and writes one result file per machine and day. Models that are not there (no
INT8 export yet, no TensorRT engine on a CPU box) are skipped with a note instead of failing the run; so are models
whose backend does not load here (`BackendUnavailable`, caught per model by `run_bench`, whatever `_available`
let through) and, per model, lengths beyond what it runs (TensorRT engines stop at their profiles' text max).

    python bench/matrix.py --preset cpu            # bench/run_cpu.sh
    python bench/matrix.py --preset gpu            # bench/run_gpu.sh
    python bench/matrix.py --preset cpu --dry-run  # list targets and output paths, time nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from fbcompress.benchmark.matrix import BenchSettings, run_bench  # noqa: E402
from fbcompress.benchmark.report import format_table, write_outputs  # noqa: E402
from fbcompress.benchmark.runners import Target  # noqa: E402
from fbcompress.core.errors import FbError  # noqa: E402
from fbcompress.evaluation.latency import machine_info, machine_line, machine_slug  # noqa: E402


def shipped_student(run_dir: Path, exported: Path) -> Path:
    """The checkpoint the bundle was exported from (its manifest's `source.checkpoint`: the quickstart ships one
    student of its ladder, under run_dir/students/<name>), else run_dir/student (a hand-made run)."""
    try:
        source = json.loads((exported / "manifest.json").read_text())["source"]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir / "student"
    path = Path(source)
    return path if path.is_absolute() else ROOT / path


def cpu_targets(run_dir: Path, exported: Path, threads: int | None) -> list[Target]:
    """Teacher (PyTorch FP32, the speed-up baseline) vs the student in PyTorch FP32, then the student's ONNX graphs
    on ONNX Runtime's CPU provider: standard ops, ORT-fused, INT8 (what the issue's 15x target compares)."""
    return [
        Target(run_dir / "teacher", "pytorch", "cpu", threads=threads, label="teacher (pytorch fp32)"),
        Target(shipped_student(run_dir, exported), "pytorch", "cpu", threads=threads, label="student (pytorch fp32)"),
        Target(exported / "model.onnx", "onnxruntime", "cpu", threads=threads, label="student onnx fp32 (ort-cpu)"),
        Target(
            exported / "model.ort.onnx",
            "onnxruntime",
            "cpu",
            threads=threads,
            label="student onnx fp32 fused (ort-cpu)",
        ),
        Target(exported / "model.int8.onnx", "onnxruntime", "cpu", threads=threads, label="student int8 (ort-cpu)"),
    ]


def gpu_targets(run_dir: Path, exported: Path, device: str, compile_: bool = True) -> list[Target]:
    """Teacher vs student on the GPU through every serving path: eager fp32/fp16, CUDA graphs, optionally
    torch.compile, ONNX Runtime's CUDA and TensorRT providers, and the bundle's TensorRT engines."""
    student = shipped_student(run_dir, exported)
    targets = [
        Target(run_dir / "teacher", "pytorch", device, label="teacher (pytorch fp32)"),
        Target(run_dir / "teacher", "pytorch", device, dtype="fp16", label="teacher (pytorch fp16)"),
        Target(student, "pytorch", device, label="student (pytorch fp32)"),
        Target(student, "pytorch", device, dtype="fp16", label="student (pytorch fp16)"),
        Target(student, "pytorch", device, dtype="fp16", cuda_graphs=True, label="student (fp16 cuda graphs)"),
    ]
    if compile_:
        targets.append(
            Target(
                student,
                "pytorch",
                device,
                dtype="fp16",
                compile=True,
                cuda_graphs=True,
                label="student (fp16 compile+graphs)",
            )
        )
    targets += [
        Target(exported / "model.onnx", "onnxruntime-cuda", device, label="student onnx (ort-cuda)"),
        # fp16, the recipe's profiles, engines cached under the bundle (runtime.onnxruntime.tensorrt_provider_options):
        # the same build the bundle's model.fp16.plan had, so the two TensorRT rows compare like with like
        Target(
            exported / "model.onnx", "onnxruntime-tensorrt", device, dtype="fp16", label="student onnx fp16 (ort-trt)"
        ),
        Target(exported / "model.fp16.plan", "tensorrt", device, label="student trt fp16"),
        Target(exported / "model.int8.plan", "tensorrt", device, label="student trt int8"),
    ]
    return targets


def _available(targets: list[Target]) -> tuple[list[Target], list[str]]:
    """Keep the targets whose model exists and whose backend is installed; say why each other one is skipped."""
    kept, notes = [], []
    providers: list[str] = []
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    needs = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
    for target in targets:
        if not Path(target.path).exists():
            notes.append(f"skipped {target.label}: {target.path} not found")
        elif target.backend in needs and needs[target.backend] not in providers:
            notes.append(f"skipped {target.label}: onnxruntime has no {needs[target.backend]}")
        else:
            kept.append(target)
    return kept, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["cpu", "gpu"], required=True)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=ROOT / "runs" / "quickstart",
        help="holds the teacher/ checkpoint; the student is the bundle's source checkpoint "
        "(default: runs/quickstart)",
    )
    parser.add_argument(
        "--exported",
        type=Path,
        default=ROOT / "exported" / "quickstart",
        help="the student's export bundle (default: exported/quickstart)",
    )
    parser.add_argument("--device", default="cuda", help="gpu preset: cuda or cuda:N")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument(
        "--text-lengths",
        default="8,16,32,64",
        help="design.md's 8,32,64 plus 16, the check reference shape (quickstart's tokenizer stops "
        "at 48 tokens: 64 is timed as a shape, with a note; TensorRT engines whose profiles stop at 48 skip it)",
    )
    parser.add_argument(
        "--pad-to",
        type=int,
        default=64,
        help="also time each text padded to N; 0: do not (models that run fewer tokens skip those rows)",
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, help="cpu preset: torch / ORT threads (default: usable cores)")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="gpu preset: leave out the torch.compile target (its compilation takes minutes)",
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--dry-run", action="store_true", help="list targets and output files; time nothing")
    args = parser.parse_args(argv)

    from fbcompress.commands.bench import parse_int_list

    try:
        batches = parse_int_list(args.batch_sizes, "--batch-sizes")
        lengths = parse_int_list(args.text_lengths, "--text-lengths", minimum=2)
        if args.preset == "cpu":
            threads = args.threads or len(os.sched_getaffinity(0))
            import torch

            torch.set_num_threads(threads)
            targets, device = cpu_targets(args.run_dir, args.exported, threads), "cpu"
        else:
            threads = None
            targets, device = gpu_targets(args.run_dir, args.exported, args.device, not args.no_compile), args.device
        targets, notes = _available(targets)
        slug = machine_slug(machine_info(0 if device != "cpu" else None), device)
        stem = args.out_dir / f"{slug}-{date.today().isoformat()}"
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        if args.dry_run:
            for target in targets:
                print(f"{target.label}: {target.path} [{target.backend} {target.device} {target.dtype}]")
            print(f"would write {stem}.json, {stem}.md and {stem}/*.png")
            return 0
        if not targets:
            raise FbError(f"no model found under {args.run_dir} or {args.exported}: run `make quickstart` first")
        settings = BenchSettings(
            batches, lengths, args.runs, args.warmup, args.pad_to or None, threads=threads, notes=notes
        )
        result = run_bench(targets, settings, progress=sys.stderr.isatty())
    except FbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    title = f"fbcompress bench, {args.preset} preset, {date.today().isoformat()}"
    write_outputs(result, f"{stem}.json", f"{stem}.md", stem, title)
    print(machine_line(result["machine"]))
    print(format_table(result))
    print(f"wrote {stem}.json, {stem}.md, {stem}/")
    summary = {"failed": result["failed"], "skipped": result["skipped"], "cases": len(result["results"])}
    print(json.dumps(summary))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
