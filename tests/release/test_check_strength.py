"""`fbcompress check` beyond its gates' arithmetic (test_check.py): the verdict table a release engineer reads,
the information rows, the speed gate's edges, and `run_check` end to end on the fast tier's models.

The end-to-end tests use the session's smoke teacher (a checkpoint, PyTorch) against its own ONNX export (ONNX
Runtime): the same weights on two backends, so their accuracies agree to float noise and every accuracy gate
passes; the smoke teacher is at chance, which does not matter for what is tested here (which model and data went
where, what the verdict record holds). Each test names the one-line breaks of fbcompress/release/check.py it was seen to
fail on (mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fbcompress.recipes import CheckSection
from fbcompress.release.check import format_verdict, verdict_rows


def _evals(auc: float, r10: float, r1: float, accuracy: float) -> dict[str, Any]:
    ranks = {"r1": r1, "r5": r10, "r10": r10}
    return {"auc": auc, "accuracy": accuracy, "itr": dict(ranks), "tir": dict(ranks)}


def _rows(section: CheckSection, teacher_ms: float = 10.0, candidate_ms: float = 4.0, candidate_auc: float = 0.89):
    return verdict_rows(
        {"teacher": _evals(0.9, 0.8, 0.5, 0.75), "candidate": _evals(candidate_auc, 0.8, 0.25, 0.625)},
        {"teacher": {"p50_ms": teacher_ms, "p99_ms": 12.5}, "candidate": {"p50_ms": candidate_ms, "p99_ms": 5.0}},
        section,
        "cpu",
    )


def _result(rows, passed: bool, failed: list[str], synthetic: bool) -> dict[str, Any]:
    return {"checks": rows, "passed": passed, "failed": failed, "data": "runs/data", "split": "test",
            "synthetic_data": synthetic, "teacher": {"path": "T"}, "candidate": {"path": "S.onnx"},
            "tolerances_from": "recipe smoke"}


def test_verdict_table_pass_exactly():
    """The whole table of a passing check. Breaks caught: the `PASS`/`info` verdict words, the `---` rule line
    (its place and joiner), the ms columns' 3 decimals (`"ms" in metric` changed or forced), the blank line and the
    summary text, the data line's `, synthetic` mark."""
    rows = _rows(CheckSection(max_auc_drop=0.02, max_rank_drop=0.03, min_speedup=2.0))
    assert format_verdict(_result(rows, True, [], synthetic=True)) == "\n".join([
        "teacher    T",
        "candidate  S.onnx",
        "data       runs/data (test split, synthetic)",
        "tolerances recipe smoke",
        "",
        "metric                        teacher  candidate  delta    limit         verdict",
        "----------------------------  -------  ---------  -------  ------------  -------",
        "AUC                           0.9000   0.8900     -0.0100  drop <= 0.02  PASS",
        "ITR Rank@10                   0.8000   0.8000     +0.0000  drop <= 0.03  PASS",
        "TIR Rank@10                   0.8000   0.8000     +0.0000  drop <= 0.03  PASS",
        "speed-up (p50 ms @ 1x16 cpu)  10.000   4.000      2.50x    >= 2x         PASS",
        "ACC                           0.7500   0.6250     -0.1250                info",
        "ITR Rank@1                    0.5000   0.2500     -0.2500                info",
        "TIR Rank@1                    0.5000   0.2500     -0.2500                info",
        "p99 ms @ 1x16 cpu             12.500   5.000      -7.500                 info",
        "",
        "PASS: the candidate is within every tolerance",
    ])


def test_verdict_table_fail_with_nan():
    """A failing check whose candidate AUC is nan (e.g. a split without mismatched pairs): the cells read `nan`,
    the summary names every failed gate. Breaks caught: `_cell`'s nan test (`or` -> `and`, the text `nan`), the
    delta column's nan branch, the `FAIL` summary's `", "` joiner, the data line without `, synthetic`."""
    rows = _rows(CheckSection(max_auc_drop=0.02, max_rank_drop=0.03, min_speedup=3.0), candidate_auc=math.nan)
    failed = [row["metric"] for row in rows if row["passed"] is False]
    assert failed == ["AUC", "speed-up (p50 ms @ 1x16 cpu)"]
    lines = format_verdict(_result(rows, False, failed, synthetic=False)).splitlines()
    assert lines[2] == "data       runs/data (test split)"
    assert lines[7].split() == ["AUC", "0.9000", "nan", "nan", "drop", "<=", "0.02", "FAIL"]
    assert lines[10].split()[-4:] == ["2.50x", ">=", "3x", "FAIL"]
    assert lines[-1] == "FAIL: AUC, speed-up (p50 ms @ 1x16 cpu) outside tolerance"


def test_information_rows_carry_the_delta_and_no_limit():
    """Breaks caught: `_info_row`'s `candidate - teacher` -> `+`, its empty limit changed."""
    info = [row for row in _rows(CheckSection()) if row["passed"] is None]
    assert [(r["metric"], r["delta"], r["limit"]) for r in info] == [
        ("ACC", -0.125, ""), ("ITR Rank@1", -0.25, ""), ("TIR Rank@1", -0.25, ""), ("p99 ms @ 1x16 cpu", -7.5, "")]


@pytest.mark.parametrize(("min_speedup", "limit", "passed"), [(0.0, "not checked", None), (0.5, ">= 0.5x", True),
                                                              (1.0, ">= 1x", True), (3.0, ">= 3x", False)])
def test_the_speed_gate_is_off_only_at_zero(min_speedup, limit, passed):
    """min_speedup 0 switches the gate off; any positive value (below 1 too: "may be 2x slower") is judged.
    Breaks caught: `min_speedup > 0` -> `>= 0` / `> 1` / forced either way in the limit or the verdict, the
    `not checked` text."""
    speed = _rows(CheckSection(min_speedup=min_speedup), teacher_ms=10.0, candidate_ms=4.0)[3]
    assert (speed["limit"], speed["passed"], speed["delta"]) == (limit, passed, 2.5)


def test_a_candidate_timed_at_zero_ms_is_infinitely_faster():
    """A p50 of 0 ms (a timer too coarse for the candidate) is an infinite speed-up, not a ZeroDivisionError.
    Breaks caught: `cp50 > 0` -> `>= 0` or forced true."""
    speed = _rows(CheckSection(min_speedup=2.0), teacher_ms=10.0, candidate_ms=0.0)[3]
    assert speed["delta"] == math.inf and speed["passed"] is True


# ----------------------------------------------------------------------------- run_check on the fast tier models


FAST = CheckSection(min_speedup=0.0, latency_runs=12, latency_warmup=2, batch_size=2, text_length=8)


@pytest.fixture()
def models(trained_smoke, smoke_bundle, tiny_data):
    """(teacher checkpoint, its ONNX export, the tiny dataset). Every test below calls `run_check` itself: mutation
    testing attributes a function to the tests that ran it, and a shared fixture's run belongs to one test only."""
    return trained_smoke, smoke_bundle / "model.onnx", tiny_data


def _synthetic_copy(data, tmp_path):
    """The tiny dataset, labelled synthetic in its dataset.json (the fingerprint covers the manifests only)."""
    import json
    import shutil

    copy = tmp_path / "synthetic-data"
    shutil.copytree(data, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    (copy / "dataset.json").write_text(json.dumps({**meta, "synthetic": True}))
    return copy


def test_run_check_end_to_end(models, tmp_path, monkeypatch):
    """One check of the teacher against its ONNX export on the val split, 3 queries per task: what it records,
    how it timed, and a verdict that follows its rows. Breaks caught: the split, data, device, models' paths,
    tolerances, rows or schema not recorded (or under other keys); `max_queries` / `split` not passed to evaluate;
    the evals or latencies of the two roles swapped; the stamp (weights hash, data fingerprint) not applied; the
    synthetic flag not read from the teacher's eval; latency_runs / warm-up / batch / text length not passed to
    the timing (watched through `latency.time_interleaved`); pairs_per_s not batch / p50 (or renamed); the
    speed-up row not teacher / candidate p50; `passed` / `verdict` / `failed` not derived from the rows."""
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.evaluation import latency
    from fbcompress.evaluation.metrics import model_sha256
    from fbcompress.release.check import run_check
    from fbcompress.release.verdict import CHECK_SCHEMA

    teacher, candidate, tiny = models
    data = _synthetic_copy(tiny, tmp_path)
    timed: list[dict] = []
    real = latency.time_interleaved
    monkeypatch.setattr(latency, "time_interleaved", lambda calls, **kw: timed.append(kw) or real(calls, **kw))
    result = run_check(teacher, candidate, data, FAST, split="val", max_queries=3).to_json()
    assert [(kw["runs"], kw["warmup"]) for kw in timed] == [(12, 2)]  # the recipe's timing, both models at once
    assert result["schema"] == CHECK_SCHEMA
    assert (result["split"], result["data"], result["device"]) == ("val", str(data), "cpu")
    assert result["tolerances"] == FAST.model_dump() and result["synthetic_data"] is True
    fingerprint = DatasetDir.open(data).fingerprint
    for role, path, backend in (("teacher", teacher, "pytorch"), ("candidate", candidate, "onnxruntime")):
        record = result[role]
        assert record["path"] == str(path)
        assert record["eval"]["split"] == "val" and record["eval"]["n_queries"] == 3
        assert record["eval"]["model_sha256"] == model_sha256(path)
        assert record["eval"]["data_fingerprint"] == fingerprint
        latency = record["latency"]
        assert latency["backend"].startswith(backend) and latency["precision"] == "fp32", latency
        assert latency["runs"] == 12 and latency["p50_ms"] > 0
        assert latency["pairs_per_s"] == pytest.approx(2 / (latency["p50_ms"] / 1000.0))
    assert result["machine"]["cpu"] and result["machine"]["usable_cores"] >= 1
    rows = {row["metric"]: row for row in result["checks"]}
    speed = rows["speed-up (p50 ms @ 2x8 cpu)"]
    assert speed["delta"] == pytest.approx(result["teacher"]["latency"]["p50_ms"]
                                           / result["candidate"]["latency"]["p50_ms"])
    # the same weights on PyTorch and ONNX Runtime: every gate passes, the speed gate is off. The 6-step model scores
    # near chance, with near-ties that float rounding may order either way: on an AVX-512 VM (2026-12-02) one of the
    # 18 x 18 matched/mismatched pairs swapped between the runtimes (AUC 0.4954 vs 0.4985), on the AVX2 VM none did.
    # More than one swapped pair would be more than rounding.
    one_pair = 1 / (result["teacher"]["eval"]["n_pairs"] / 2) ** 2
    assert abs(rows["AUC"]["delta"]) <= one_pair + 1e-12 and rows["AUC"]["teacher"] == result["teacher"]["eval"]["auc"]
    assert rows["AUC"]["candidate"] == result["candidate"]["eval"]["auc"]
    assert (result["passed"], result["verdict"], result["failed"]) == (True, "PASS", [])


def test_run_check_fails_on_a_gate_and_names_it(models):
    """A negative AUC tolerance cannot be set through a recipe; a speed gate no model can meet can: the verdict
    is FAIL with that gate named; without `split` and `device` a check runs on the test split on the CPU. Breaks
    caught: `not failed` inverted, FAIL/PASS swapped, `failed` not the failed rows' metrics, the defaults "test"
    and "cpu" changed."""
    from fbcompress.release.check import run_check

    teacher, candidate, data = models
    strict = FAST.model_copy(update={"min_speedup": 1000.0})
    result = run_check(teacher, candidate, data, strict, max_queries=1).to_json()
    assert (result["split"], result["device"], result["candidate"]["eval"]["split"]) == ("test", "cpu", "test")
    assert (result["passed"], result["verdict"]) == (False, "FAIL")
    assert result["failed"] == ["speed-up (p50 ms @ 2x8 cpu)"]


def test_run_check_reuses_the_saved_teacher_eval(models, tmp_path, monkeypatch):
    """`teacher_eval`: the teacher is not scored again (its eval is the saved `fbcompress eval --json`), the
    candidate is. Breaks caught: the saved eval ignored or used for the candidate, `if role in evals: continue`
    dropped, the reuse check's arguments (weights, data, split, query count) passed wrongly."""
    import json

    from cli_helpers import run

    from fbcompress.evaluation import metrics as evaluate_module
    from fbcompress.release.check import run_check

    teacher, candidate, data = models
    saved = tmp_path / "teacher-eval.json"
    result = run("eval", "--model", teacher, "--data", data, "--split", "val", "--max-queries", 3, "--json", saved)
    assert result.exit_code == 0, result.output
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "marker": "saved"}))
    scored: list[str] = []
    real = evaluate_module.evaluate

    def counting(scorer, *args, **kwargs):
        scored.append(scorer.backend)
        return real(scorer, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", counting)
    again = run_check(teacher, candidate, data, FAST, split="val", max_queries=3, teacher_eval=saved).to_json()
    assert again["teacher"]["eval"]["marker"] == "saved" and "marker" not in again["candidate"]["eval"]
    assert len(scored) == 1 and scored[0].startswith("onnxruntime")


def test_run_check_shows_bars_only_when_asked(models, capsys):
    """Breaks caught: `progress` not passed to evaluate."""
    from fbcompress.release.check import run_check

    teacher, candidate, data = models
    run_check(teacher, candidate, data, FAST, split="val", max_queries=1, progress=True)
    err = capsys.readouterr().err
    assert "pairs:" in err and "ITR:" in err
    run_check(teacher, candidate, data, FAST, split="val", max_queries=1)
    assert "pairs:" not in capsys.readouterr().err


def test_run_check_refuses_a_text_length_beyond_either_tokenizer(models):
    """Breaks caught: the `>` test against the runner's max text length (off by one: `>=` refuses the longest
    legal length), the message without the key and the role."""
    from fbcompress.core.errors import FbError
    from fbcompress.release.check import run_check
    from fbcompress.runtime.scoring import open_scorer

    teacher, candidate, data = models
    longest = open_scorer(candidate).spec.max_text_len
    ok = FAST.model_copy(update={"text_length": longest, "latency_runs": 1})
    assert run_check(teacher, candidate, data, ok, split="val", max_queries=1).to_json()["schema"]
    with pytest.raises(FbError, match=rf"check.text_length {longest + 1}: the teacher's tokenizer emits at most "
                                      rf"{longest} tokens"):
        run_check(teacher, candidate, data, FAST.model_copy(update={"text_length": longest + 1}), split="val")


def test_run_check_refuses_a_missing_model_before_any_work(models, tmp_path):
    from fbcompress.core.errors import FbError
    from fbcompress.release.check import run_check

    teacher, _, data = models
    with pytest.raises(FbError):
        run_check(teacher, Path(tmp_path / "missing.onnx"), data, FAST)


def test_a_missing_figure_reads_nan():
    """A row whose candidate figure is missing (None) prints `nan` like a nan. Break caught: `_cell`'s
    `value is None or ...` -> `and` (None reaches the float format: TypeError)."""
    rows = _rows(CheckSection())
    rows[4] = {**rows[4], "candidate": None}  # ACC of the candidate not measured
    line = format_verdict(_result(rows, True, [], synthetic=False)).splitlines()[11]
    assert line.split()[:3] == ["ACC", "0.7500", "nan"]
