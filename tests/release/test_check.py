"""`fbcompress check`: gates, verdict table, exit codes, where tolerances come from.

A check is only meaningful if the teacher is better than chance, so this module trains its own smoke teacher on
the `tiny_data` catalogue (texts name the colour of a centred square) long enough to read colours: the session's
`trained_smoke` (6 steps) sits at chance AUC, and a random student would pass against it. Measured on this
catalogue: ITA alone stays at chance for hundreds of steps; with ITC + MLM + MPM, lr 3e-3 and no dropout, 600
steps of batch 8 reach test AUC ~0.88 — asserted below with margin (>= 0.75). That training is the one slow
fixture here (about 18 s on a quiet core, minutes on a loaded one); 200 steps were measured still at chance (0.52).

The random student fails on AUC, an accuracy gate. The Rank@10 gates cannot fail on this catalogue: its eval sets
have 8 negatives per query, so the true partner is always within the top 10 (Rank@10 = 1.0 for any model); the
verdict tests below cover those gates with made-up metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error, run

from fbcompress.recipes import CheckSection, load_recipe
from fbcompress.release.check import check_section, format_verdict, verdict_rows
from fbcompress.release.verdict import CHECK_SCHEMA

# The teacher recipe for these tests: smoke sizes, trained until it reads colours (see the module doc).
TEACHER_SETTINGS = (
    "train.steps=600",
    "train.lr=3e-3",
    "train.batch_size=8",
    "teacher.dropout=0",
    "train.tasks=[mlm,mpm,ita,itc]",
    "train.eval_every=600",
    "train.save_every=600",
)
MIN_TEACHER_AUC = 0.75
# Fewer timed runs than the recipe's 100: these tests judge the gates, not the latency figure.
FAST = ("--set", "check.latency_runs=20", "--set", "check.latency_warmup=2")


@pytest.fixture(scope="module")
def good_teacher(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("check") / "teacher"
    overrides = [arg for setting in TEACHER_SETTINGS for arg in ("--set", setting)]
    result = run("train-teacher", "-r", "smoke", "--data", tiny_data, "--out", out, *overrides)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def random_student(good_teacher, tmp_path_factory) -> Path:
    """The teacher's architecture with every weight re-initialised: what a broken distillation would ship."""
    import torch

    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model, save_checkpoint

    model, ckpt = load_model(good_teacher)
    torch.manual_seed(1234)
    model.apply(model.bert._init_weights)
    out = tmp_path_factory.mktemp("check") / "random-student"
    meta = {"kind": "student", "recipe": ckpt.meta["recipe"], "note": "re-initialised weights (test fixture)"}
    save_checkpoint(out, model, load_tokenizer(good_teacher), meta)
    return out


def test_check_passes_the_teacher_against_itself(good_teacher, tiny_data, tmp_path):
    """Same model on both sides: every accuracy delta is exactly 0. The speed-up of a model over itself is 1 +-
    timing noise, so any gate >= 1 would pass or fail by chance; min_speedup=0 switches that gate off here (the
    speed gate itself is covered by the verdict tests below)."""
    out = tmp_path / "check.json"
    result = run(
        "check",
        "--teacher",
        good_teacher,
        "--candidate",
        good_teacher,
        "--data",
        tiny_data,
        "--recipe",
        "smoke",
        "--set",
        "check.min_speedup=0",
        *FAST,
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    payload = json.loads(out.read_text())
    assert payload["schema"] == CHECK_SCHEMA and payload["passed"] is True and payload["failed"] == []
    assert payload["verdict"] == "PASS"
    assert payload["tolerances"]["min_speedup"] == 0 and payload["tolerances_from"] == "recipe smoke"
    rows = {row["metric"]: row for row in payload["checks"]}
    for metric in ("AUC", "ITR Rank@10", "TIR Rank@10"):
        assert rows[metric]["delta"] == 0 and rows[metric]["passed"] is True
    speed = next(row for name, row in rows.items() if name.startswith("speed-up"))
    assert speed["passed"] is None and speed["limit"] == "not checked" and speed["delta"] > 0
    for role in ("teacher", "candidate"):
        assert payload[role]["latency"]["runs"] == 20 and payload[role]["eval"]["auc"] >= MIN_TEACHER_AUC
    assert payload["machine"]["cpu"]


def test_check_fails_a_random_student_with_exit_1(good_teacher, random_student, tiny_data, tmp_path):
    out = tmp_path / "check.json"
    # no --recipe: the tolerances come from the candidate's checkpoint recipe (smoke)
    result = run("check", "-t", good_teacher, "-c", random_student, "--data", tiny_data, *FAST, "--json", out)
    assert result.exit_code == 1, result.output
    payload = json.loads(out.read_text())
    assert payload["passed"] is False and "AUC" in payload["failed"]
    assert str(random_student) in payload["tolerances_from"] and payload["tolerances"]["min_speedup"] == 0.5
    auc = next(row for row in payload["checks"] if row["metric"] == "AUC")
    assert auc["teacher"] - auc["candidate"] > payload["tolerances"]["max_auc_drop"]
    assert "FAIL" in result.output and "AUC" in result.output.splitlines()[-1]


def test_check_help_has_examples():
    result = run("check", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "fbcompress check --teacher" in result.output
    assert "Exit 0" in result.output


def test_check_bad_input_is_one_line_exit_2(trained_smoke, tiny_data, tmp_path):
    assert_one_line_error(
        run("check", "-t", trained_smoke, "-c", tmp_path / "nope", "--data", tiny_data), "model not found"
    )
    assert_one_line_error(run("check", "-t", trained_smoke, "-c", trained_smoke, "--data", tmp_path / "nodata"))
    assert_one_line_error(
        run("check", "-t", trained_smoke, "-c", trained_smoke, "--data", tiny_data, "--set", "check.max_auc_drop=-1"),
        "check.max_auc_drop",
    )
    assert_one_line_error(
        run("check", "-t", trained_smoke, "-c", trained_smoke, "--data", tiny_data, "--set", "check.bogus=1"),
        "unknown recipe key 'check.bogus'",
    )
    assert_one_line_error(
        run("check", "-t", trained_smoke, "-c", trained_smoke, "--data", tiny_data, "--set", "check.text_length=64"),
        "check.text_length 64",
    )


# ------------------------------------------------------------------------------------ verdict logic, no models


def _evals(auc: float, r10: float, r1: float = 0.5) -> dict[str, Any]:
    ranks = {"r1": r1, "r5": r10, "r10": r10}
    return {"auc": auc, "accuracy": 0.8, "itr": dict(ranks), "tir": dict(ranks)}


def _latency(p50: float) -> dict[str, Any]:
    return {"p50_ms": p50, "p99_ms": p50 * 2}


def _rows(teacher: dict, candidate: dict, teacher_ms: float, candidate_ms: float, section: CheckSection) -> list:
    return verdict_rows(
        {"teacher": teacher, "candidate": candidate},
        {"teacher": _latency(teacher_ms), "candidate": _latency(candidate_ms)},
        section,
        "cpu",
    )


def test_verdict_limits_are_inclusive_and_speedup_is_a_ratio():
    section = CheckSection(max_auc_drop=0.01, max_rank_drop=0.03, min_speedup=2.0)
    rows = _rows(_evals(0.90, 0.80), _evals(0.89, 0.77), 10.0, 5.0, section)
    gates = {row["metric"]: row for row in rows if row["passed"] is not None}
    assert all(row["passed"] for row in gates.values()), gates  # drops exactly at the limits, speed-up exactly 2
    speed = next(row for name, row in gates.items() if name.startswith("speed-up"))
    assert speed["delta"] == pytest.approx(2.0) and "1x16 cpu" in speed["metric"]

    rows = _rows(_evals(0.90, 0.80), _evals(0.885, 0.76), 10.0, 5.5, section)
    failed = [row["metric"] for row in rows if row["passed"] is False]
    assert failed == ["AUC", "ITR Rank@10", "TIR Rank@10", "speed-up (p50 ms @ 1x16 cpu)"]
    assert {row["metric"] for row in rows if row["passed"] is None} == {
        "ACC",
        "ITR Rank@1",
        "TIR Rank@1",
        "p99 ms @ 1x16 cpu",
    }


def test_a_better_candidate_passes_and_nan_fails():
    section = CheckSection()
    rows = _rows(_evals(0.80, 0.70), _evals(0.95, 0.99), 10.0, 1.0, section)
    assert all(row["passed"] is not False for row in rows)
    rows = _rows(_evals(0.80, 0.70), _evals(math.nan, 0.70), 10.0, 1.0, section)
    assert next(row for row in rows if row["metric"] == "AUC")["passed"] is False


def test_verdict_table_columns():
    section = CheckSection()
    rows = _rows(_evals(0.90, 0.80), _evals(0.70, 0.80), 10.0, 2.0, section)
    result = {
        "checks": rows,
        "passed": False,
        "failed": ["AUC"],
        "data": "D",
        "split": "test",
        "synthetic_data": True,
        "teacher": {"path": "T"},
        "candidate": {"path": "S"},
        "tolerances_from": "defaults",
    }
    text = format_verdict(result)
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "teacher", "candidate", "delta", "limit", "verdict"]
    auc_line = next(line for line in text.splitlines() if line.startswith("AUC"))
    assert "0.9000" in auc_line and "0.7000" in auc_line and "-0.2000" in auc_line and auc_line.endswith("FAIL")
    assert "5.00x" in text and text.splitlines()[-1] == "FAIL: AUC outside tolerance"


def test_check_section_precedence(trained_smoke, tmp_path):
    # --recipe wins; --set overrides it
    section, source = check_section("quickstart", ("check.min_speedup=5",), [trained_smoke])
    assert source == "recipe quickstart" and section.min_speedup == 5 and section.max_auc_drop == 0.02
    # else the checkpoint's recipe: its stored `check` section, or the recipe file it names
    section, source = check_section(None, (), [tmp_path, trained_smoke])
    assert str(trained_smoke) in source and section.min_speedup == 0.5  # smoke's
    named = tmp_path / "named"
    named.mkdir()
    (named / "fbcompress.json").write_text(json.dumps({"recipe": {"name": "quickstart"}}))
    section, source = check_section(None, (), [named])
    quickstart = load_recipe("quickstart").check.min_speedup
    assert quickstart not in (0.5, 2.0)  # tells the named recipe from smoke's and from the defaults
    assert source == f"recipe quickstart (named by {named})" and section.min_speedup == quickstart
    stored = tmp_path / "ckpt"
    stored.mkdir()
    (stored / "fbcompress.json").write_text(json.dumps({"recipe": {"name": "x", "check": {"min_speedup": 7}}}))
    section, source = check_section(None, (), [stored, trained_smoke])
    assert section.min_speedup == 7 and str(stored) in source
    # else the defaults
    section, source = check_section(None, ("check.max_rank_drop=0.1",), [tmp_path])
    assert source == "defaults" and section.max_rank_drop == 0.1 and section.min_speedup == 2.0


def test_recipes_have_check_sections():
    from fbcompress.recipes import load_recipe

    for name in ("smoke", "quickstart", "fashiongen-bert-base"):
        check = load_recipe(name).check
        assert check.text_length <= load_recipe(name).data.max_text_len
        assert check.latency_runs >= 100


@pytest.mark.slow
def test_check_reuses_a_saved_teacher_eval_only_when_it_matches(good_teacher, random_student, tiny_data, tmp_path):
    saved = tmp_path / "teacher-eval.json"
    assert run("eval", "--model", good_teacher, "--data", tiny_data, "--json", saved).exit_code == 0
    evaluated = json.loads(saved.read_text())
    assert evaluated["model_sha256"] and evaluated["data_fingerprint"]
    out = tmp_path / "check.json"
    result = run("check", "-t", good_teacher, "-c", random_student, "--data", tiny_data, *FAST,
                 "--teacher-eval", saved, "--json", out)
    assert result.exit_code == 1, result.output
    assert json.loads(out.read_text())["teacher"]["eval"] == evaluated
    # an eval of other weights (here: the student's) is refused, not silently used as the teacher's
    other = tmp_path / "student-eval.json"
    assert run("eval", "--model", random_student, "--data", tiny_data, "--json", other).exit_code == 0
    assert_one_line_error(
        run("check", "-t", good_teacher, "-c", random_student, "--data", tiny_data, *FAST, "--teacher-eval", other),
        "model_sha256 differs",
    )
