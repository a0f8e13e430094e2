"""The benchmark matrix: every model x batch size x text length, timed as design.md defines latency.

Inputs at text length T are T real tokens (VSL: no padding; `evaluation.latency.example_inputs`), the same seeded
tensors for every model so rows compare like with like; all models of one shape are timed together in alternating
blocks (`measure_shape`). With `pad_to` each shape is also timed padded to that
length (what a fixed-length model pays), and the VSL row records the saving. A case that fails at run time (a
TensorRT profile that does not fit, out of memory) is recorded with its error and the matrix goes on. A model this
machine cannot run (`BackendUnavailable`: no TensorRT, an execution provider that does not load) is skipped with
its reason, and so is every shape longer than a model's positions or engine profiles, for that model only: skips
are not failures. Bad input (paths, flags, lengths no model can read, zero lengths) is refused before anything
is timed.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fbcompress.benchmark.record import BENCH_SCHEMA, BenchRecord, BenchRow
from fbcompress.benchmark.runners import MEMORY_CPU, MEMORY_CUDA_DEVICE, MEMORY_TORCH_CUDA, Runner, Target, open_runner
from fbcompress.core.errors import BackendUnavailable, FbError
from fbcompress.evaluation.latency import example_inputs, machine_info, padded_inputs, throughput, time_interleaved

MIN_RUNS = 100  # design.md: p50/p90/p99 over >= 100 timed runs
MIB = 2**20


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    text_lengths: tuple[int, ...] = (8, 32, 64)
    runs: int = 100
    warmup: int = 10
    pad_to: int | None = None
    seed: int = 0
    threads: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("notes")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}


# ------------------------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryProbe:
    """Peak memory of one case where it can be read. CPU: resident set size now and its growth while the model was
    prepared and warmed up, and the process high-water mark (getrusage; it never goes down, so a case that stays
    below an earlier peak shows the earlier one). CUDA/PyTorch: the allocator's peak. ORT/TensorRT on CUDA:
    device-wide used memory (their allocations are invisible to torch), which counts other processes too."""

    def __init__(self, kind: str, device: str):
        self.kind = kind
        self.device = torch.device(device if device.startswith("cuda") else "cpu")
        self._start = 0

    def start(self) -> None:
        if self.kind == MEMORY_TORCH_CUDA:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.kind == MEMORY_CUDA_DEVICE and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(self.device)
            self._start = total - free
        else:
            self._start = _rss_bytes()

    def stop(self) -> dict[str, Any]:
        if self.kind == MEMORY_TORCH_CUDA:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {
                "kind": self.kind,
                "peak_mib": round(peak / MIB, 2),
                "delta_mib": round((peak - self._start) / MIB, 2),
            }
        if self.kind == MEMORY_CUDA_DEVICE:
            if not torch.cuda.is_available():
                return {"kind": self.kind, "peak_mib": None, "delta_mib": None}
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            return {
                "kind": self.kind,
                "peak_mib": round(used / MIB, 2),
                "delta_mib": round((used - self._start) / MIB, 2),
            }
        rss = _rss_bytes()
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {
            "kind": MEMORY_CPU,
            "rss_mib": round(rss / MIB, 2),
            "delta_mib": round((rss - self._start) / MIB, 2),
            "peak_mib": round(high_water / MIB, 2),
        }


# ------------------------------------------------------------------------------------------------------ matrix


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def measure_shape(
    runners: list[Runner],
    inputs: list[dict[str, torch.Tensor]],
    runs: int,
    warmup: int,
    timer: Callable[[], float] | None = None,
) -> list[dict[str, Any]]:
    """Time one shape on every model: each is prepared and warmed up alone (its memory read over that), then all
    are timed together in alternating blocks of 10 runs (`latency.time_interleaved`).

    Why interleaved: on a shared VM, one model timed after the other met different slow spells; a quickstart
    bench put the teacher at 37 ms for 8 tokens and 29 ms for 16. Alternating blocks give every model the same
    spells, so the ratios (speed-up, VSL gain) hold even where the absolute numbers wobble. A model that fails to
    prepare or warm up gets an error row and the others are timed without it.
    """
    out: list[dict[str, Any]] = [{} for _ in runners]
    ready: list[tuple[int, Callable[[], object], Callable[[], None]]] = []
    with torch.inference_mode():
        for index, (runner, case_inputs) in enumerate(zip(runners, inputs, strict=True)):
            probe = MemoryProbe(runner.memory_kind, runner.target.device)
            probe.start()
            try:
                call = runner.prepare(case_inputs)
                for _ in range(warmup):
                    call()
                runner.synchronize()
            except Exception as exc:  # a failed case is reported in its row; the matrix goes on (module doc)
                out[index] = {"runs": 0, "error": _one_line(exc)}
                continue
            out[index] = {"memory": probe.stop()}
            ready.append((index, call, runner.synchronize))
        kwargs = {"timer": timer} if timer is not None else {}
        try:
            stats = time_interleaved(
                [call for _, call, _ in ready], runs=runs, warmup=0, block=10,
                synchronize=[sync for _, _, sync in ready], **kwargs,
            )
        except Exception as exc:
            error = f"failed while timed with the others: {_one_line(exc)}"
            for index, _, _ in ready:
                out[index] = {"runs": 0, "error": error}
            return out
    for (index, _, _), stat in zip(ready, stats, strict=True):
        batch = int(inputs[index]["input_ids"].shape[0])
        out[index] = {**stat.to_dict(), "pairs_per_s": throughput(stat, batch), **out[index], "error": None}
    return out


def _check_settings(settings: BenchSettings) -> None:
    """Input no model could ever honour is refused before anything is opened or timed."""
    if settings.runs < 1 or settings.warmup < 0:
        raise FbError("--runs must be at least 1 and --warmup at least 0")
    if not settings.batch_sizes or min(settings.batch_sizes) < 1:
        raise FbError(f"--batch-sizes {list(settings.batch_sizes)}: give batch sizes of at least 1")
    if not settings.text_lengths or min(settings.text_lengths) < 1:
        raise FbError(f"--text-lengths {list(settings.text_lengths)}: give text lengths of at least 1")
    if settings.pad_to is not None and settings.pad_to < 1:
        raise FbError(f"--pad-to {settings.pad_to}: give a length of at least 1")


def _open_targets(targets: Sequence[Target]) -> tuple[list[tuple[int, Runner]], list[dict[str, Any]]]:
    """Open every model before timing any: ([(model id, runner)], [skipped model entries]).

    A `BackendUnavailable` (TensorRT or an execution provider this machine cannot load) skips that model with its
    reason and the others still run; any other FbError (bad path, bad flag) is bad input and aborts here, before
    a single case is timed. `open_runner` is looked up at call time so tests can replace it.
    """
    opened: list[tuple[int, Runner]] = []
    skipped: list[dict[str, Any]] = []
    for index, target in enumerate(targets):
        try:
            opened.append((index, open_runner(target)))
        except BackendUnavailable as exc:
            skipped.append(_skipped_model(index, target, str(exc).strip().splitlines()[0]))
    return opened, skipped


def _skipped_model(index: int, target: Target, reason: str) -> dict[str, Any]:
    """The `models` entry of a model that could not be opened, with the keys the report reads."""
    return {
        "id": index,
        "label": target.label or f"{Path(target.path).parent.name}/{Path(target.path).name}",
        "path": str(target.path),
        "backend": target.backend,
        "mode": None,
        "device": target.device,
        "precision": target.dtype,
        "skipped": reason,
    }


def _too_long(runner: Runner, text: int, pad: int | None) -> str | None:
    """Why this model cannot run text length `text` (padded to `pad`), or None when it can."""
    length = pad or text
    if length <= runner.max_positions:
        return None
    what = f"padded to {pad} tokens" if pad else f"{text} text tokens"
    return f"{what}: this model runs at most {runner.max_positions} text tokens"


def _plan_lengths(runners: list[Runner], labels: list[str], settings: BenchSettings, clip: bool) -> BenchSettings:
    """Lengths to time and notes on them. A length some model cannot run stays (that model's rows are skipped, the
    others time it); with `clip` (default lengths), a length no model can run is dropped with a note. Nothing at
    all to run is one FbError. Lengths that run but exceed a tokenizer get the "timed as shapes only" note."""
    limit = max(r.max_positions for r in runners)
    notes = list(settings.notes)
    lengths = settings.text_lengths
    nobody = [t for t in lengths if t > limit]
    if nobody and clip:
        lengths = tuple(t for t in lengths if t <= limit)
        notes.append(f"text lengths {nobody} skipped: no model runs more than {limit} text tokens")
    if not any(t <= limit for t in lengths):
        most = "; ".join(f"{label} runs at most {r.max_positions}" for r, label in zip(runners, labels, strict=True))
        asked = "the default text lengths" if clip else f"--text-lengths {','.join(map(str, settings.text_lengths))}"
        raise FbError(f"{asked}: no model can run any of them ({most} text tokens)"
                      + (" (pass --text-lengths)" if clip else ""))
    pads = [settings.pad_to] if settings.pad_to else []
    for runner, label in zip(runners, labels, strict=True):
        notes += _length_notes(runner, label, lengths, pads)
    return BenchSettings(
        settings.batch_sizes, lengths, settings.runs, settings.warmup, settings.pad_to, settings.seed,
        settings.threads, notes,
    )


def _length_notes(runner: Runner, label: str, lengths: tuple[int, ...], pads: list[int]) -> list[str]:
    """Per model: lengths it skips (beyond its positions/profiles) and lengths timed only as shapes (beyond what
    its tokenizer emits, so no served request is that long)."""
    notes = []
    skipped = [t for t in lengths if t > runner.max_positions]
    skipped_pad = [p for p in pads if p > runner.max_positions]
    if skipped or skipped_pad:
        what = ", ".join(
            part for part in (
                f"text lengths {skipped}" if skipped else "",
                f"--pad-to {skipped_pad[0]}" if skipped_pad else "",
            ) if part
        )
        notes.append(f"{label}: {what} skipped: it runs at most {runner.max_positions} text tokens")
    beyond = [t for t in (*lengths, *pads) if runner.max_text_len < t <= runner.max_positions]
    if beyond:
        notes.append(
            f"{label}: its tokenizer truncates texts to {runner.max_text_len} tokens, so "
            f"lengths {sorted(set(beyond))} are timed as shapes only (no real request is that long)"
        )
    return notes


def _add_speedups(rows: list[BenchRow], first_model: int | None = None) -> None:
    """speedup_vs_first: the first timed model's p50 / this p50 at the same shape; vsl_speedup on a VSL row: the
    same model's p50 padded to --pad-to / its VSL p50 (what not padding saves). Skipped and failed rows have
    neither, and are no one's reference."""
    ok = [r for r in rows if r.timed]
    if first_model is None:
        first_model = min((r.model for r in rows), default=0)
    base = {(r.batch, r.text, r.padded_to): r for r in ok if r.model == first_model}
    padded = {(r.model, r.batch, r.text): r for r in ok if r.padded_to is not None}
    for row in rows:
        row.speedup_vs_first = None
        if row.padded_to is None:
            row.vsl_speedup = None
        if not row.timed:
            continue
        ref = base.get((row.batch, row.text, row.padded_to))
        if ref is not None and row.p50_ms > 0:
            row.speedup_vs_first = ref.p50_ms / row.p50_ms
        pad = padded.get((row.model, row.batch, row.text)) if row.padded_to is None else None
        if pad is not None and row.p50_ms > 0:
            row.vsl_speedup = pad.p50_ms / row.p50_ms


def run_bench(
    targets: Sequence[Target],
    settings: BenchSettings,
    clip_lengths: bool = False,
    progress: bool = False,
    runners: list[Runner] | None = None,
    timer: Callable[[], float] | None = None,
) -> BenchRecord:
    """Open every model first (so bad input fails before any timing), then time the whole matrix.

    A model this machine cannot run (`BackendUnavailable`) is a skipped entry, and a shape a model cannot run
    (longer than its positions or engine profiles) a skipped row: neither is a failure, the rest of the matrix is
    timed. `clip_lengths`: drop default text lengths no model can read (the CLI sets it when the user did not
    choose the lengths). `runners`/`timer` are injectable for tests.
    """
    if not targets and not runners:
        raise FbError("no model to benchmark (pass --model)")
    _check_settings(settings)
    if runners is not None:
        opened, skipped_models = list(enumerate(runners)), []
    else:
        opened, skipped_models = _open_targets(targets)
    if not opened:
        reasons = "; ".join(f"{m['label']}: {m['skipped']}" for m in skipped_models)
        raise FbError(f"no model can run on this machine ({reasons})")
    named = sorted([(i, r.label) for i, r in opened] + [(m["id"], m["label"]) for m in skipped_models])
    labels = dict(zip([i for i, _ in named], _unique_labels([label for _, label in named]), strict=True))
    for model in skipped_models:
        model["label"] = labels[model["id"]]
    active = [r for _, r in opened]
    settings = _plan_lengths(active, [labels[i] for i, _ in opened], settings, clip_lengths)
    notes = [f"skipped {m['label']}: {m['skipped']}" for m in skipped_models] + list(settings.notes)
    if settings.runs < MIN_RUNS:
        notes.append(f"{settings.runs} timed runs per case: below design.md's {MIN_RUNS}, indicative only")
    cuda_devices = [r.target.device for r in active if r.target.device.startswith("cuda")]
    machine = machine_info(int(cuda_devices[0].partition(":")[2] or 0) if cuda_devices else None)
    models = sorted([_model_entry(i, labels[i], r) for i, r in opened] + skipped_models, key=lambda m: m["id"])
    rows = [BenchRow.model_validate(row) for row in _time_matrix(opened, labels, settings, progress, timer)]
    rows.sort(key=lambda row: row.model)  # stable: per model, in shape order, as the tables read
    _add_speedups(rows, first_model=opened[0][0])
    return BenchRecord.model_validate({
        "schema": BENCH_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings.to_dict(),
        "models": models,
        "results": rows,
        "failed": sum(1 for r in rows if r.error),
        "skipped": sum(1 for r in rows if r.skipped),
        "notes": notes,
    })


def _model_entry(index: int, label: str, runner: Runner) -> dict[str, Any]:
    return {
        "id": index,
        "label": label,
        "path": str(runner.target.path),
        **runner.info,
        "max_text_len": runner.max_text_len,
        "max_positions": runner.max_positions,
        "memory_kind": runner.memory_kind,
        "skipped": None,
    }


def _time_matrix(
    opened: list[tuple[int, Runner]],
    labels: dict[int, str],
    settings: BenchSettings,
    progress: bool,
    timer: Callable[[], float] | None,
) -> list[dict[str, Any]]:
    """Every shape on every model that can run it (timed together, `measure_shape`); a skipped row, with its
    reason, for each model that cannot."""
    pad_to = settings.pad_to
    shapes = [
        (b, t, pad)
        for b in settings.batch_sizes
        for t in settings.text_lengths
        for pad in (None, *([pad_to] if pad_to is not None and pad_to > t else []))
    ]
    rows: list[dict[str, Any]] = []
    bar = tqdm(shapes, desc="bench", unit="shape", disable=not progress, leave=False)
    for batch, text, pad in bar:
        bar.set_postfix_str(f"b{batch} t{text}{f'→{pad}' if pad else ''}")
        reasons = {model_id: _too_long(runner, text, pad) for model_id, runner in opened}
        ready = [(model_id, runner) for model_id, runner in opened if reasons[model_id] is None]
        inputs = []
        for _, runner in ready:
            case_inputs = example_inputs(runner.spec, batch, text, seed=settings.seed)
            inputs.append(padded_inputs(case_inputs, pad) if pad is not None else case_inputs)
        timed = dict(zip(
            [model_id for model_id, _ in ready],
            measure_shape([r for _, r in ready], inputs, settings.runs, settings.warmup, timer) if ready else [],
            strict=True,
        ))
        for model_id, runner in opened:
            result = timed.get(model_id) or {"runs": 0, "error": None, "skipped": reasons[model_id]}
            rows.append(
                {
                    "model": model_id,
                    "label": labels[model_id],
                    "batch": batch,
                    "text": text,
                    "padded_to": pad,
                    "seq_len": (pad or text) + runner.spec.num_patches,
                    "skipped": None,
                    **result,
                }
            )
    return rows


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out
