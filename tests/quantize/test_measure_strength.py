"""The INT8 guard's measurements (`fbcompress/quantize/measure.py`) on the smoke bundle's real ONNX file: scoring a
file on a split, comparing two results, describing breaks, and the latency race between candidate files.

Fast tier: the smoke bundle is exported once per session; nothing here quantizes. Each test names the one-line
breaks of measure.py it was seen to fail on (mutation testing, bench/mutation.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fbcompress.core.errors import FbError
from fbcompress.data.dataset_dir import DatasetDir
from fbcompress.data.loader import SplitData
from fbcompress.modeling.backbone import load_tokenizer
from fbcompress.quantize import measure
from fbcompress.runtime.scoring import open_scorer


@pytest.fixture(scope="module")
def onnx_world(smoke_bundle, tiny_data):
    """The smoke bundle's FP32 file with what `measure.score` needs: spec, tokenizer, dataset, test split."""
    path = smoke_bundle / "model.onnx"
    reference = open_scorer(path)
    dataset = DatasetDir.open(tiny_data)
    data = SplitData(dataset, "test", load_tokenizer(reference.tokenizer_dir), reference.spec)
    return path, reference, dataset, data


def _score(onnx_world, **kwargs):
    path, reference, dataset, data = onnx_world
    return measure.score(path, "fp32", reference.spec, reference.tokenizer_dir, dataset, data, "test", **kwargs)


def test_score_runs_the_file_on_the_cpu_over_the_capped_query_set(onnx_world, capsys):
    """Breaks caught: `max_queries` not passed to evaluate (the whole query set scored), the device "cpu" changed,
    the default `progress=False` -> True (bars in a `quantize --json -` pipe)."""
    result = _score(onnx_world, max_queries=2)
    assert (result["model"], result["backend"], result["split"]) == ("fp32", "onnxruntime-cpu", "test")
    assert result["n_queries"] == 2 and 0.0 <= result["auc"] <= 1.0
    assert capsys.readouterr().err == ""


def test_score_shows_bars_when_asked(onnx_world, capsys):
    """Breaks caught: `progress` not passed to evaluate (or passed as None)."""
    _score(onnx_world, max_queries=1, progress=True)
    err = capsys.readouterr().err
    assert "pairs:" in err and "ITR:" in err, err


class _MatchedOnly:
    """The dataset seen through a filter that keeps only the matched pairs: a split with no AUC."""

    def __init__(self, dataset: DatasetDir):
        self._dataset = dataset
        self.root, self.meta = dataset.root, dataset.meta

    def eval_rows(self, kind: str, split: str) -> list[dict]:
        rows = self._dataset.eval_rows(kind, split)
        return [r for r in rows if r["label"] == 1] if kind == "pairs" else rows


def test_score_refuses_a_split_without_auc(onnx_world):
    """A split whose pairs are all matched has no AUC: the guard cannot judge on it. Breaks caught: the
    `not isinstance(...) or isnan(...)` test -> `and` (nan accepted), the message dropped."""
    path, reference, dataset, data = onnx_world
    with pytest.raises(FbError, match="gives no AUC"):
        measure.score(path, "fp32", reference.spec, reference.tokenizer_dir, _MatchedOnly(dataset), data, "test",
                      max_queries=1)


def _result(auc: float, split: str = "test", **ranks: float) -> dict:
    result = {"split": split, "accuracy": 0.75, "auc": auc}
    for key, value in ranks.items():
        mode, k = key.split("_r")
        result.setdefault(mode, {"r1": 0.0, "r5": 0.0, "r10": 0.0})[f"r{k}"] = value
    return result


def test_compare_judges_each_rank_direction_that_both_sides_measured():
    """Breaks caught: `key not in ref or key not in got` -> `and` (a direction only the reference has is read from
    the candidate: KeyError), `continue` -> `break` (with ITR missing, a TIR drop is never judged), the result's
    `split` (from the candidate) dropped or read from another key, `accuracy` renamed in the headline."""
    ref = _result(0.9, itr_r10=0.8, tir_r10=0.8)
    tir_only = {**_result(0.9, split="val", tir_r10=0.5)}
    verdict = measure.compare(ref, tir_only, max_auc_drop=0.01, max_rank10_drop=0.05)
    assert [b["metric"] for b in verdict["breaks"]] == ["TIR Rank@10"] and not verdict["passed"]
    assert verdict["split"] == "val"
    assert verdict["fp32"]["accuracy"] == 0.75 and verdict["deltas"]["accuracy"] == 0.0
    assert "itr_r10" not in verdict["deltas"] and verdict["deltas"]["tir_r10"] == pytest.approx(-0.3)
    # neither side measured ITR: TIR is still judged
    verdict = measure.compare(_result(0.9, tir_r10=0.8), tir_only, max_auc_drop=0.01, max_rank10_drop=0.05)
    assert [b["key"] for b in verdict["breaks"]] == ["quantize.max_rank10_drop"]


def test_describe_breaks_is_one_line_per_file():
    """Breaks caught: the `"; "` joiner between two breaks of one file."""
    breaks = measure.compare(_result(0.9, itr_r10=0.8), _result(0.8, itr_r10=0.6), 0.01, 0.05)["breaks"]
    assert measure.describe_breaks("model.int8.onnx", breaks) == (
        "model.int8.onnx: AUC 0.8000 vs FP32 0.9000 (drop 0.1000 > quantize.max_auc_drop 0.01); "
        "ITR Rank@10 0.6000 vs FP32 0.8000 (drop 0.2000 > quantize.max_rank10_drop 0.05)"
    )


def test_race_times_every_file_at_batch_one_in_alternating_blocks(onnx_world, tmp_path, monkeypatch):
    """`race` on two copies of the real file, its calls to ONNX Runtime watched through the timing loop. What it
    must do: run every file after 10 warm-up calls in alternating blocks of 10 (a slow spell of the machine then
    falls on both files), at batch 1 with real outputs, at each text length clipped to the model's positions, and
    report each case with its throughput. Breaks caught: no session options or providers (ORT defaults), feeds
    without the model's inputs, a call that does not run the session, warm-up/block sizes changed, the results
    zipped to the wrong names or lengths, the case fields renamed, pairs_per_s not 1000 / p50."""
    from fbcompress.evaluation import latency

    path, reference, *_ = onnx_world
    other = tmp_path / "copy.onnx"
    other.write_bytes(path.read_bytes())
    real = latency.time_interleaved
    order: list[int] = []
    shapes: set[tuple[int, ...]] = set()

    def watched(fns, **kwargs):
        def call(i, fn):
            order.append(i)
            outputs = fn()
            shapes.add(tuple(outputs[0].shape))

        return real([lambda i=i, fn=fn: call(i, fn) for i, fn in enumerate(fns)], **kwargs)

    monkeypatch.setattr(latency, "time_interleaved", watched)
    cases = measure.race({"a": path, "b": other}, reference.spec, max_positions=16, runs=25, texts=(8, 32))
    assert list(cases) == ["a", "b"]
    for name in cases:
        assert [(c["batch"], c["text"]) for c in cases[name]] == [(1, 8), (1, 16)]
        for case in cases[name]:
            assert case["runs"] == 25 and case["p50_ms"] > 0
            assert case["pairs_per_s"] == pytest.approx(1000.0 / case["p50_ms"])
    assert shapes == {(1, 2)}
    # per text length: 10 warm-up calls of a, then of b; then blocks of 10, 10, 5 alternating
    blocks = [0] * 10 + [1] * 10 + [0] * 10 + [1] * 10 + [0] * 10 + [1] * 10 + [0] * 5 + [1] * 5
    assert order == blocks * 2


def test_race_uses_onnx_runtime_cpu_with_full_graph_optimisation(onnx_world, monkeypatch):
    """The latency the report names is ORT's CPU provider with ORT_ENABLE_ALL (as served). Breaks caught: the
    provider list changed or dropped, the optimisation level not set."""
    import onnxruntime as ort

    path, reference, *_ = onnx_world
    real = ort.InferenceSession
    seen: list[tuple[str, list[str]]] = []

    def session(model, options, providers):
        seen.append((str(options.graph_optimization_level), list(providers)))
        return real(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    measure.race({"a": Path(path)}, reference.spec, max_positions=8, runs=1, texts=(8,))
    assert seen == [(str(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), ["CPUExecutionProvider"])]
