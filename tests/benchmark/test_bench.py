"""`fbcompress bench` and the latency statistics behind it.

The statistics and the matrix logic (speed-ups, VSL savings, JSON schema) run on a fake clock and fake runners, so
their numbers are exact; the CLI test times the real smoke checkpoint and its ONNX export with a handful of runs
(numbers are noise on a shared CI core, only the shape of the output is asserted).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import assert_one_line_error, run, stdout_json

from fbcompress.benchmark.matrix import BENCH_SCHEMA, BenchSettings, measure_shape, run_bench
from fbcompress.benchmark.record import BenchRecord
from fbcompress.benchmark.report import LATENCY_PLOT, SPEEDUP_PLOT, format_table, write_plots
from fbcompress.benchmark.runners import MEMORY_CPU, Target
from fbcompress.evaluation.latency import LatencyStats, throughput, time_callable, time_interleaved
from fbcompress.modeling.model import PatchSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """perf_counter stand-in: time moves only when the code under test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------- latency statistics


def test_time_callable_exact_percentiles_on_a_fake_clock():
    clock = FakeClock()
    timed = [k / 1000 for k in range(1, 101)]  # 1..100 ms, shuffled: order must not matter
    random.Random(0).shuffle(timed)
    durations = iter([5.0] * 10 + timed)  # warm-up calls are slow (compilation, caches) and must not count

    def call() -> None:
        clock.now += next(durations)

    stats = time_callable(call, runs=100, warmup=10, timer=clock)
    # numpy's linear interpolation on 1..100: rank p/100*(n-1) → p50 = 50.5, p90 = 90.1, p99 = 99.01
    assert stats.runs == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.min_ms == pytest.approx(1.0)


def test_synchronize_is_inside_the_timed_window():
    """On CUDA a call returns before the GPU is done: the device sync must be part of each timed run."""
    clock = FakeClock()
    syncs = []

    def call() -> None:
        clock.now += 0.002

    def synchronize() -> None:
        syncs.append(clock.now)
        clock.now += 0.001  # the GPU finishing the queued work

    stats = time_callable(call, runs=10, warmup=2, timer=clock, synchronize=synchronize)
    assert stats.p50_ms == pytest.approx(3.0) and stats.p99_ms == pytest.approx(3.0)
    assert len(syncs) == 11  # once after warm-up, once per timed run


def test_throughput_is_batch_over_median_latency():
    stats = LatencyStats(runs=100, p50_ms=4.0, p90_ms=5.0, p99_ms=9.0, mean_ms=4.2, min_ms=3.0)
    assert throughput(stats, 8) == pytest.approx(2000.0)
    assert throughput(LatencyStats(runs=1, p50_ms=0.0, p90_ms=0.0, p99_ms=0.0, mean_ms=0.0, min_ms=0.0), 8) is None


def test_time_interleaved_alternates_blocks_and_keeps_exact_stats():
    clock = FakeClock()
    order: list[str] = []

    def make(name: str, seconds: float):
        def call() -> None:
            order.append(name)
            clock.now += seconds

        return call

    a_stats, b_stats = time_interleaved([make("a", 0.001), make("b", 0.003)], runs=25, warmup=2, block=10, timer=clock)
    timed = order[4:]  # after 2 warm-up calls each
    assert order[:4] == ["a", "a", "b", "b"]
    assert timed == ["a"] * 10 + ["b"] * 10 + ["a"] * 10 + ["b"] * 10 + ["a"] * 5 + ["b"] * 5
    assert a_stats.runs == b_stats.runs == 25
    assert a_stats.p50_ms == pytest.approx(1.0) and b_stats.p99_ms == pytest.approx(3.0)


# ------------------------------------------------------------------------------------- matrix on fake runners


SPEC = PatchSpec(patch_encoder="pixels", patch_dim=48, num_patches=64, image_size=32, grid=8, max_text_len=32)


@dataclass
class FakeRunner:
    """A model whose call costs `ms_per_token` per sequence token per pair, on the fake clock."""

    label: str
    ms_per_token: float
    clock: FakeClock
    max_text_len: int = 32
    max_positions: int = 64
    spec: PatchSpec = SPEC
    memory_kind: str = MEMORY_CPU
    target: Target = field(default_factory=lambda: Target(Path("fake")))
    info: dict = field(
        default_factory=lambda: {"backend": "fake", "mode": "eager", "device": "cpu", "precision": "fp32"}
    )

    def prepare(self, inputs):
        batch, text = inputs["input_ids"].shape
        seconds = self.ms_per_token * (text + inputs["patches"].shape[1]) * batch / 1000.0

        def call() -> None:
            self.clock.now += seconds

        return call

    def synchronize(self) -> None:
        pass


def test_machine_info_carries_a_measured_gemm_speed():
    """Two VMs of one name can differ 1.6x: every result file says how fast the machine's FP32 GEMM was."""
    from fbcompress.evaluation.latency import MachineRecord, machine_info, matmul_gflops

    assert 0.1 < matmul_gflops(size=128, seconds=0.05) < 1e5
    info = machine_info()
    assert info["fp32_matmul_gflops"] > 0 and info["torch_threads"] >= 1
    assert MachineRecord.model_validate(info).model_dump(exclude={"gpu"} if "gpu" not in info else set()) == info
    assert "gpu" not in info or info["gpu"]["compute_capability"]  # no GPU: no key, as every reader expects


def test_measure_reports_stats_throughput_and_memory():
    clock = FakeClock()
    runner = FakeRunner("m", 0.01, clock)
    from fbcompress.evaluation.latency import example_inputs

    (row,) = measure_shape([runner], [example_inputs(SPEC, 4, 16)], runs=5, warmup=1, timer=clock)
    expected_ms = 0.01 * (16 + 64) * 4
    assert row["p50_ms"] == pytest.approx(expected_ms) and row["runs"] == 5
    assert row["pairs_per_s"] == pytest.approx(4 / (expected_ms / 1000))
    assert row["memory"]["kind"] == MEMORY_CPU and row["memory"]["rss_mib"] > 0


def test_run_bench_speedups_vsl_savings_and_schema():
    clock = FakeClock()
    teacher, student = FakeRunner("teacher", 0.02, clock), FakeRunner("student", 0.005, clock)
    settings = BenchSettings(batch_sizes=(1, 4), text_lengths=(8, 16), runs=3, warmup=1, pad_to=32)
    result_record = run_bench([], settings, runners=[teacher, student], timer=clock)
    result = result_record.to_json()
    assert result["schema"] == BENCH_SCHEMA and result["failed"] == 0
    assert [m["label"] for m in result["models"]] == ["teacher", "student"]
    assert any("below design.md" in note for note in result["notes"])  # 3 runs < 100
    rows = result["results"]
    assert len(rows) == 2 * 2 * 2 * 2  # models x batches x lengths x (VSL, padded)
    for row in rows:
        assert row["error"] is None
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["seq_len"] == (row["padded_to"] or row["text"]) + 64
        expected = 4.0 if row["model"] == 1 else 1.0  # 0.02 / 0.005 ms per token
        assert row["speedup_vs_first"] == pytest.approx(expected)
        if row["padded_to"] is None:  # VSL saves (32 + 64) / (T + 64)
            assert row["vsl_speedup"] == pytest.approx((32 + 64) / (row["text"] + 64))
    table = format_table(result_record)
    assert "8→32 (pad)" in table and "4.00×" in table
    json.dumps(result)  # serialisable as is


def test_models_of_one_shape_are_timed_in_alternating_blocks():
    """A slow spell of a shared machine must hit every model of a comparison alike: blocks of 10 runs alternate."""
    clock, order = FakeClock(), []

    class Logged(FakeRunner):
        def prepare(self, inputs):
            call = super().prepare(inputs)

            def logged() -> None:
                order.append(self.label)
                call()

            return logged

    runners = [Logged("a", 0.01, clock), Logged("b", 0.02, clock)]
    result_record = run_bench([], BenchSettings((1,), (8,), runs=25, warmup=2), runners=runners, timer=clock)
    result = result_record.to_json()
    assert order[:4] == ["a", "a", "b", "b"]  # each warmed up alone first
    timed = order[4:]
    assert timed == ["a"] * 10 + ["b"] * 10 + ["a"] * 10 + ["b"] * 10 + ["a"] * 5 + ["b"] * 5
    a, b = result["results"]
    assert (a["label"], b["label"]) == ("a", "b") and b["p50_ms"] == pytest.approx(2 * a["p50_ms"])


def test_run_bench_skips_lengths_a_model_cannot_run_or_clips_defaults():
    """A length beyond a model's positions is a skipped row with its reason, not an abort (bench/run_gpu.sh asked
    for 64 against engines that stop at 48 and timed nothing); nothing runnable at all, or a zero length, is
    still one FbError."""
    from fbcompress.core.errors import FbError

    clock = FakeClock()
    short = FakeRunner("short", 0.01, clock, max_text_len=8, max_positions=16)
    chosen_record = run_bench([], BenchSettings((1,), (8, 32), runs=1, warmup=0), runners=[short], timer=clock)
    chosen = chosen_record.to_json()
    assert chosen["failed"] == 0 and chosen["skipped"] == 1 and chosen["settings"]["text_lengths"] == [8, 32]
    ok, skipped = chosen["results"]
    assert ok["text"] == 8 and ok["skipped"] is None and ok["p50_ms"] > 0
    assert skipped["text"] == 32 and skipped["error"] is None and skipped["runs"] == 0
    assert skipped["skipped"] == "32 text tokens: this model runs at most 16 text tokens"
    assert skipped["speedup_vs_first"] is None and skipped["vsl_speedup"] is None
    assert any("short: text lengths [32] skipped: it runs at most 16" in note for note in chosen["notes"])
    assert "| short | fake | cpu | fp32 | 1 | 32 | skipped: 32 text tokens" in format_table(chosen_record)
    clipped_record = run_bench(
        [], BenchSettings((1,), (8, 32), runs=1, warmup=0), clip_lengths=True, runners=[short], timer=clock
    )
    clipped = clipped_record.to_json()
    assert clipped["settings"]["text_lengths"] == [8] and clipped["skipped"] == 0
    assert any("[32] skipped" in note for note in clipped["notes"])
    padded_record = run_bench([], BenchSettings((1,), (8,), runs=1, warmup=0, pad_to=64), runners=[short], timer=clock)
    padded = padded_record.to_json()
    vsl, pad = padded["results"]
    assert padded["failed"] == 0 and vsl["p50_ms"] > 0 and vsl["vsl_speedup"] is None
    assert pad["padded_to"] == 64 and pad["skipped"] == "padded to 64 tokens: this model runs at most 16 text tokens"
    with pytest.raises(FbError, match="no model can run any of them"):
        run_bench([], BenchSettings((1,), (32, 64), runs=1, warmup=0), runners=[short], timer=clock)
    with pytest.raises(FbError, match="at least 1"):
        run_bench([], BenchSettings((1,), (0, 8), runs=1, warmup=0), runners=[short], timer=clock)
    with pytest.raises(FbError, match="no model to benchmark"):
        run_bench([], BenchSettings((1,), (8,), runs=1, warmup=0), timer=clock)
    # longer than the tokenizer emits but within the positions: timed, with a note saying no request is that long
    beyond_record = run_bench([], BenchSettings((1,), (8, 16), runs=1, warmup=0), runners=[short], timer=clock)
    beyond = beyond_record.to_json()
    assert beyond["failed"] == 0 and any("lengths [16] are timed as shapes only" in n for n in beyond["notes"])


def test_lengths_beyond_one_model_are_skipped_for_that_model_only():
    """Two models, one stopping at 16 text tokens (an engine's profiles), asked for 8 and 32 padded to 48: the
    other model times every shape, the short one skips the shapes it cannot run, and no skipped row counts as a
    failure or serves as a speed-up reference."""
    clock = FakeClock()
    short = FakeRunner("short", 0.005, clock, max_text_len=8, max_positions=16)
    long = FakeRunner("long", 0.02, clock, max_text_len=32, max_positions=64)
    settings = BenchSettings((1,), (8, 32), runs=3, warmup=1, pad_to=48)
    result_record = run_bench([], settings, runners=[short, long], timer=clock)
    result = result_record.to_json()
    assert result["failed"] == 0 and result["skipped"] == 3
    rows = {(r["label"], r["text"], r["padded_to"]): r for r in result["results"]}
    for key in (("long", 8, None), ("long", 8, 48), ("long", 32, None), ("long", 32, 48), ("short", 8, None)):
        assert rows[key]["error"] is None and rows[key]["skipped"] is None and rows[key]["p50_ms"] > 0, key
    assert rows[("short", 32, None)]["skipped"] == "32 text tokens: this model runs at most 16 text tokens"
    for key in (("short", 8, 48), ("short", 32, 48)):
        assert rows[key]["skipped"] == "padded to 48 tokens: this model runs at most 16 text tokens"
    assert rows[("long", 8, None)]["speedup_vs_first"] == pytest.approx(0.25)  # vs short at the same shape
    assert rows[("long", 32, None)]["speedup_vs_first"] is None  # short skipped 32: no reference, no number
    assert rows[("long", 8, 48)]["speedup_vs_first"] is None
    assert rows[("long", 8, None)]["vsl_speedup"] == pytest.approx((48 + 64) / (8 + 64))
    assert rows[("short", 8, None)]["vsl_speedup"] is None  # its padded row was skipped
    assert any("short: text lengths [32], --pad-to 48 skipped: it runs at most 16" in n for n in result["notes"])
    table = format_table(result_record)
    assert "| short | fake | cpu | fp32 | 1 | 32 | skipped: 32 text tokens: this model runs at most 16" in table
    assert "| short | fake | cpu | fp32 | 1 | 8→48 (pad) | skipped: padded to 48 tokens" in table
    json.dumps(result)


def test_a_model_whose_backend_does_not_load_is_skipped_and_the_rest_is_timed(monkeypatch):
    """A `BackendUnavailable` while opening one target (no TensorRT, an ORT provider that is listed but does not
    load) makes that model a skipped entry with its reason; any other FbError still aborts before any timing."""
    import fbcompress.benchmark.matrix as matrix
    from fbcompress.benchmark.report import format_report
    from fbcompress.core.errors import BackendUnavailable, FbError

    clock = FakeClock()
    opened: list[str] = []

    def opener(target: Target) -> FakeRunner:
        opened.append(str(target.label))
        if target.label == "trt":
            raise BackendUnavailable("TensorRT is not installed (pip install tensorrt)\nmore detail")
        if target.label == "bad":
            raise FbError("--device gpu is not one of cpu, cuda, cuda:N")
        return FakeRunner(str(target.label), 0.01, clock)

    monkeypatch.setattr(matrix, "open_runner", opener)
    targets = [Target(Path("a.onnx"), label="ort"), Target(Path("m.plan"), "tensorrt", "cuda", label="trt")]
    result_record = run_bench(targets, BenchSettings((1,), (8,), runs=2, warmup=0), timer=clock)
    result = result_record.to_json()
    assert result["failed"] == 0 and [r["label"] for r in result["results"]] == ["ort"]
    ort, trt = result["models"]
    assert ort["skipped"] is None and ort["id"] == 0
    assert trt == {
        "id": 1, "label": "trt", "path": "m.plan", "backend": "tensorrt", "mode": None, "device": "cuda",
        "precision": "fp32", "skipped": "TensorRT is not installed (pip install tensorrt)",
    }
    assert "skipped trt: TensorRT is not installed (pip install tensorrt)" in result["notes"]
    table = format_table(result_record)
    assert "| trt | tensorrt | cuda | fp32 | all | all | skipped: TensorRT is not installed" in table
    assert "**trt**: `m.plan` — tensorrt, cuda; skipped: TensorRT is not installed" in format_report(result_record)
    json.dumps(result)
    with pytest.raises(FbError, match="no model can run on this machine"):
        run_bench(targets[1:], BenchSettings((1,), (8,), runs=1, warmup=0), timer=clock)
    opened.clear()
    before = clock.now
    with pytest.raises(FbError, match="--device gpu"):
        run_bench([*targets, Target(Path("x"), label="bad")], BenchSettings((1,), (8,), runs=1), timer=clock)
    assert opened == ["ort", "trt", "bad"] and clock.now == before  # refused before anything was timed


def test_a_failing_case_is_recorded_and_the_matrix_goes_on():
    clock = FakeClock()

    class Broken(FakeRunner):
        def prepare(self, inputs):
            if inputs["input_ids"].shape[0] > 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
            return super().prepare(inputs)

    result_record = run_bench(
        [], BenchSettings((1, 2), (8,), runs=2, warmup=0), runners=[Broken("broken", 0.01, clock)], timer=clock
    )
    result = result_record.to_json()
    ok, bad = result["results"]
    assert ok["error"] is None and result["failed"] == 1
    assert bad["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "error: RuntimeError" in format_table(result_record)


@pytest.mark.slow
def test_plots_are_pngs(tmp_path):
    clock = FakeClock()
    result_record = run_bench(
        [],
        BenchSettings((1, 4), (8, 16), runs=2, warmup=0, pad_to=32),
        runners=[FakeRunner("a", 0.02, clock), FakeRunner("b", 0.01, clock)],
        timer=clock,
    )
    written = write_plots(result_record, tmp_path / "plots")
    assert [p.name for p in written] == [LATENCY_PLOT, SPEEDUP_PLOT]
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
    single_record = run_bench(
        [], BenchSettings((1,), (8,), runs=1, warmup=0), runners=[FakeRunner("a", 0.02, clock)], timer=clock
    )
    assert [p.name for p in write_plots(single_record, tmp_path / "one")] == [LATENCY_PLOT]  # no baseline to compare


# ------------------------------------------------------------------------------------------- CLI, real models


@pytest.fixture(scope="module")
def smoke_onnx(trained_smoke, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-export") / "smoke"
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", out, "--latency-runs", 0)
    assert result.exit_code == 0, result.output
    return out / "model.onnx"


@pytest.mark.slow
def test_bench_cli_json_markdown_and_plots(trained_smoke, smoke_onnx, tmp_path):
    out_json, out_md, plots = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "plots"
    result = run(
        "bench",
        "-m",
        trained_smoke,
        "-m",
        smoke_onnx,
        "--batch-sizes",
        "1,2",
        "--text-lengths",
        "4,8",
        "--pad-to",
        16,
        "--runs",
        3,
        "--warmup",
        1,
        "--threads",
        1,
        "--json",
        out_json,
        "--md",
        out_md,
        "--plots",
        plots,
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out_json.read_text())
    assert payload["schema"] == BENCH_SCHEMA
    assert BenchRecord.model_validate(payload).to_json() == payload  # the file reads back as the typed record
    assert set(payload) >= {"created", "machine", "settings", "models", "results", "failed", "notes", "plots"}
    machine = payload["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["versions"]["torch"]
    assert machine["versions"]["onnxruntime"]
    assert payload["settings"] == {
        "batch_sizes": [1, 2],
        "text_lengths": [4, 8],
        "runs": 3,
        "warmup": 1,
        "pad_to": 16,
        "seed": 0,
        "threads": 1,
    }
    backends = [m["backend"] for m in payload["models"]]
    assert backends == ["pytorch", "onnxruntime"]
    assert payload["models"][1]["providers"] == ["CPUExecutionProvider"]
    assert payload["models"][1]["intra_op_threads"] == 1
    rows = payload["results"]
    assert len(rows) == 2 * 2 * 2 * 2 and payload["failed"] == 0
    for row in rows:
        assert set(row) >= {
            "model",
            "label",
            "batch",
            "text",
            "padded_to",
            "seq_len",
            "runs",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "mean_ms",
            "min_ms",
            "pairs_per_s",
            "memory",
            "speedup_vs_first",
            "error",
        }
        assert row["runs"] == 3 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["pairs_per_s"] > 0 and row["memory"]["kind"] == MEMORY_CPU
    assert payload["plots"] == [f"plots/{LATENCY_PLOT}", f"plots/{SPEEDUP_PLOT}"]  # relative to the JSON file
    for name in (LATENCY_PLOT, SPEEDUP_PLOT):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC
    markdown = out_md.read_text()
    assert "| model | backend |" in markdown and f"](plots/{LATENCY_PLOT})" in markdown
    assert machine["cpu"] in markdown
    assert "p50 ms" in result.output and machine["cpu"] in result.output


def test_bench_default_lengths_run_up_to_the_model_positions(trained_smoke):
    # default text lengths are 8,32,64 (design.md's matrix); the smoke tokenizer stops at 32 tokens but the model
    # has 64 text positions, so 64 is timed as a shape, with a note
    result = run("bench", "-m", trained_smoke, "--batch-sizes", "1", "--runs", 1, "--warmup", 0, "--json", "-")
    assert result.exit_code == 0, result.output
    payload = stdout_json(result)
    assert payload["settings"]["text_lengths"] == [8, 32, 64]
    assert payload["models"][0]["max_text_len"] == 32 and payload["models"][0]["max_positions"] == 64
    assert any("lengths [64] are timed as shapes only" in note for note in payload["notes"])


def test_bench_cli_lengths_beyond_one_model_are_skipped_for_it(trained_smoke, smoke_onnx, tmp_path):
    """The run_gpu.sh case on real models: the checkpoint runs 64 text positions, a copy of its bundle whose
    manifest says 16 (an ONNX Runtime row's limit comes from `max_text_positions`) skips 32 and the padding to 48
    while the checkpoint times them; exit 0, nothing failed."""
    import shutil

    short = tmp_path / "short"
    shutil.copytree(smoke_onnx.parent, short)
    manifest = json.loads((short / "manifest.json").read_text())
    manifest["max_text_positions"] = 16
    (short / "manifest.json").write_text(json.dumps(manifest))
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    result = run(
        "bench", "-m", trained_smoke, "-m", short / "model.onnx", "--batch-sizes", "1", "--text-lengths", "8,32",
        "--pad-to", 48, "--runs", 2, "--warmup", 0, "--threads", 1, "--json", out_json, "--md", out_md,
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out_json.read_text())
    assert [m["max_positions"] for m in payload["models"]] == [64, 16]
    assert payload["failed"] == 0 and payload["skipped"] == 3
    by_shape = {(r["model"], r["text"], r["padded_to"]): r for r in payload["results"]}
    assert all(by_shape[(0, t, p)]["p50_ms"] > 0 for t, p in ((8, None), (8, 48), (32, None), (32, 48)))
    assert by_shape[(1, 8, None)]["p50_ms"] > 0 and by_shape[(1, 8, None)]["speedup_vs_first"] > 0
    assert by_shape[(1, 32, None)]["skipped"] == "32 text tokens: this model runs at most 16 text tokens"
    assert by_shape[(1, 8, 48)]["skipped"] == "padded to 48 tokens: this model runs at most 16 text tokens"
    assert "skipped: 32 text tokens: this model runs at most 16 text tokens" in out_md.read_text()
    assert "3 of 8 cases skipped" in result.output


def test_bench_cli_exit_code_stays_0_when_a_backend_is_skipped(trained_smoke, monkeypatch):
    import fbcompress.benchmark.matrix as matrix
    from fbcompress.core.errors import BackendUnavailable

    real = matrix.open_runner

    def opener(target: Target):
        if target.label == "b":
            raise BackendUnavailable("ONNX Runtime could not start TensorrtExecutionProvider for x (it fell back to "
                                     "CUDAExecutionProvider)")
        return real(target)

    monkeypatch.setattr(matrix, "open_runner", opener)
    result = run(
        "bench", "-m", trained_smoke, "-m", trained_smoke, "--label", "a", "--label", "b", "--batch-sizes", "1",
        "--text-lengths", "8", "--runs", 1, "--warmup", 0, "--json", "-",
    )
    assert result.exit_code == 0, result.output
    payload = stdout_json(result)
    assert payload["failed"] == 0 and [m["skipped"] for m in payload["models"]][0] is None
    assert payload["models"][1]["skipped"].startswith("ONNX Runtime could not start TensorrtExecutionProvider")
    assert [r["label"] for r in payload["results"]] == ["a"]
    assert "skipped: ONNX Runtime could not start" in result.output  # the table (stderr with --json -)


def test_an_ort_provider_that_falls_back_is_skipped_not_timed(smoke_onnx, monkeypatch):
    """onnxruntime-gpu lists TensorrtExecutionProvider even without libnvinfer and then silently runs another
    provider. Reproduced on CPU: the provider list claims TensorRT, the session falls back to CPU; that model is
    skipped with the reason and the CPU model beside it is timed."""
    import fbcompress.runtime.onnxruntime as ort_scorer
    from fbcompress.benchmark.report import format_report

    real = ort_scorer.providers_for
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def claims_tensorrt(device: str, available: list[str] | None = None, **options: Any) -> list[Any]:
        return real(device, listed if device != "cpu" else available, **options)

    monkeypatch.setattr(ort_scorer, "providers_for", claims_tensorrt)
    targets = [
        Target(smoke_onnx, "onnxruntime", "cpu", threads=1, label="cpu"),
        Target(smoke_onnx, "onnxruntime-tensorrt", "cuda", dtype="fp16", label="trt"),
    ]
    result_record = run_bench(targets, BenchSettings((1,), (8,), runs=2, warmup=0))
    result = result_record.to_json()
    assert result["failed"] == 0 and [r["label"] for r in result["results"]] == ["cpu"]
    reason = result["models"][1]["skipped"]
    assert reason.startswith("ONNX Runtime could not start TensorrtExecutionProvider")
    assert reason.endswith("(it fell back to CPUExecutionProvider)")
    assert f"skipped: {reason}" in format_table(result_record) and f"skipped: {reason}" in format_report(result_record)


def test_ort_tensorrt_provider_options_from_the_bundle_manifest(tmp_path):
    """ORT's TensorRT provider gets the recipe's profiles (`trt_profile_*_shapes`: every input of profile 0, then
    every input again for profile 1), the precision (`trt_fp16_enable`, the string ORT's Python binding parses)
    and engine + timing caches inside the bundle, so its row is a cached FP16 engine of the same profiles as the
    bundle's own `.plan`, not an FP32 engine rebuilt during warm-up."""
    from fbcompress.bundle.store import Bundle
    from fbcompress.core.errors import BackendUnavailable, FbError
    from fbcompress.runtime.onnxruntime import bundle_tensorrt_options, providers_for, tensorrt_provider_options

    manifest = {
        "format": "fbcompress-bundle",
        "files": {},
        "patch_spec": SPEC.to_dict(),
        "shape_profiles": [
            {"name": "online", "batch": [1, 1, 8], "text": [1, 16, 48]},
            {"name": "offline", "batch": [1, 32, 128], "text": [1, 32, 48]},
        ],
    }
    options = bundle_tensorrt_options(Bundle(tmp_path, manifest), "fp16", device_id=1)
    cache = tmp_path / "ort-trt-cache"
    assert options == {
        "device_id": 1,
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache / "fp16"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x48,"
        "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1,patches:1x64x48",
        "trt_profile_opt_shapes": "input_ids:1x16,attention_mask:1x16,token_type_ids:1x16,patches:1x64x48,"
        "input_ids:32x32,attention_mask:32x32,token_type_ids:32x32,patches:32x64x48",
        "trt_profile_max_shapes": "input_ids:8x48,attention_mask:8x48,token_type_ids:8x48,patches:8x64x48,"
        "input_ids:128x48,attention_mask:128x48,token_type_ids:128x48,patches:128x64x48",
    }
    fp32 = tensorrt_provider_options([], SPEC, cache)
    assert fp32["trt_fp16_enable"] == "False" and fp32["trt_engine_cache_path"] == str(cache / "fp32")
    assert not any(key.startswith("trt_profile") for key in fp32)  # no profiles recorded: ORT picks them
    with pytest.raises(FbError, match="fp32 or fp16"):
        tensorrt_provider_options([], SPEC, cache, "int8")
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("tensorrt:1", gpu, tensorrt_options=options) == [
        ("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider",
    ]
    with pytest.raises(BackendUnavailable, match="no TensorrtExecutionProvider"):
        providers_for("tensorrt", ["CPUExecutionProvider"])


def test_ort_tensorrt_runner_records_what_it_built(smoke_onnx, monkeypatch):
    """The JSON says what the ort-trt row timed: the provider options (profiles, fp16, caches), its precision, and
    a text limit that is the profiles' max (beyond it ORT would build another engine). Faked on CPU: the session
    is a CPU one that reports the TensorRT provider."""
    import fbcompress.runtime.onnxruntime as ort_scorer
    from fbcompress.benchmark.runners import open_runner
    from fbcompress.bundle.store import Bundle

    real_open = ort_scorer.OrtScorer.open.__func__
    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    class ReportsTensorrt:
        def __init__(self, session):
            self._session = session

        def get_providers(self):
            return trt

        def __getattr__(self, name):
            return getattr(self._session, name)

    def fake_open(cls, path, device="cpu", threads=None, trt_precision="fp32"):
        scorer = real_open(cls, path, "cpu", threads)
        scorer.tensorrt_options = ort_scorer.bundle_tensorrt_options(Bundle.open(smoke_onnx.parent), trt_precision)
        scorer.session = ReportsTensorrt(scorer.session)
        return scorer

    monkeypatch.setattr(ort_scorer.OrtScorer, "open", classmethod(fake_open))
    monkeypatch.setattr(ort_scorer, "providers_for", lambda device, available=None, tensorrt_options=None: (
        ["CPUExecutionProvider"] if device == "cpu" else [("TensorrtExecutionProvider", {}), "CPUExecutionProvider"]
    ))
    runner = open_runner(Target(smoke_onnx, "onnxruntime-tensorrt", "cuda", dtype="fp16"))
    options = runner.info["provider_options"]
    assert options["trt_fp16_enable"] == "True" and runner.info["precision"] == "fp16"
    assert options["trt_engine_cache_path"] == str(smoke_onnx.parent / "ort-trt-cache" / "fp16")
    assert options["trt_profile_max_shapes"].startswith("input_ids:8x32,")  # smoke recipe: batch <= 8, text <= 32
    assert runner.max_positions == 32 and runner.label.endswith("[ort-trt fp16]")


def test_bench_help_has_examples():
    result = run("bench", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "fbcompress bench -m" in result.output
    for option in (
        "--batch-sizes",
        "--text-lengths",
        "--pad-to",
        "--runs",
        "--warmup",
        "--backend",
        "--compile",
        "--cuda-graphs",
        "--dtype",
        "--threads",
        "--json",
        "--plots",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--text-lengths", "65,80"], ("--text-lengths 65,80", "no model can run any of them", "at most 64")),
        (["--batch-sizes", "1,x"], ("--batch-sizes", "comma-separated")),
        (["--batch-sizes", "0"], ("--batch-sizes", "at least 1")),
        (["--dtype", "fp16"], ("fp16 needs --device cuda",)),
        (["--compile"], ("--compile", "cuda only")),
        (["--cuda-graphs"], ("--cuda-graphs", "cuda only")),
        (["--backend", "tensorrt"], ("--backend tensorrt cannot run",)),
        (["--device", "gpu"], ("--device gpu",)),
        (["--label", "a", "--label", "b"], ("--label given 2 times",)),
    ],
)
def test_bench_bad_input_is_one_line_exit_2(trained_smoke, extra, fragments):
    args = ["bench", "-m", trained_smoke, "--runs", 1, "--warmup", 0]
    for option, default in (("--batch-sizes", "1"), ("--text-lengths", "8")):
        if option not in extra:
            args += [option, default]
    assert_one_line_error(run(*args, *extra), *fragments)


def test_bench_missing_model_and_foreign_dir(tmp_path):
    assert_one_line_error(run("bench", "-m", tmp_path / "nope"), "model not found")
    assert_one_line_error(run("bench", "-m", tmp_path), "neither a checkpoint dir")
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert_one_line_error(run("bench", "-m", tmp_path / "weights.bin"), "unsupported model form")


def test_bench_onnx_needs_its_bundle(smoke_onnx, tmp_path):
    import shutil

    lone = tmp_path / "lone.onnx"
    shutil.copy(smoke_onnx, lone)
    assert_one_line_error(run("bench", "-m", lone, "--runs", 1), "not part of an fbcompress export bundle")
    assert_one_line_error(
        run("bench", "-m", smoke_onnx, "--dtype", "bf16", "--runs", 1), "apply to PyTorch checkpoints"
    )


# --------------------------------------------------------------------------------------------- GPU backends


def bench_json(model: Path, *flags: Any) -> dict:
    """`fbcompress bench` on one model with few runs; the JSON it wrote to stdout (asserting exit 0)."""
    result = run("bench", "-m", model, *flags, "--runs", 5, "--warmup", 3, "--json", "-")
    assert result.exit_code == 0, result.output
    return stdout_json(result)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@CUDA
@pytest.mark.parametrize(
    ("flags", "mode", "precision"),
    [
        ([], "eager", "fp32"),
        (["--dtype", "fp16"], "eager", "fp16"),
        (["--dtype", "bf16"], "eager", "bf16"),
        (["--dtype", "fp16", "--cuda-graphs"], "cuda-graphs", "fp16"),
        (["--compile"], "compile", "fp32"),
        (["--dtype", "fp16", "--compile", "--cuda-graphs"], "compile+cuda-graphs", "fp16"),
    ],
)
def test_bench_pytorch_on_cuda(trained_smoke, flags, mode, precision):
    payload = bench_json(trained_smoke, "--device", "cuda", *flags, "--batch-sizes", "1,4", "--text-lengths", "8,16")
    model = payload["models"][0]
    assert (model["mode"], model["precision"], model["device"]) == (mode, precision, "cuda")
    assert payload["machine"]["gpu"]["gpu"] and payload["failed"] == 0
    for row in payload["results"]:
        assert row["p50_ms"] > 0 and row["memory"]["kind"] == "cuda-torch-allocator" and row["memory"]["peak_mib"] > 0


@CUDA
def test_bench_onnxruntime_cuda_provider(smoke_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with CUDAExecutionProvider (this onnxruntime is CPU-only)")
    payload = bench_json(smoke_onnx, "--device", "cuda", "--batch-sizes", "1", "--text-lengths", "8")
    assert payload["models"][0]["backend"] == "onnxruntime-cuda"
    assert payload["models"][0]["providers"][0] == "CUDAExecutionProvider"
