"""The quickstart report: one table of every model form (accuracy, latency, size) with the machine, and plots.

Why a module of its own: the report only reads what the stages wrote (eval/bench/check JSON, the teacher's
training log), so it can be rebuilt from a finished run without re-running anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbcompress.bundle.names import INT8_CPU_FILE, ONNX_FILE
from fbcompress.core.artifacts import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from fbcompress.benchmark.record import BenchRecord

# (label, eval JSON name, where the model is) for each form in the table: the teacher, and the shipped student
# as checkpoint (its run dir), ONNX and INT8 (the bundle).
FORMS = [
    ("teacher (PyTorch FP32)", "teacher", "teacher"),
    ("student 2L VSL (PyTorch FP32)", "student", "student"),
    ("student ONNX FP32 (ORT CPU)", "onnx", ONNX_FILE),
    ("student INT8 (ORT CPU)", "int8", INT8_CPU_FILE),
]
# (batch, text length) columns of the latency table: the online shape (one request), short to long texts. The
# quickstart times batch 1 only; the batch 1/8/32 matrix is `bench/matrix.py`'s.
REFERENCE_SHAPES = [(1, 8), (1, 16), (1, 64)]
VSL_TEXT, VSL_PADDED_TO = 8, 64  # the VSL figure: 8 real tokens, unpadded against padded to 64


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _verdict(path: Path):
    """The release gate's verdict for the report, None when there is none (or it cannot be read: the report
    still says what else ran)."""
    from fbcompress.core.errors import FbError
    from fbcompress.release.verdict import read_verdict

    try:
        return read_verdict(path)
    except FbError:
        return None


def _size_mb(path: Path) -> float | None:
    if path.is_dir():
        weights = path / "model.safetensors"
        return weights.stat().st_size / 1e6 if weights.is_file() else None
    return path.stat().st_size / 1e6 if path.is_file() else None


def _bench(path: Path) -> BenchRecord | None:
    """The bench record of the run, None when there is none or it does not read as one (the report still says what
    else ran)."""
    from pydantic import ValidationError

    from fbcompress.benchmark.record import BenchRecord

    try:
        return BenchRecord.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def _p50(bench: BenchRecord | None, model_path: Path, batch: int, text: int,
         padded_to: int | None = None) -> float | None:
    """The p50 of `model_path` at one shape from the bench record (VSL, i.e. unpadded, unless `padded_to`), or None
    when that case was not timed."""
    if bench is None:
        return None
    paths = {m.id: Path(m.path).resolve() for m in bench.models}
    for row in bench.results:
        if (paths.get(row.model) == model_path.resolve() and (row.batch, row.text, row.padded_to) ==
                (batch, text, padded_to) and row.timed):
            return row.p50_ms
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


def _student_width(checkpoint: Path) -> dict[str, Any]:
    config = _load(checkpoint / "config.json") or {}
    return {key: config.get(key) for key in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                              "intermediate_size")}


def student_rows(out: Path, students: list[str], shipped: str | None) -> list[dict[str, Any]]:
    """One row per student of the ladder that reached its release gate: the INT8 model's accuracy and latency as
    `fbcompress check` measured them, its size, and whether it is Pareto-optimal (no other student is at least as
    good on AUC, mean Rank@10, latency and size, and better on one)."""
    rows = []
    for name in students:
        check = _verdict(out / "eval" / name / "check.json")
        if check is None:
            continue
        metrics, latency = check.candidate.eval, check.candidate.latency
        rows.append({
            "student": name,
            **_student_width(out / "students" / name),
            "auc": metrics.get("auc"),
            "itr_r10": (metrics.get("itr") or {}).get("r10"),
            "tir_r10": (metrics.get("tir") or {}).get("r10"),
            "p50_ms": latency.get("p50_ms"),
            "speedup": check.speedup(),
            "int8_mb": _size_mb(out / "bundles" / name / INT8_CPU_FILE),
            "verdict": check.verdict,
            "failed": [metric.split(" (")[0] for metric in check.failed],
            "shipped": name == shipped,
        })
    keys = (("auc", 1), ("rank10", 1), ("p50_ms", -1), ("int8_mb", -1))  # direction: 1 higher is better

    def values(row: dict) -> list[float] | None:
        ranks = [r for r in (row.get("itr_r10"), row.get("tir_r10")) if r is not None]
        vals = [row.get("auc"), sum(ranks) / len(ranks) if ranks else None, row.get("p50_ms"), row.get("int8_mb")]
        if any(v is None for v in vals):
            return None
        return [sign * v for (_, sign), v in zip(keys, vals, strict=True)]

    for row in rows:
        mine = values(row)
        others = [values(other) for other in rows if other is not row]
        row["pareto"] = mine is not None and not any(
            o is not None and all(a >= b for a, b in zip(o, mine, strict=True)) and o != mine for o in others
        )
    return rows


def build_report(out: Path, bundle: Path, stages: list[dict], machine: dict, students: list[str] | None = None,
                 shipped: str | None = None) -> dict:
    """Collect the run's numbers into report.json / report.md (+ plots) in `out`, copied into the bundle.

    `students` is the ladder (fastest first) and `shipped` the one whose bundle was shipped; the model table shows
    the shipped student, the student table every one that reached its release gate."""
    evals = out / "eval"
    bench = _bench(out / "bench.json")
    student_evals = evals / shipped if shipped else None
    check = _verdict(student_evals / "check.json") if student_evals else None
    rows = []
    for label, key, rel in FORMS:
        if key == "teacher":
            model_path, metrics = out / "teacher", _load(evals / "teacher.json") or {}
        elif shipped is None:
            continue
        else:
            model_path = out / "students" / shipped if key == "student" else bundle / rel
            metrics = _load(student_evals / f"{key}.json") or {}
        if not metrics and key == "int8" and check is not None:
            metrics = check.candidate.eval  # the gate scored the INT8 model: reuse it
        rows.append({
            "form": label,
            "key": key,
            "path": str(model_path),
            "accuracy": metrics.get("accuracy"),
            "auc": metrics.get("auc"),
            "itr": metrics.get("itr"),
            "tir": metrics.get("tir"),
            "scored_by": metrics.get("backend"),
            "parity_vs_pytorch": metrics.get("parity_vs_pytorch"),
            "size_mb": _size_mb(model_path),
            "latency_p50_ms": {f"b{b}_t{t}": _p50(bench, model_path, b, t) for b, t in REFERENCE_SHAPES},
            "padded_p50_ms": {f"b1_t{VSL_TEXT}_pad{VSL_PADDED_TO}": _p50(bench, model_path, 1, VSL_TEXT,
                                                                         VSL_PADDED_TO)},
        })
    plots = out / "plots"
    has_weights = plot_task_weights(out / "teacher" / "train-log.jsonl", plots / "task-weights.png")
    report = {
        "synthetic_data": True,
        "machine": machine,
        "stages": stages,
        "models": rows,
        "shipped_student": shipped,
        "students": student_rows(out, students or [], shipped),
        "check": check.to_json() if check is not None else None,
        "search": search_section(evals / "search"),
        "plots": sorted(p.name for p in plots.glob("*.png")) if plots.is_dir() else [],
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", render_markdown(report, has_weights).encode())
    target = bundle / "report"
    if shipped and bundle.is_dir():  # never into a bundle this run did not ship
        target.mkdir(exist_ok=True)
        for name in ("report.json", "report.md"):
            shutil.copy2(out / name, target / name)
        if plots.is_dir():
            shutil.copytree(plots, target / "plots", dirs_exist_ok=True)
    return report


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.1f}×" if numerator and denominator else "–"


def vsl_lines(models: list[dict]) -> list[str]:
    """What variable sequence length buys at batch 1: each form with 8 real tokens, unpadded against padded to 64,
    and the teacher against each form at 8 and at 64 tokens."""
    short, long_, padded = f"b1_t{VSL_TEXT}", f"b1_t{VSL_PADDED_TO}", f"b1_t{VSL_TEXT}_pad{VSL_PADDED_TO}"
    teacher = next((m for m in models if m.get("key") == "teacher"), None)
    if teacher is None:
        return []
    lines = ["", f"### Variable sequence length (batch 1, p50 ms; text {VSL_TEXT} unpadded vs padded to "
             f"{VSL_PADDED_TO})", "",
             f"| model | t{VSL_TEXT} VSL | t{VSL_TEXT} padded to {VSL_PADDED_TO} | VSL gain | t{VSL_PADDED_TO} | "
             f"teacher ÷ model at t{VSL_TEXT} | teacher ÷ model at t{VSL_PADDED_TO} |", "|---" * 7 + "|"]
    for row in models:
        p50, pad = row["latency_p50_ms"], row.get("padded_p50_ms", {})
        t = teacher["latency_p50_ms"]
        lines.append(f"| {row['form']} | {_fmt(p50.get(short), 2)} | {_fmt(pad.get(padded), 2)} | "
                     f"{_ratio(pad.get(padded), p50.get(short))} | {_fmt(p50.get(long_), 2)} | "
                     f"{_ratio(t.get(short), p50.get(short))} | {_ratio(t.get(long_), p50.get(long_))} |")
    return lines


def search_section(folder: Path) -> dict[str, Any] | None:
    """What the search stages wrote (eval/search/): retrieval metrics of each stage, the gate, the latencies."""
    retrieval, check, bench = (_load(folder / name) for name in ("retrieval.json", "check.json", "bench.json"))
    if not any((retrieval, check, bench)):
        return None
    return {"retrieval": retrieval, "check": check, "bench": bench}


def search_lines(search: dict[str, Any] | None) -> list[str]:
    """The report's search section: retrieval per stage (± standard error), the query encoder's gate, latency."""
    if not search:
        return []
    lines = ["", "## Search (dual tower, 2-layer VSL INT8 query encoder, ANN index, re-rank)"]
    retrieval = search.get("retrieval")
    if retrieval:
        lines += ["", f"{retrieval['split']} split: {retrieval['queries']} queries over the whole catalogue "
                  f"({retrieval['index']['products']} products, {retrieval['index']['kind']} index); query encoder "
                  f"`{retrieval['encoder']['name']}`.", "",
                  "| stage | Recall@1 | Recall@10 | Recall@100 | nDCG@10 | MRR | p50 ms |", "|---" * 7 + "|"]
        for name, stage in retrieval["stages"].items():
            label = "ANN (embeddings)" if name == "ann" else f"re-rank top {stage['rerank_k']} (cross-encoder)"
            cells = " | ".join(f"{stage[m]:.3f} ± {stage[m + '_se']:.3f}"
                               for m in ("recall@1", "recall@10", "recall@100", "ndcg@10", "mrr"))
            p50 = " + ".join(f"{k} {v['p50_ms']:.2f}" for k, v in stage["latency_ms"].items())
            lines.append(f"| {label} | {cells} | {p50} |")
    check = search.get("check")
    if isinstance(check, dict):
        rows = {r["metric"]: r for r in check.get("checks", [])}
        speed = next((r for m, r in rows.items() if m.startswith("speed-up")), None)
        lines += ["", f"Release gate (`fbcompress check --index`, INT8 query encoder vs the 6-layer query tower): "
                  f"**{check.get('verdict')}**" + (f"; Recall@10 {rows['Recall@10']['delta']:+.4f}, nDCG@10 "
                                                  f"{rows['nDCG@10']['delta']:+.4f}" if "Recall@10" in rows else "")
                  + (f"; {speed['teacher']:.2f} against {speed['candidate']:.3f} ms at batch 1, "
                     f"{speed['delta']:.1f}× faster" if speed else "") + "."]
    bench = search.get("bench")
    if isinstance(bench, dict) and bench.get("end_to_end"):
        lines += ["", "End to end, one search at a time (p50 ms, share of the mean):", "",
                  "| re-rank top K | encode | ANN | image tokens | re-rank | total p50 |", "|---" * 6 + "|"]
        for row in bench["end_to_end"]:
            cells = [f"{row[s]['p50_ms']:.2f} ({row[s]['share']:.0%})" if s in row else "-"
                     for s in ("encode", "search", "fetch", "rerank")]
            lines.append(f"| {row['rerank_k'] or 'none'} | {' | '.join(cells)} | {row['total']['p50_ms']:.2f} |")
    return lines


def render_markdown(report: dict, has_weights: bool) -> str:
    from fbcompress.evaluation.latency import machine_line

    machine = report["machine"]
    lines = [
        "# fbcompress quickstart report",
        "",
        "Data: the SYNTHETIC procedural catalogue (not real product photos).",
        f"Machine: {machine_line(machine)}" + ("" if machine.get("gpu") else "; no GPU") + ".",
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
    for row in report["models"]:
        parity = row.get("parity_vs_pytorch")
        if parity:
            lines += ["", f"{row['form']}: accuracy scored in {row.get('scored_by')}, whose logits matched PyTorch's "
                      f"within {parity['max_abs_diff']:.1g} (tolerance {parity['tolerance']:g}); latency in PyTorch."]
    lines += vsl_lines(report["models"])
    check = report.get("check")
    shipped = report.get("shipped_student")
    if isinstance(check, dict):
        lines += ["", f"Shipped student: **{shipped}**. Release gate (`fbcompress check`, its INT8 model vs the "
                  f"teacher): **{check.get('verdict', '?')}**"]
    elif not shipped:
        lines += ["", "**No student passed the release gate: nothing was shipped.**"]
    if report.get("students"):
        lines += ["", "## Students (INT8, as `fbcompress check` measured them)", "",
                  "Fastest first, as the recipe's ladder lists them. Pareto: no other student is at least as good "
                  "on AUC, mean Rank@10, latency and size.", "",
                  "| student | layers | hidden | heads | FFN | AUC | ITR R@10 | TIR R@10 | p50 ms | speed-up | "
                  "INT8 MB | gate | Pareto | shipped |", "|---" * 14 + "|"]
        for row in report["students"]:
            lines.append(
                f"| {row['student']} | {row.get('num_hidden_layers')} | {row.get('hidden_size')} | "
                f"{row.get('num_attention_heads')} | {row.get('intermediate_size')} | {_fmt(row['auc'])} | "
                f"{_fmt(row['itr_r10'], 2)} | {_fmt(row['tir_r10'], 2)} | {_fmt(row['p50_ms'], 2)} | "
                f"{_fmt(row['speedup'], 1)}× | {_fmt(row['int8_mb'], 1)} | {row['verdict']}"
                f"{' (' + ', '.join(row['failed']) + ')' if row.get('failed') else ''} | "
                f"{'yes' if row['pareto'] else ''} | {'**yes**' if row['shipped'] else ''} |")
    lines += search_lines(report.get("search"))
    lines += ["", "## Stages", "", "Seconds of a reused stage are those of the run that made its output.", "",
              "| stage | status | seconds | note |", "|---|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {stage['name']} | {stage['status']} | {stage['seconds']:.0f} | {stage.get('reason', '')} |")
    lines += ["", "## Plots", ""]
    if has_weights:
        lines.append("![adaptive task weights](plots/task-weights.png)")
    lines += [f"![{name}](plots/{name})" for name in report["plots"] if name != "task-weights.png"]
    return "\n".join(lines) + "\n"
