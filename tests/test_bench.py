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
from fbcompress.benchmark.report import LATENCY_PLOT, SPEEDUP_PLOT, format_table, write_plots
from fbcompress.benchmark.runners import MEMORY_CPU, Target
from fbcompress.latency import LatencyStats, throughput, time_callable, time_interleaved
from fbcompress.model import PatchSpec

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
    assert throughput(LatencyStats(1, 0.0, 0.0, 0.0, 0.0, 0.0), 8) is None


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
    from fbcompress.latency import machine_info, matmul_gflops

    assert 0.1 < matmul_gflops(size=128, seconds=0.05) < 1e5
    info = machine_info()
    assert info["fp32_matmul_gflops"] > 0 and info["torch_threads"] >= 1


def test_measure_reports_stats_throughput_and_memory():
    clock = FakeClock()
    runner = FakeRunner("m", 0.01, clock)
    from fbcompress.latency import example_inputs

    (row,) = measure_shape([runner], [example_inputs(SPEC, 4, 16)], runs=5, warmup=1, timer=clock)
    expected_ms = 0.01 * (16 + 64) * 4
    assert row["p50_ms"] == pytest.approx(expected_ms) and row["runs"] == 5
    assert row["pairs_per_s"] == pytest.approx(4 / (expected_ms / 1000))
    assert row["memory"]["kind"] == MEMORY_CPU and row["memory"]["rss_mib"] > 0


def test_run_bench_speedups_vsl_savings_and_schema():
    clock = FakeClock()
    teacher, student = FakeRunner("teacher", 0.02, clock), FakeRunner("student", 0.005, clock)
    settings = BenchSettings(batch_sizes=(1, 4), text_lengths=(8, 16), runs=3, warmup=1, pad_to=32)
    result = run_bench([], settings, runners=[teacher, student], timer=clock)
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
    table = format_table(result)
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
    result = run_bench([], BenchSettings((1,), (8,), runs=25, warmup=2), runners=runners, timer=clock)
    assert order[:4] == ["a", "a", "b", "b"]  # each warmed up alone first
    timed = order[4:]
    assert timed == ["a"] * 10 + ["b"] * 10 + ["a"] * 10 + ["b"] * 10 + ["a"] * 5 + ["b"] * 5
    a, b = result["results"]
    assert (a["label"], b["label"]) == ("a", "b") and b["p50_ms"] == pytest.approx(2 * a["p50_ms"])


def test_run_bench_refuses_lengths_a_model_cannot_run_or_clips_defaults():
    from fbcompress.errors import FbError

    clock = FakeClock()
    short = FakeRunner("short", 0.01, clock, max_text_len=8, max_positions=16)
    with pytest.raises(FbError, match="runs at most 16 text tokens"):
        run_bench([], BenchSettings((1,), (8, 32), runs=1, warmup=0), runners=[short], timer=clock)
    clipped = run_bench(
        [], BenchSettings((1,), (8, 32), runs=1, warmup=0), clip_lengths=True, runners=[short], timer=clock
    )
    assert clipped["settings"]["text_lengths"] == [8]
    assert any("[32] skipped" in note for note in clipped["notes"])
    with pytest.raises(FbError, match="--pad-to 64"):
        run_bench([], BenchSettings((1,), (8,), runs=1, warmup=0, pad_to=64), runners=[short], timer=clock)
    # longer than the tokenizer emits but within the positions: timed, with a note saying no request is that long
    beyond = run_bench([], BenchSettings((1,), (8, 16), runs=1, warmup=0), runners=[short], timer=clock)
    assert beyond["failed"] == 0 and any("lengths [16] are timed as shapes only" in n for n in beyond["notes"])


def test_a_failing_case_is_recorded_and_the_matrix_goes_on():
    clock = FakeClock()

    class Broken(FakeRunner):
        def prepare(self, inputs):
            if inputs["input_ids"].shape[0] > 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
            return super().prepare(inputs)

    result = run_bench(
        [], BenchSettings((1, 2), (8,), runs=2, warmup=0), runners=[Broken("broken", 0.01, clock)], timer=clock
    )
    ok, bad = result["results"]
    assert ok["error"] is None and result["failed"] == 1
    assert bad["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "error: RuntimeError" in format_table(result)


def test_plots_are_pngs(tmp_path):
    clock = FakeClock()
    result = run_bench(
        [],
        BenchSettings((1, 4), (8, 16), runs=2, warmup=0, pad_to=32),
        runners=[FakeRunner("a", 0.02, clock), FakeRunner("b", 0.01, clock)],
        timer=clock,
    )
    written = write_plots(result, tmp_path / "plots")
    assert [p.name for p in written] == [LATENCY_PLOT, SPEEDUP_PLOT]
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
    single = run_bench(
        [], BenchSettings((1,), (8,), runs=1, warmup=0), runners=[FakeRunner("a", 0.02, clock)], timer=clock
    )
    assert [p.name for p in write_plots(single, tmp_path / "one")] == [LATENCY_PLOT]  # no baseline to compare


# ------------------------------------------------------------------------------------------- CLI, real models


@pytest.fixture(scope="module")
def smoke_onnx(trained_smoke, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-export") / "smoke"
    result = run("export", "--model", trained_smoke, "--target", "onnx", "--out", out, "--latency-runs", 0)
    assert result.exit_code == 0, result.output
    return out / "model.onnx"


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
        (["--text-lengths", "8,65"], ("--text-lengths 65", "at most 64 text tokens")),
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
