"""Quickstart orchestration: stage reuse by fingerprint, resume vs start-over, gates, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fbcompress import quickstart as qs
from fbcompress.report import build_report, plot_task_weights


class FakeCommands:
    """Stands in for the fbcompress commands: records each call and writes the outputs the stage promises."""

    def __init__(self, tmp_path: Path, fail: dict[str, int] | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.stages = {tuple(s.args): s for s in qs.build_stages("smoke", (), tmp_path / "run", tmp_path / "bundle")}

    def __call__(self, args: list[str]) -> int:
        self.calls.append(args)
        stage = self.stages[_base(args)]
        if stage.name in self.fail:
            return self.fail[stage.name]
        for path in stage.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        return 0

    def names(self) -> list[str]:
        return [self.stages[_base(call)].name for call in self.calls]


def _base(args: list[str]) -> tuple[str, ...]:
    """The stage's own command line, without the --resume/--force the orchestrator appends to training stages."""
    return tuple(args[:-1] if args[-1] in ("--resume", "--force") and args[0] in ("train-teacher", "distill")
                 else args)


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch):
    monkeypatch.setattr(qs, "tensorrt_unavailable", lambda: "TensorRT is not installed (test)")


def _run(tmp_path: Path, fake: FakeCommands, **kwargs):
    return qs.run_quickstart("smoke", (), tmp_path / "run", tmp_path / "bundle", invoke=fake, **kwargs)


def _stage_names() -> list[str]:
    return [s.name for s in qs.build_stages("smoke", (), Path("r"), Path("b"))]


def test_first_run_runs_every_stage_in_order_and_skips_tensorrt_with_reason(tmp_path):
    fake = FakeCommands(tmp_path)
    results = _run(tmp_path, fake)
    expected = [n for n in _stage_names() if n != "tensorrt"]
    assert fake.names() == expected
    trt = next(r for r in results if r.name == "tensorrt")
    assert trt.status == "skipped" and "TensorRT" in trt.reason
    # A training stage with no record yet resumes (continues an interrupted run, or starts fresh).
    teacher_call = next(c for c in fake.calls if c[0] == "train-teacher")
    assert teacher_call[-1] == "--resume"


def test_rerun_with_nothing_changed_reuses_everything(tmp_path):
    _run(tmp_path, FakeCommands(tmp_path))
    again = FakeCommands(tmp_path)
    results = _run(tmp_path, again)
    assert again.calls == []
    assert {r.status for r in results} == {"reused", "skipped"}


def test_a_changed_stage_reruns_it_and_everything_downstream_only(tmp_path):
    _run(tmp_path, FakeCommands(tmp_path))
    state_path = tmp_path / "run" / qs.STATE_FILE
    state = json.loads(state_path.read_text())
    state["student"]["fingerprint"] = "stale"  # as if the distill settings had changed
    state_path.write_text(json.dumps(state))
    again = FakeCommands(tmp_path)
    _run(tmp_path, again)
    assert "teacher" not in again.names() and "data" not in again.names()
    assert again.names()[:2] == ["student", "student-eval"]
    assert "bench" in again.names() and "check" in again.names()
    distill_call = next(c for c in again.calls if c[0] == "distill")
    assert distill_call[-1] == "--force"  # inputs changed: start over, never resume a stale checkpoint


def test_missing_output_reruns_the_stage(tmp_path):
    _run(tmp_path, FakeCommands(tmp_path))
    (tmp_path / "run" / "eval" / "teacher.json").unlink()
    again = FakeCommands(tmp_path)
    _run(tmp_path, again)
    assert again.names() == ["teacher-eval", "check"]  # the gate reads the teacher's eval


def test_force_redoes_everything(tmp_path):
    _run(tmp_path, FakeCommands(tmp_path))
    again = FakeCommands(tmp_path)
    _run(tmp_path, again, force=True)
    assert again.names() == [n for n in _stage_names() if n != "tensorrt"]
    assert next(c for c in again.calls if c[0] == "train-teacher")[-1] == "--force"


def test_a_crashed_stage_skips_its_dependants_and_is_not_recorded(tmp_path):
    fake = FakeCommands(tmp_path, fail={"student": 2})
    results = {r.name: r for r in _run(tmp_path, fake)}
    assert results["student"].status == "failed"
    for name in ("student-eval", "onnx", "int8", "bench", "check"):
        assert results[name].status == "skipped" and "student" in results[name].reason
    assert results["teacher-eval"].status == "ran"  # independent of the student
    state = json.loads((tmp_path / "run" / qs.STATE_FILE).read_text())
    assert "student" not in state  # a crash is retried next time, as an interrupted stage (--resume)
    again = FakeCommands(tmp_path)
    _run(tmp_path, again)
    assert next(c for c in again.calls if c[0] == "distill")[-1] == "--resume"


def test_a_failed_gate_is_recorded_and_reused_not_rerun(tmp_path):
    fake = FakeCommands(tmp_path, fail={"check": 1})
    results = {r.name: r for r in _run(tmp_path, fake)}
    assert results["check"].status == "failed" and results["check"].exit_code == 1
    again = FakeCommands(tmp_path)
    results = {r.name: r for r in _run(tmp_path, again)}
    assert again.calls == []
    assert results["check"].status == "failed" and "reused" in results["check"].reason


def test_out_that_holds_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(qs.FbError, match="holds other files"):
        qs.require_clean_out(tmp_path)
    with pytest.raises(qs.FbError, match="is a file"):
        qs.require_clean_out(tmp_path / "notes.txt")


def test_report_reads_the_stage_outputs(tmp_path):
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    (out / "eval").mkdir(parents=True)
    bundle.mkdir()
    teacher = {"accuracy": 0.9, "auc": 0.95, "itr": {"r1": 0.5, "r5": 0.8, "r10": 0.9},
               "tir": {"r1": 0.4, "r5": 0.7, "r10": 0.85}}
    (out / "eval" / "teacher.json").write_text(json.dumps(teacher))
    (out / "teacher").mkdir()
    (out / "teacher" / "model.safetensors").write_bytes(b"x" * 2_000_000)
    (out / "teacher" / "train-log.jsonl").write_text("\n".join(
        json.dumps({"step": s, "losses": {"ita": 0.7 - s / 100, "mlm": 3.0}, "weights": {"ita": 0.4, "mlm": 0.6}})
        for s in range(1, 11)
    ))
    (out / "bench.json").write_text(json.dumps({
        "models": [{"id": 0, "path": str(out / "teacher")}],
        "results": [{"model": 0, "batch": 1, "text": 16, "padded_to": None, "p50_ms": 17.25}],
    }))
    report = build_report(out, bundle, [{"name": "teacher", "status": "ran", "seconds": 3.0}],
                          {"cpu": "Test CPU", "usable_cores": 2})
    row = report["models"][0]
    assert row["auc"] == 0.95 and row["size_mb"] == pytest.approx(2.0)
    assert row["latency_p50_ms"]["b1_t16"] == 17.25 and row["latency_p50_ms"]["b32_t64"] is None
    md = (out / "report.md").read_text()
    assert "SYNTHETIC" in md and "Test CPU" in md and "| 0.950 |" in md and "17.25" in md
    assert (out / "plots" / "task-weights.png").stat().st_size > 1000
    assert (bundle / "report" / "report.md").read_text() == md


def test_weights_plot_needs_a_log(tmp_path):
    assert plot_task_weights(tmp_path / "missing.jsonl", tmp_path / "w.png") is False


def test_a_changed_recipe_section_reruns_only_the_stages_that_read_it(tmp_path):
    _run(tmp_path, FakeCommands(tmp_path))
    overrides = ("quantize.max_fallback_nodes=2",)
    stages = qs.build_stages("smoke", overrides, tmp_path / "run", tmp_path / "bundle")
    fake = FakeCommands(tmp_path)
    fake.stages = {tuple(s.args): s for s in stages}
    qs.run_quickstart("smoke", overrides, tmp_path / "run", tmp_path / "bundle", invoke=fake)
    assert fake.names() == ["int8", "bench", "check"]


def test_ctrl_c_in_a_stage_stops_the_pipeline_and_keeps_finished_stages(tmp_path):
    fake = FakeCommands(tmp_path, fail={"student": qs.EXIT_INTERRUPTED})
    with pytest.raises(qs.QuickstartInterrupted, match="student"):
        _run(tmp_path, fake)
    assert fake.names() == ["data", "teacher", "teacher-eval", "student"]
    state = json.loads((tmp_path / "run" / qs.STATE_FILE).read_text())
    assert set(state) == {"data", "teacher", "teacher-eval"}
    again = FakeCommands(tmp_path)
    _run(tmp_path, again)
    assert again.names()[0] == "student" and again.calls[0][-1] == "--resume"
