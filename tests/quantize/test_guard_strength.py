"""The tolerance rule and the INT8 guard, tested at their boundaries so that a one-line break fails a test.

* `tolerance.within`: a drop exactly at the limit passes, a hair (a few 1e-9) over fails, the float epsilon is
  1e-9 absolute (just inside passes, just outside fails), improvements (negative drops) pass, NaN fails; and the
  same through the two gates that use it (`check.verdict_rows`, `quantize.measure.compare`).
* The guard's decision from measured numbers (`measure.compare`): which metric breaks, on which key.
* The guard end to end on the smoke bundle (`fbcompress quantize`, seconds): the INT8 file's scores are made worse
  (matched pairs pushed to the bottom) on one split only. The smoke model sits at chance (AUC ~0.5, recipe
  tolerance 0.1), so corrupting its weights cannot move AUC by more than the tolerance in a known direction; a
  scorer that sinks every matched pair takes AUC to ~0 whatever the model, a genuine drop of ~0.5.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fbcompress.commands.cli import main
from fbcompress.core.artifacts import sha256_file
from fbcompress.evaluation.tolerance import TOLERANCE_EPS, within
from fbcompress.quantize.measure import compare
from fbcompress.recipes import CheckSection
from fbcompress.release.check import verdict_rows

# ------------------------------------------------------------------------------------------- tolerance.within


def test_a_drop_at_the_limit_passes_and_a_hair_over_fails():
    """Breaks caught: `drop <= limit + TOLERANCE_EPS` -> `drop <= limit` (0.07 - 0.05 vs 0.02 fails), -> `drop <
    limit + ...` (a drop of exactly limit + eps fails), -> `limit - TOLERANCE_EPS` (exactly at the limit fails),
    TOLERANCE_EPS 1e-9 -> 1e-6 or a relative epsilon `limit * (1 + eps)` (limit + 2e-9 passes / 0.02 + 5e-10
    fails), and the comparison reversed."""
    for limit in (0.005, 0.02, 0.1, 0.0):
        assert within(limit, limit), limit
        assert within(limit + 0.5e-9, limit), limit  # inside the epsilon
        assert within(limit + TOLERANCE_EPS, limit), limit  # the epsilon itself is inside (<=)
        assert not within(limit + 2e-9, limit), limit  # a hair beyond the epsilon fails
        assert not within(limit + 1e-6, limit), limit
        assert not within(limit + 0.5, limit), limit
    assert within(0.07 - 0.05, 0.02)  # 0.020000000000000004: 2 of 100 Rank@10 queries, float rounding
    assert within(0.9 - 0.895, 0.005)  # 0.0050000000000000044


def test_improvements_pass_and_nan_fails():
    """Breaks caught: `drop` -> `abs(drop)` (an INT8 file or student better than its reference would fail) and
    `drop <= ...` -> `not drop > ...` (NaN, a metric that could not be computed, would pass)."""
    assert within(-0.3, 0.005) and within(-1.0, 0.0) and within(-1e-12, 0.0)
    assert not within(math.nan, 0.1)


# ------------------------------------------------------------------------------------ the gates that use within


def _evals(auc: float, r10: float) -> dict:
    ranks = {"r1": 0.5, "r5": r10, "r10": r10}
    return {"auc": auc, "accuracy": 0.8, "itr": dict(ranks), "tir": dict(ranks)}


def _check_gates(teacher: dict, candidate: dict, teacher_ms: float, candidate_ms: float, section) -> dict:
    rows = verdict_rows(
        {"teacher": teacher, "candidate": candidate},
        {"teacher": {"p50_ms": teacher_ms, "p99_ms": teacher_ms}, "candidate": {"p50_ms": candidate_ms,
                                                                                 "p99_ms": candidate_ms}},
        section,
        "cpu",
    )
    return {row["metric"].split(" (")[0]: row["passed"] for row in rows if row["passed"] is not None}


def test_check_gates_at_the_limit_pass_a_hair_over_fail():
    """`fbcompress check`'s gates through `within`. Breaks caught: the tolerance epsilon widened (1e-6) or
    dropped (0.3 / 0.1 ms gives a speed-up of 2.9999999999999996 against min_speedup 3; 0.9 - 0.895 > 0.005); the
    speed gate as `within(speedup - min_speedup, 0)` (a slower candidate passes); a gate reading another
    section key (max_rank_drop for AUC)."""
    section = CheckSection(max_auc_drop=0.005, max_rank_drop=0.02, min_speedup=3.0)
    at = _check_gates(_evals(0.9, 0.07), _evals(0.895, 0.05), 0.3, 0.1, section)
    assert at == {"AUC": True, "ITR Rank@10": True, "TIR Rank@10": True, "speed-up": True}
    hair = 3e-9
    over = _check_gates(_evals(0.9, 0.07), _evals(0.895 - hair, 0.05 - hair), 0.3, 0.1 + hair, section)
    assert over == {"AUC": False, "ITR Rank@10": False, "TIR Rank@10": False, "speed-up": False}
    better = _check_gates(_evals(0.9, 0.07), _evals(0.95, 0.5), 0.3, 0.01, section)
    assert all(better.values()), better
    # the AUC limit is the AUC key's, the Rank@10 limit the rank key's: 0.015 breaks one and not the other
    mixed = _check_gates(_evals(0.9, 0.07), _evals(0.885, 0.055), 0.3, 0.1, section)
    assert mixed == {"AUC": False, "ITR Rank@10": True, "TIR Rank@10": True, "speed-up": True}


def _metrics(auc: float, itr10: float, tir10: float, r1: float = 0.5) -> dict:
    return {"accuracy": 0.8, "auc": auc, "itr": {"r1": r1, "r5": itr10, "r10": itr10},
            "tir": {"r1": r1, "r5": tir10, "r10": tir10}}


def test_guard_compare_at_the_limit_passes_a_hair_over_fails():
    """The guard's decision (`measure.compare`) at its exact boundary. Breaks caught: `not within(drop, ...)` ->
    `drop > ...` with no epsilon (0.9 - 0.895 breaks AUC), a wider epsilon (a 3e-9 excess passes), `drop =
    ref - got` -> `got - ref` (the hair-over file would pass and the better file break)."""
    fp32 = _metrics(0.9, 0.07, 0.12)
    at_limit = compare(fp32, _metrics(0.895, 0.05, 0.10), max_auc_drop=0.005, max_rank10_drop=0.02)
    assert at_limit["passed"] and at_limit["breaks"] == []
    hair = 3e-9
    over = compare(fp32, _metrics(0.895 - hair, 0.05 - hair, 0.10 - hair), 0.005, 0.02)
    assert not over["passed"]
    assert [(b["metric"], b["key"]) for b in over["breaks"]] == [
        ("AUC", "quantize.max_auc_drop"), ("ITR Rank@10", "quantize.max_rank10_drop"),
        ("TIR Rank@10", "quantize.max_rank10_drop")]
    assert over["breaks"][0]["drop"] == pytest.approx(0.005 + hair, abs=1e-12)
    better = compare(fp32, _metrics(0.99, 0.5, 0.6), 0.005, 0.02)
    assert better["passed"] and better["deltas"]["auc"] == pytest.approx(0.09)


def test_guard_compare_gates_tir_rank10_alone_and_not_rank1():
    """Breaks caught: the Rank@10 loop over ("itr",) only, or `headline` reading "itr" for both modes (a TIR-only
    drop passes); `key = f"{mode}_r10"` -> `_r1` (a Rank@1 collapse breaks, a Rank@10 drop does not); deltas
    as `ref - got` (an INT8 file that lost TIR Rank@10 shows a positive delta)."""
    fp32 = _metrics(0.9, 0.7, 0.7, r1=0.4)
    tir_only = compare(fp32, _metrics(0.9, 0.7, 0.6, r1=0.4), 0.005, 0.02)
    assert [b["metric"] for b in tir_only["breaks"]] == ["TIR Rank@10"] and not tir_only["passed"]
    assert tir_only["breaks"][0]["drop"] == pytest.approx(0.1)
    assert tir_only["deltas"]["tir_r10"] == pytest.approx(-0.1) and tir_only["deltas"]["itr_r10"] == 0
    rank1_only = compare(fp32, _metrics(0.9, 0.7, 0.7, r1=0.0), 0.005, 0.02)
    assert rank1_only["passed"] and rank1_only["deltas"]["itr_r1"] == pytest.approx(-0.4)


# -------------------------------------------------------------------------------- the guard, end to end (smoke)


class _RowsSeen:
    """A SplitData that remembers the rows of the last batch it made (everything else is the real one's)."""

    def __init__(self, data):
        self._data = data
        self.last: tuple[list[int], list[int]] = ([], [])

    def __getattr__(self, name):
        return getattr(self._data, name)

    def batch(self, image_rows, text_rows):
        self.last = (list(image_rows), list(text_rows))
        return self._data.batch(image_rows, text_rows)


class _SinksMatches:
    """The real ONNX Runtime scorer of a file, whose match logit is lowered by 20 wherever image and text are of
    the same product: a model that ranks every true partner last (AUC ~0) whatever the model underneath."""

    def __init__(self, scorer, data: _RowsSeen):
        self._scorer, self._data = scorer, data

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def logits(self, inputs):
        logits = np.array(self._scorer.logits(inputs), dtype=np.float32)
        images, texts = self._data.last
        assert len(images) == len(logits)
        products = self._data.products
        same = np.array([products[i] == products[t] for i, t in zip(images, texts, strict=True)])
        logits[same, 1] -= 20.0
        return logits


def _sink_matches(monkeypatch, split: str, files: set[str]) -> list[tuple[str, str]]:
    """From here on, quantize scores the files named `files` (by their bundle name) worse on `split`; the FP32
    reference and every other (file, split) are scored as they are. Returns the (file, split) scorings seen."""
    from fbcompress.quantize import measure

    real = measure.evaluate
    seen: list[tuple[str, str]] = []

    def evaluate(scorer, dataset, data, split_, **kwargs):
        seen.append((scorer.name, split_))
        if split_ == split and scorer.name in files:
            data = _RowsSeen(data)
            scorer = _SinksMatches(scorer, data)
        return real(scorer, dataset, data, split_, **kwargs)

    monkeypatch.setattr(measure, "evaluate", evaluate)
    return seen


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _quantize(smoke_bundle: Path, tiny_data: Path, tmp_path: Path, *settings: str):
    root = tmp_path / "exported" / smoke_bundle.name
    shutil.copytree(smoke_bundle, root)
    before = _tree(root)
    report_path = tmp_path / "report.json"
    args = ["quantize", "--model", root / "model.onnx", "--data", tiny_data, "--json", report_path,
            "--latency-runs", "0", "--set", "quantize.cpu_file=static"]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(main, [str(a) for a in args])
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return result, report, root, before


INT8_FILES = {"model.int8.onnx", "model.int8.trt.onnx"}


def test_guard_rejects_a_test_split_drop_that_val_did_not_show(smoke_bundle, tiny_data, tmp_path, monkeypatch):
    """Val passes (the fall-back loop accepts attempt 0), then the INT8 files score matched pairs last on test
    (AUC ~0 against FP32 ~0.5, a drop 5x the smoke tolerance 0.1): the guard must reject, exit 1, bundle unchanged.
    Breaks caught (quantize/pipeline.py): `if comparison["breaks"]: breaks.append(...)` dropped or negated;
    `run.score(stand_in or path, rel_q, opts.split)` scoring "val" instead of --split; `if breaks:` -> `if not
    breaks`/ the rejection return removed; compare's `not within(...)` inverted."""
    seen = _sink_matches(monkeypatch, "test", INT8_FILES)
    result, report, root, before = _quantize(smoke_bundle, tiny_data, tmp_path)
    assert result.exit_code == 1, result.output
    assert ("model.int8.onnx", "test") in seen and ("model.onnx", "test") in seen
    assert report["status"] == "rejected"
    assert report["fallback"]["passed_on_val"] is True and report["fallback"]["returned_to_fp"] == []
    for rel in INT8_FILES:
        accuracy = report["accuracy"]["files"][rel]
        assert accuracy["passed"] is False and [b["metric"] for b in accuracy["breaks"]] == ["AUC"]
        assert accuracy["int8"]["auc"] < 0.1 < report["accuracy"]["fp32"]["auc"]
    assert report["message"].startswith("quantize guard: ") and "on val" not in report["message"]
    assert "quantize.max_auc_drop 0.1" in report["message"]
    assert _tree(root) == before


def test_guard_rejects_a_val_break_of_one_file_even_when_test_passes(smoke_bundle, tiny_data, tmp_path, monkeypatch):
    """Only the CPU file is made worse, and only on val, with the fall-back switched off: the loop ends broken on
    val while both files pass on test. The guard must still reject (a file the loop could not bring within
    tolerance does not ship because the test split happened to be kind). Breaks caught: the `passed_on_val is
    False` block of run_quantize dropped (or `is True`); val_check's `all(v["passed"] ...)` -> `any(...)` (the
    TensorRT file's pass would carry the broken CPU file); run_fallback's `passed=bool(verdict["passed"])`
    forced True."""
    _sink_matches(monkeypatch, "val", {"model.int8.onnx"})
    result, report, root, before = _quantize(smoke_bundle, tiny_data, tmp_path, "quantize.fallback=false")
    assert result.exit_code == 1, result.output
    assert report["status"] == "rejected" and report["fallback"]["passed_on_val"] is False
    step = report["fallback"]["steps"][-1]
    assert step["val"]["model.int8.onnx"]["passed"] is False and step["val"]["model.int8.trt.onnx"]["passed"]
    assert all(report["accuracy"]["files"][rel]["passed"] for rel in INT8_FILES)  # the test split passed
    assert "on val, tolerance broken on val; fall-back disabled" in report["message"]
    assert "model.int8.onnx: AUC" in report["message"]
    assert _tree(root) == before


def test_fallback_records_every_attempt_and_why_it_stopped():
    """The loop's record is what the quantization report shows a user: each attempt with the node it returned to FP,
    the nodes kept FP so far and the val verdict; the stop reason in words; the log line per node; and the files
    each verdict and the ranking were computed on. Breaks (mutation testing): a step's key renamed or the step
    dropped, attempt 0 numbered 1, a stop reason emptied or re-cased, `rank`/`check` handed None instead of the
    files just built, the log line emptied."""
    from pathlib import Path

    from fbcompress.quantize.fallback import run_fallback

    ranking = [{"name": "q", "rel_error": 0.25}, {"name": "k", "rel_error": 0.125}]
    seen: dict[str, list] = {"check": [], "rank": [], "log": []}

    def build(excluded, attempt):
        return {"model.int8.onnx": Path(f"attempt-{attempt}")}

    def check(files):
        seen["check"].append(files)
        return {"passed": files["model.int8.onnx"].name == "attempt-2", "val": {"auc": 0.5}}

    def rank(files):
        seen["rank"].append(files)
        return ranking

    result = run_fallback(build, check, rank, max_nodes=4, log=seen["log"].append)
    assert result.steps == [
        {"attempt": 0, "returned_to_fp": None, "excluded": [], "passed": False, "val": {"auc": 0.5}},
        {"attempt": 1, "returned_to_fp": "q", "excluded": ["q"], "passed": False, "val": {"auc": 0.5}},
        {"attempt": 2, "returned_to_fp": "k", "excluded": ["q", "k"], "passed": True, "val": {"auc": 0.5}},
    ]
    assert result.stopped == "tolerance met on val after returning 2 node(s) to FP"
    assert seen["rank"] == [{"model.int8.onnx": Path("attempt-0")}]
    assert seen["check"] == [{"model.int8.onnx": Path(f"attempt-{i}")} for i in range(3)]
    assert seen["log"] == ["fall-back 1: returning q (error 0.25) to FP ...",
                           "fall-back 2: returning k (error 0.125) to FP ..."]
    first = run_fallback(build, lambda files: {"passed": True}, rank, max_nodes=4)
    assert first.stopped == "tolerance met without returning any node to FP"
    assert first.steps == [{"attempt": 0, "returned_to_fp": None, "excluded": [], "passed": True}]
    nothing = run_fallback(build, lambda files: {"passed": False}, lambda files: [], max_nodes=4)
    assert nothing.stopped == "tolerance broken on val and no quantized node is left to return to FP"
    assert not nothing.passed and run_fallback(build, lambda files: {"passed": True}, rank, 4).passed
