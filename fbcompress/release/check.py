"""`fbcompress check`: is a compressed candidate good enough to replace its teacher?

Both models are scored by `fbcompress.evaluation.metrics.evaluate` on the same fixed eval sets of one dataset dir (AUC,
ITR/TIR Rank@K), and timed at the recipe's reference shape (`check.batch_size` x `check.text_length`, real
tokens) in alternating blocks on the same machine, so a background burst cannot fake a speed-up. The verdict
compares the candidate against the recipe's `check` tolerances:

  AUC drop <= max_auc_drop; ITR and TIR Rank@10 drop <= max_rank_drop; teacher p50 / candidate p50 >= min_speedup

Exit codes: 0 every gate passes, 1 a gate fails (a release pipeline stops there), 2 bad input (one line).
Tolerances come from `--recipe` (+ `--set`), else the candidate's or the teacher's checkpoint recipe, else the
defaults of `CheckSection`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fbcompress.core.errors import FbError
from fbcompress.evaluation.tolerance import within
from fbcompress.release.verdict import CheckedModel, CheckVerdict

RANK_K = 10


def check_section(recipe: str | None, overrides: tuple[str, ...], models: list[Path]):
    """The `check` tolerances and where they came from (see the module doc for the order)."""
    from fbcompress.recipes import resolve_section

    return resolve_section("check", recipe, overrides, models)


def _drop_row(metric: str, teacher: float, candidate: float, limit: float) -> dict[str, Any]:
    drop = teacher - candidate
    return {
        "metric": metric,
        "teacher": teacher,
        "candidate": candidate,
        "delta": candidate - teacher,
        "limit": f"drop <= {limit:g}",
        "passed": within(drop, limit),
    }


def _info_row(metric: str, teacher: float, candidate: float) -> dict[str, Any]:
    return {
        "metric": metric,
        "teacher": teacher,
        "candidate": candidate,
        "delta": candidate - teacher,
        "limit": "",
        "passed": None,
    }


def verdict_rows(evals: dict[str, dict], latency: dict[str, dict], section: Any, device: str) -> list[dict[str, Any]]:
    """Gate rows (passed True/False) and information rows (passed None), in table order."""
    t, c = evals["teacher"], evals["candidate"]
    rows = [_drop_row("AUC", t["auc"], c["auc"], section.max_auc_drop)]
    for mode in ("itr", "tir"):
        rows.append(
            _drop_row(
                f"{mode.upper()} Rank@{RANK_K}", t[mode][f"r{RANK_K}"], c[mode][f"r{RANK_K}"], section.max_rank_drop
            )
        )
    tp50, cp50 = latency["teacher"]["p50_ms"], latency["candidate"]["p50_ms"]
    speedup = tp50 / cp50 if cp50 > 0 else math.inf
    shape = f"{section.batch_size}x{section.text_length} {device}"
    rows.append(
        {
            "metric": f"speed-up (p50 ms @ {shape})",
            "teacher": tp50,
            "candidate": cp50,
            "delta": speedup,
            "limit": f">= {section.min_speedup:g}x" if section.min_speedup > 0 else "not checked",
            "passed": within(section.min_speedup - speedup, 0.0) if section.min_speedup > 0 else None,
        }
    )
    rows.append(_info_row("ACC", t["accuracy"], c["accuracy"]))
    for mode in ("itr", "tir"):
        rows.append(_info_row(f"{mode.upper()} Rank@1", t[mode]["r1"], c[mode]["r1"]))
    rows.append(_info_row(f"p99 ms @ {shape}", latency["teacher"]["p99_ms"], latency["candidate"]["p99_ms"]))
    return rows


def run_check(
    teacher: Path,
    candidate: Path,
    data_dir: Path,
    section: Any,
    split: str = "test",
    device: str = "cpu",
    max_queries: int | None = None,
    progress: bool = False,
    teacher_eval: Path | None = None,
) -> CheckVerdict:
    """Evaluate and time both models; the verdict rows and everything they were computed from.

    `teacher_eval`: a saved `fbcompress eval --json` of the teacher on the same data and split, used instead of
    scoring the teacher again (it is the slow model; a release pipeline has usually just evaluated it). It is
    refused unless its recorded weights hash, data fingerprint, split and query count match.
    """
    from fbcompress.benchmark.runners import Target, open_runner
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.evaluation.latency import example_inputs, machine_info, throughput, time_interleaved
    from fbcompress.evaluation.metrics import evaluate_model, reusable_eval

    dataset = DatasetDir.open(data_dir)
    roles = {"teacher": Path(teacher), "candidate": Path(candidate)}
    # open (and hash-check) both models first: a bad path, form or shape fails (exit 2) before any evaluation.
    # Each runner carries its model behind the Scorer protocol too, so evaluation and timing share one load.
    runners = {role: open_runner(Target(path, device=device)) for role, path in roles.items()}
    for role, runner in runners.items():
        if section.text_length > runner.max_text_len:
            raise FbError(
                f"check.text_length {section.text_length}: the {role}'s tokenizer emits at most "
                f"{runner.max_text_len} tokens"
            )
    evals = {}
    if teacher_eval is not None:
        evals["teacher"] = reusable_eval(teacher_eval, roles["teacher"], dataset, split, max_queries)
    for role, runner in runners.items():
        if role not in evals:
            evals[role] = evaluate_model(runner.scorer, roles[role], dataset, split, max_queries, progress)
    import torch

    with torch.inference_mode():
        calls = [
            runners[r].prepare(example_inputs(runners[r].spec, section.batch_size, section.text_length)) for r in roles
        ]
        stats = time_interleaved(
            calls,
            runs=section.latency_runs,
            warmup=section.latency_warmup,
            synchronize=[runners[r].synchronize for r in roles],
        )
    latency = {
        role: {
            **s.to_dict(),
            "pairs_per_s": throughput(s, section.batch_size),
            "backend": runners[role].info["backend"],
            "precision": runners[role].info["precision"],
        }
        for role, s in zip(roles, stats, strict=True)
    }
    rows = verdict_rows(evals, latency, section, device)
    failed = [r["metric"] for r in rows if r["passed"] is False]
    cuda = device.startswith("cuda")
    return CheckVerdict(
        passed=not failed,
        verdict="FAIL" if failed else "PASS",
        failed=failed,
        split=split,
        data=str(data_dir),
        synthetic_data=bool(evals["teacher"].get("synthetic")),
        device=device,
        tolerances=section.model_dump(),
        checks=rows,
        teacher=CheckedModel(path=str(teacher), eval=evals["teacher"], latency=latency["teacher"]),
        candidate=CheckedModel(path=str(candidate), eval=evals["candidate"], latency=latency["candidate"]),
        machine=machine_info(int(device.partition(":")[2] or 0) if cuda else None),
    )


def _cell(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.3f}" if "ms" in metric else f"{value:.4f}"


def format_verdict(result: dict[str, Any]) -> str:
    """The verdict table: metric, teacher, candidate, delta, limit, pass/fail, then one summary line."""
    header = ("metric", "teacher", "candidate", "delta", "limit", "verdict")
    body = []
    for row in result["checks"]:
        metric = row["metric"]
        if metric.startswith("speed-up"):
            delta = f"{row['delta']:.2f}x"
        else:
            delta = (
                "nan"
                if math.isnan(row["delta"])
                else f"{row['delta']:+.4f}"
                if "ms" not in metric
                else f"{row['delta']:+.3f}"
            )
        verdict = {True: "PASS", False: "FAIL", None: "info"}[row["passed"]]
        body.append(
            (metric, _cell(row["teacher"], metric), _cell(row["candidate"], metric), delta, row["limit"], verdict)
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    summary = (
        "PASS: the candidate is within every tolerance"
        if result["passed"]
        else f"FAIL: {', '.join(result['failed'])} outside tolerance"
    )
    data = f"{result['data']} ({result['split']} split{', synthetic' if result['synthetic_data'] else ''})"
    head = [
        f"teacher    {result['teacher']['path']}",
        f"candidate  {result['candidate']['path']}",
        f"data       {data}",
        f"tolerances {result['tolerances_from']}",
        "",
    ]
    return "\n".join([*head, *lines, "", summary])
