"""The quickstart report: one table of every model form (accuracy, latency, size) with the machine, and plots.

Why a module of its own: the report only reads what the stages wrote (eval/bench/check JSON, the teacher's
training log), so it can be rebuilt from a finished run without re-running anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fbcompress.artifacts import atomic_write_bytes, atomic_write_json

# (label, eval JSON name, model file or dir relative to the run/bundle) for each form in the table.
FORMS = [
    ("teacher (PyTorch FP32)", "teacher", "teacher"),
    ("student 2L VSL (PyTorch FP32)", "student", "student"),
    ("student ONNX FP32 (ORT CPU)", "onnx", "model.onnx"),
    ("student INT8 (ORT CPU)", "int8", "model.int8.onnx"),
]
REFERENCE_SHAPES = [(1, 8), (1, 16), (1, 64), (32, 64)]  # (batch, text length) columns of the latency table


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _size_mb(path: Path) -> float | None:
    if path.is_dir():
        weights = path / "model.safetensors"
        return weights.stat().st_size / 1e6 if weights.is_file() else None
    return path.stat().st_size / 1e6 if path.is_file() else None


def _p50(bench: dict | None, model_path: Path, batch: int, text: int) -> float | None:
    """The VSL (unpadded) p50 of `model_path` at one shape from a bench JSON, or None."""
    if not bench:
        return None
    names = {m.get("id"): m for m in bench.get("models", []) if isinstance(m, dict)}
    for row in bench.get("results", []):
        model = names.get(row.get("model"), {})
        same_model = Path(str(model.get("path", ""))).resolve() == model_path.resolve()
        if (same_model and row.get("batch") == batch and row.get("text") == text and row.get("padded_to") is None
                and row.get("error") is None):
            return float(row["p50_ms"])
    return None


def plot_task_weights(train_log: Path, target: Path) -> bool:
    """Adaptive-loss task weights and task losses over the teacher's training steps (two panels)."""
    rows = []
    if train_log.is_file():
        for line in train_log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "weights" in record and "losses" in record:
                rows.append(record)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for row in rows for task in row["weights"]})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for task in tasks:
        steps = [row["step"] for row in rows if task in row["weights"]]
        top.plot(steps, [row["weights"][task] for row in rows if task in row["weights"]], label=task, lw=1)
        bottom.plot(steps, [row["losses"][task] for row in rows if task in row["losses"]], label=task, lw=1)
    top.set_ylabel("task weight (adaptive)")
    top.set_title("Teacher: adaptive task weights, solved at every step")
    top.legend(ncol=len(tasks), fontsize=8)
    bottom.set_ylabel("task loss")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)
    return True


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def build_report(out: Path, bundle: Path, stages: list[dict], machine: dict) -> dict:
    """Collect the run's numbers into report.json / report.md (+ plots) in `out`, copied into the bundle."""
    evals = out / "eval"
    bench = _load(out / "bench.json")
    check = _load(evals / "check.json")
    rows = []
    for label, key, rel in FORMS:
        model_path = (out / rel) if key in ("teacher", "student") else (bundle / rel)
        metrics = _load(evals / f"{key}.json") or {}
        if not metrics and key == "int8" and isinstance(check, dict):
            metrics = check.get("candidate", {}).get("eval") or {}  # the gate scored the INT8 model: reuse it
        rows.append({
            "form": label,
            "path": str(model_path),
            "accuracy": metrics.get("accuracy"),
            "auc": metrics.get("auc"),
            "itr": metrics.get("itr"),
            "tir": metrics.get("tir"),
            "size_mb": _size_mb(model_path),
            "latency_p50_ms": {f"b{b}_t{t}": _p50(bench, model_path, b, t) for b, t in REFERENCE_SHAPES},
        })
    plots = out / "plots"
    has_weights = plot_task_weights(out / "teacher" / "train-log.jsonl", plots / "task-weights.png")
    report = {
        "synthetic_data": True,
        "machine": machine,
        "stages": stages,
        "models": rows,
        "check": check,
        "plots": sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else [],
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", render_markdown(report, has_weights).encode())
    target = bundle / "report"
    if bundle.is_dir():
        target.mkdir(exist_ok=True)
        for name in ("report.json", "report.md"):
            shutil.copy2(out / name, target / name)
        if plots.is_dir():
            shutil.copytree(plots, target / "plots", dirs_exist_ok=True)
    return report


def render_markdown(report: dict, has_weights: bool) -> str:
    machine = report["machine"]
    cpu = f"{machine.get('cpu', '?')} ({machine.get('usable_cores', '?')} usable cores)"
    gpu = machine.get("gpu", {}).get("name") if isinstance(machine.get("gpu"), dict) else None
    lines = [
        "# fbcompress quickstart report",
        "",
        "Data: the SYNTHETIC procedural catalogue (not real product photos).",
        f"Machine: {cpu}" + (f", GPU {gpu}" if gpu else ", no GPU") + ".",
        "",
        "| model | AUC | ACC | ITR R@1 | ITR R@5 | ITR R@10 | TIR R@1 | TIR R@5 | TIR R@10 | "
        + " | ".join(f"p50 ms b{b} t{t}" for b, t in REFERENCE_SHAPES) + " | size MB |",
        "|---" * (10 + len(REFERENCE_SHAPES)) + "|",
    ]
    for row in report["models"]:
        itr, tir = row.get("itr") or {}, row.get("tir") or {}
        latency = [_fmt(row["latency_p50_ms"].get(f"b{b}_t{t}"), 2) for b, t in REFERENCE_SHAPES]
        lines.append(
            f"| {row['form']} | {_fmt(row['auc'])} | {_fmt(row['accuracy'])} | "
            + " | ".join(_fmt(d.get(k)) for d in (itr, tir) for k in ("r1", "r5", "r10"))
            + " | " + " | ".join(latency) + f" | {_fmt(row['size_mb'], 1)} |"
        )
    check = report.get("check")
    if isinstance(check, dict):
        lines += ["", f"Release gate (`fbcompress check`, INT8 student vs teacher): **{check.get('verdict', '?')}**"]
    lines += ["", "## Stages", "", "Seconds of a reused stage are those of the run that made its output.", "",
              "| stage | status | seconds | note |", "|---|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {stage['name']} | {stage['status']} | {stage['seconds']:.0f} | {stage.get('reason', '')} |")
    lines += ["", "## Plots", ""]
    if has_weights:
        lines.append("![adaptive task weights](plots/task-weights.png)")
    lines += [f"![{name}](plots/{name})" for name in report["plots"] if name != "task-weights.png"]
    return "\n".join(lines) + "\n"
