"""`fbcompress bench --index`: the latency every search pays online, stage by stage.

Two tables, measured side by side in one process (the machine's speed drifts between runs):

* **Query encoders**: each `--model` (a retriever's tower in PyTorch, a query encoder's ONNX or INT8 file) at each
  batch size and real query length, and the same queries padded to `--pad-to` (what a fixed-length encoder pays):
  p50/p90/p99 ms over `runs` calls after warm-up, models timed in alternating blocks. A length L case is a real query
  of the dataset that is L wordpieces long ([CLS]/[SEP] included), repeated to the batch size.
* **End to end**: one search at a time, as a shopper's request arrives: encode (batch 1) → the index's nearest
  products → optionally re-rank the top K with the cross-encoder (K from `--rerank-k`; the candidates' image tokens
  read first, timed apart: PNG decoding here, a feature-store lookup in serving), over the split's real queries in
  turn; p50 of each stage and of the whole, and each stage's share of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbcompress.core.errors import FbError
from fbcompress.evaluation.latency import machine_info, machine_line, summarise, time_interleaved

SCHEMA = "fbcompress-bench-search/1"


@dataclass
class SearchBenchSettings:
    batch_sizes: tuple[int, ...] = (1, 8)
    lengths: tuple[int, ...] = (4, 6, 8)
    pad_to: int | None = 16
    rerank_ks: tuple[int, ...] = (20, 50, 100)
    runs: int = 100
    warmup: int = 10
    split: str = "test"
    top_k: int = 10


@dataclass
class SearchBench:
    machine: dict[str, Any]
    settings: dict[str, Any]
    index: dict[str, Any]
    encoders: list[dict[str, Any]] = field(default_factory=list)
    end_to_end: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "machine": self.machine, "settings": self.settings, "index": self.index,
                "encoders": self.encoders, "end_to_end": self.end_to_end, "notes": self.notes}


def queries_of_lengths(texts: list[str], tokenizer: Any, lengths: tuple[int, ...], max_len: int
                       ) -> dict[int, list[int]]:
    """One real query per asked length (the first of the split that long); a length no query has is left out."""
    from fbcompress.runtime.embedding import tokenize_queries

    out: dict[int, list[int]] = {}
    for ids in tokenize_queries(tokenizer, texts, max_len):
        if len(ids) in lengths and len(ids) not in out:
            out[len(ids)] = ids
    return out


def _feed(encoder: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() for k, v in inputs.items()} if "onnxruntime" in encoder.backend else inputs


def _padded(inputs: dict[str, Any], length: int) -> dict[str, Any]:
    import torch

    extra = length - inputs["input_ids"].shape[1]
    if extra <= 0:
        return inputs
    return {k: torch.nn.functional.pad(v, (0, extra), value=0) for k, v in inputs.items()}


def run_search_bench(models: list[Path], index_dir: Path, data_dir: Path, settings: SearchBenchSettings,
                     retriever: Any, rerank: Path | None = None, device: str = "cpu",
                     labels: list[str] | None = None) -> SearchBench:
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.data.search_sets import search_queries
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.runtime.embedding import query_inputs
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher, open_reranker
    from fbcompress.search.store import check_space, open_index

    index = open_index(index_dir)
    dataset = DatasetDir.open(data_dir)
    encoders = [open_query_encoder(path, retriever, device) for path in models]
    for encoder in encoders:
        check_space(index, encoder.tower.space or "", encoder.name)
    names = labels or [str(path) for path in models]
    tokenizer = load_tokenizer(encoders[0].tokenizer_dir)
    pad = int(tokenizer.pad_token_id)
    texts = [q.text for q in search_queries(dataset, settings.split)]
    max_len = min(e.tower.max_query_len for e in encoders)
    real = queries_of_lengths(texts, tokenizer, settings.lengths, max_len)
    bench = SearchBench(machine_info(), {**settings.__dict__, "rerank": str(rerank) if rerank else None},
                        {"path": str(index_dir), "kind": index.kind, "products": len(index.product_ids)})
    missing = sorted(set(settings.lengths) - set(real))
    if missing:
        bench.notes.append(f"no {settings.split} query is {missing} wordpieces long: those lengths are left out")
    for batch in settings.batch_sizes:
        for length, ids in sorted(real.items()):
            inputs = query_inputs([ids] * batch, pad)
            shapes = [("vsl", inputs)]
            if settings.pad_to and settings.pad_to > length:
                shapes.append((f"padded to {settings.pad_to}", _padded(inputs, settings.pad_to)))
            for how, shaped in shapes:
                calls = [lambda e=e, f=_feed(e, shaped): e.queries(f) for e in encoders]
                stats = time_interleaved(calls, runs=settings.runs, warmup=settings.warmup)
                for name, encoder, s in zip(names, encoders, stats, strict=True):
                    bench.encoders.append({"model": name, "backend": encoder.backend, "batch": batch, "length": length,
                                           "input": how, **s.to_dict()})
    reranker = open_reranker(rerank, index, data_dir, device) if rerank is not None else None
    searcher = Searcher(encoders[-1], index, reranker)
    for k in (0, *settings.rerank_ks) if reranker is not None else (0,):
        bench.end_to_end.append(_end_to_end(searcher, texts, k, settings, names[-1]))
    return bench


def _end_to_end(searcher: Any, texts: list[str], rerank_k: int, settings: SearchBenchSettings, name: str
                ) -> dict[str, Any]:
    """Stage times of `runs` searches over the split's queries in turn, after `warmup` untimed ones."""
    if not texts:
        raise FbError("no queries to search")
    for i in range(settings.warmup):
        searcher.search(texts[i % len(texts)], settings.top_k, rerank_k)
    stages: dict[str, list[float]] = {"encode": [], "search": [], "fetch": [], "rerank": [], "total": []}
    for i in range(settings.runs):
        _, timing = searcher.search(texts[i % len(texts)], settings.top_k, rerank_k)
        for stage in ("encode", "search", "fetch", "rerank"):
            stages[stage].append(getattr(timing, stage))
        stages["total"].append(timing.total)
    mean_total = float(np.mean(stages["total"]))
    out: dict[str, Any] = {"model": name, "rerank_k": rerank_k, "queries": min(settings.runs, len(texts))}
    for stage, values in stages.items():
        if stage in ("fetch", "rerank") and not rerank_k:
            continue
        stats = summarise(values)
        out[stage] = {"p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "mean_ms": stats.mean_ms}
        if stage != "total":
            out[stage]["share"] = float(np.mean(values)) / mean_total if mean_total > 0 else 0.0
    return out


def format_search_bench(bench: SearchBench) -> str:
    lines = [machine_line(bench.machine), "",
             f"Query encoders (real queries; ms; {bench.settings['runs']} runs, alternating blocks):", "",
             "| model | backend | batch | length | input | p50 | p90 | p99 |", "|---|---|---|---|---|---|---|---|"]
    for row in bench.encoders:
        lines.append(f"| {row['model']} | {row['backend']} | {row['batch']} | {row['length']} | {row['input']} | "
                     f"{row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['p99_ms']:.3f} |")
    index = bench.index
    lines += ["", f"End to end, one search at a time over {index['products']} products ({index['kind']} index), "
                  "p50 ms (share of the mean):", "",
              "| query encoder | re-rank top K | encode | ANN | image tokens | re-rank | total p50 | total p99 |",
              "|---|---|---|---|---|---|---|---|"]
    for row in bench.end_to_end:
        cells = [f"{row[s]['p50_ms']:.2f} ({row[s]['share']:.0%})" if s in row else "-"
                 for s in ("encode", "search", "fetch", "rerank")]
        lines.append(f"| {row['model']} | {row['rerank_k'] or 'none'} | {' | '.join(cells)} | "
                     f"{row['total']['p50_ms']:.2f} | {row['total']['p99_ms']:.2f} |")
    lines += [f"note: {n}" for n in bench.notes]
    return "\n".join(lines)
