"""Benchmark output: the Markdown table (terminal and result files), the machine line, and PNG plots.

Plots use matplotlib's object API (`Figure`, rendered by Agg) rather than pyplot, so nothing global changes and
no display is needed; `bench` runs on headless GPU boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fbcompress.benchmark.record import BenchModel, BenchRecord, CaseMemory
from fbcompress.core.errors import FbError
from fbcompress.evaluation.latency import machine_line

LATENCY_PLOT = "latency_vs_text.png"
SPEEDUP_PLOT = "speedup.png"


def _memory_cell(memory: CaseMemory | None) -> str:
    if memory is None or memory.peak_mib is None:
        return "n/a"
    if memory.kind == "cpu-rss":
        return f"RSS {memory.rss_mib:.0f} (+{max(memory.delta_mib or 0.0, 0):.1f})"
    return f"{memory.peak_mib:.1f}"


def _num(value: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def format_table(result: BenchRecord) -> str:
    """The results as a Markdown table (readable in a terminal too); failed cases show their error, skipped cases
    and models that could not be opened on this machine their reason."""
    models = {m.id: m for m in result.models}
    header = (
        "| model | backend | device | precision | batch | text | p50 ms | p90 ms | p99 ms | pairs/s | "
        "memory MiB | vs first | VSL saves |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in result.results:
        model = models[row.model]
        text = str(row.text) if row.padded_to is None else f"{row.text}→{row.padded_to} (pad)"
        lead = (
            f"| {row.label} | {_backend_cell(model)} | {model.device} | {model.precision} | "
            f"{row.batch} | {text} |"
        )
        if row.error or row.skipped:
            what = f"error: {row.error}" if row.error else f"skipped: {row.skipped}"
            lines.append(f"{lead} {what} | | | | | | |")
            continue
        lines.append(
            f"{lead} {row.p50_ms:.3f} | {row.p90_ms:.3f} | {row.p99_ms:.3f} | "
            f"{_num(row.pairs_per_s, '.1f')} | "
            f"{_memory_cell(row.memory)} | {_num(row.speedup_vs_first, '.2f', '×')} | "
            f"{_num(row.vsl_speedup, '.2f', '×')} |"
        )
    for model in result.models:
        if model.skipped:
            lines.append(
                f"| {model.label} | {_backend_cell(model)} | {model.device} | {model.precision} | all | all "
                f"| skipped: {model.skipped} | | | | | | |"
            )
    return "\n".join(lines)


def _backend_cell(model: BenchModel) -> str:
    if model.mode in (None, "eager", "session", "engine"):
        return model.backend
    return f"{model.backend} ({model.mode})"


def format_report(result: BenchRecord, plots: list[str] | None = None, title: str = "fbcompress bench") -> str:
    """A complete Markdown document: machine, settings, table, notes, plots (paths relative to the .md file)."""
    settings = result.settings
    lines = [
        f"# {title}",
        "",
        f"- created: {result.created}",
        f"- machine: {machine_line(result.machine)}",
        f"- OS: {result.machine.os}",
        f"- runs per case: {settings.runs} timed after {settings.warmup} warm-up; latency = wall time of "
        "one call (GPU: synchronised), the models of one shape timed in alternating blocks of 10; "
        "pairs/s = batch / p50",
        "- inputs: real text length (VSL, no padding), 64 random patches; `→N (pad)` rows are the same texts "
        "padded to N; memory: CPU = process RSS (+ growth while the model was prepared and warmed up), CUDA = peak "
        "allocated",
        "",
    ]
    for model in result.models:
        if model.skipped:
            lines.append(f"- **{model.label}**: `{model.path}` — {model.backend}, {model.device}; "
                         f"skipped: {model.skipped}")
            continue
        lines.append(
            f"- **{model.label}**: `{model.path}` — {model.backend} {model.mode or ''}, "
            f"{model.precision}, {model.device}; timed: {model.timed or '?'}"
        )
    lines += ["", format_table(result), ""]
    for note in result.notes:
        lines.append(f"> {note}")
    if result.notes:
        lines.append("")
    for plot in plots or []:
        lines.append(f"![{Path(plot).stem}]({plot})")
    return "\n".join(lines).rstrip() + "\n"


LOG_SCALE_SPAN = 10.0  # a panel whose latencies span more than this factor gets a log axis


def _style(ax: Any, batch: int, ylabel: str, log: bool = False) -> None:
    ax.set_title(f"batch {batch}")
    ax.set_xlabel("text length (real tokens)")
    ax.set_ylabel(ylabel + (", log scale" if log else ""))
    if log:  # a 20x faster student would otherwise be a flat line on the floor: its VSL slope stays readable
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def write_outputs(
    result: BenchRecord,
    json_path: str | Path | None = None,
    md_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    title: str = "fbcompress bench",
) -> list[Path]:
    """Plots, then the Markdown report (plot links relative to it) and the JSON (`result.plots` relative to the
    JSON file's folder, so a committed result folder stays self-contained); '-' as json_path is stdout."""
    import os

    from fbcompress.core.artifacts import atomic_write_bytes, write_json_output

    plots = write_plots(result, plot_dir) if plot_dir is not None else []

    def relative_to(path: str | Path) -> list[str]:
        base = Path(path).resolve().parent
        return [os.path.relpath(p.resolve(), base) for p in plots]

    result.plots = relative_to(json_path) if json_path and str(json_path) != "-" else [str(p) for p in plots]
    if md_path is not None:
        atomic_write_bytes(md_path, format_report(result, relative_to(md_path), title).encode())
    if json_path:
        write_json_output(str(json_path), result.to_json())
    return plots


def write_plots(result: BenchRecord, plot_dir: str | Path) -> list[Path]:
    """latency_vs_text.png (p50 against real text length, one panel per batch size; dashed: padded to
    --pad-to) and, with two or more models, speedup.png (each model's speed-up over the first)."""
    from matplotlib.figure import Figure

    plot_dir = Path(plot_dir)
    try:
        plot_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FbError(f"cannot create plot folder {plot_dir}: {exc.strerror}") from None
    rows = [r for r in result.results if r.timed]
    batches = sorted({r.batch for r in rows})
    if not batches:
        return []
    labels = {m.id: m.label for m in result.models if not m.skipped}
    caption = machine_line(result.machine)
    written = []

    fig = Figure(figsize=(5.0 * len(batches), 4.2), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches, strict=True):
        for model_id, label in labels.items():
            color = None  # the padded line of a model takes the colour of its VSL line
            for padded in (False, True):
                pts = sorted(
                    (r.text, r.p50_ms, r.p90_ms)
                    for r in rows
                    if r.model == model_id and r.batch == batch and (r.padded_to is not None) == padded
                )
                if not pts:
                    continue
                xs, p50, p90 = zip(*pts, strict=True)
                name = f"{label} (padded to {result.settings.pad_to})" if padded else label
                line = ax.plot(xs, p50, marker="o", linestyle="--" if padded else "-", label=name, color=color)[0]
                color = line.get_color()
                ax.fill_between(xs, p50, p90, alpha=0.1, color=color)
        p50s = [r.p50_ms for r in rows if r.batch == batch and r.p50_ms > 0]
        _style(ax, batch, "latency p50 ms (band: to p90)", log=bool(p50s) and max(p50s) > LOG_SCALE_SPAN * min(p50s))
    fig.suptitle(f"latency vs text length (VSL)\n{caption}", fontsize="small")
    written.append(plot_dir / LATENCY_PLOT)
    fig.savefig(written[-1], dpi=110)

    if len(labels) > 1:
        fig = Figure(figsize=(5.0 * len(batches), 4.2), layout="constrained")
        axes = fig.subplots(1, len(batches), squeeze=False)[0]
        first = labels[min(labels)]
        for ax, batch in zip(axes, batches, strict=True):
            for model_id, label in labels.items():
                if model_id == min(labels):
                    continue
                pts = sorted(
                    (r.text, r.speedup_vs_first)
                    for r in rows
                    if r.model == model_id and r.batch == batch and r.padded_to is None and r.speedup_vs_first
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", label=label)
            ax.axhline(1.0, color="grey", linewidth=1)
            _style(ax, batch, f"speed-up vs {first} (p50)")
        fig.suptitle(f"speed-up against {first}\n{caption}", fontsize="small")
        written.append(plot_dir / SPEEDUP_PLOT)
        fig.savefig(written[-1], dpi=110)
    return written
