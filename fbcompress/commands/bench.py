"""`fbcompress bench`: latency, throughput and memory of any model forms, side by side on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fbcompress.benchmark import BACKENDS
from fbcompress.commands.options import device_option, json_option, progress_wanted
from fbcompress.core.errors import FbError

DEFAULT_TEXT_LENGTHS = (8, 32, 64)


def parse_int_list(text: str, option: str, minimum: int = 1) -> tuple[int, ...]:
    """'1,8,32' → (1, 8, 32): sorted, unique, each at least `minimum`; anything else is one clear line."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise FbError(f"{option} '{text}' is not a comma-separated list of integers (e.g. 1,8,32)") from None
    if not values or min(values) < minimum:
        raise FbError(f"{option} '{text}': give integers of at least {minimum}, e.g. 1,8,32")
    return tuple(sorted(set(values)))


@click.command("bench")
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="checkpoint dir, .onnx, .plan or bundle dir (repeatable; the first is the speed-up baseline)",
)
@device_option()
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    type=click.Choice(BACKENDS),
    help="auto follows the model form; onnxruntime-cuda/-tensorrt pick ORT's GPU execution providers",
)
@click.option("--batch-sizes", default="1,8,32", show_default=True, metavar="LIST", help="comma-separated")
@click.option(
    "--text-lengths",
    metavar="LIST",
    help="real text lengths in tokens [default: 8,32,64, skipping lengths a model cannot read]",
)
@click.option(
    "--pad-to",
    type=click.IntRange(min=2),
    metavar="N",
    help="also time every shorter text padded to N tokens: what VSL saves over fixed-length inputs",
)
@click.option(
    "--runs", default=100, show_default=True, type=click.IntRange(min=1), help="timed runs per case (design.md: >= 100)"
)
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="untimed runs first")
@click.option(
    "--dtype",
    default="fp32",
    show_default=True,
    type=click.Choice(["fp32", "fp16", "bf16"]),
    help="PyTorch checkpoints: weights/activations dtype (fp16 on CUDA only); --backend onnxruntime-tensorrt: "
    "the precision its TensorRT engine is built at (fp32/fp16)",
)
@click.option("--compile", "compile_", is_flag=True, help="PyTorch on CUDA: torch.compile (one static graph per shape)")
@click.option("--cuda-graphs", is_flag=True, help="PyTorch on CUDA: replay each shape as a CUDA graph")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    metavar="N",
    help="CPU threads for torch and ONNX Runtime intra-op [default: the libraries' choice]",
)
@click.option("--label", "labels", multiple=True, metavar="NAME", help="legend name per --model, in order")
@click.option("--seed", default=0, show_default=True, help="seed of the random example inputs")
@json_option()
@click.option(
    "--md",
    "md_path",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="also write a Markdown report (machine, table, plots)",
)
@click.option(
    "--plots",
    "--plot-dir",
    "plot_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="write latency_vs_text.png (+ speedup.png with 2+ models) here",
)
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="search path: -m are query encoders; time them on real queries (VSL and --pad-to, default 16) "
                   "and a whole search (encode + ANN + --rerank) stage by stage")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="with --index: the dataset of the queries")
@click.option("--rerank", type=click.Path(path_type=Path), metavar="MODEL",
              help="with --index: the cross-encoder that re-ranks the top K")
@click.option("--rerank-k", default="20,50,100", show_default=True, metavar="LIST",
              help="with --index and --rerank: how many products the cross-encoder re-ranks")
def bench_cmd(
    models: tuple[Path, ...],
    device: str,
    backend: str,
    batch_sizes: str,
    text_lengths: str | None,
    pad_to: int | None,
    runs: int,
    warmup: int,
    dtype: str,
    compile_: bool,
    cuda_graphs: bool,
    threads: int | None,
    labels: tuple[str, ...],
    seed: int,
    json_path: str | None,
    md_path: Path | None,
    plot_dir: Path | None,
    index_dir: Path | None,
    data_dir: Path | None,
    rerank: Path | None,
    rerank_k: str,
) -> None:
    """Latency (p50/p90/p99), throughput and memory of models at every batch size x real text length.

    Every model runs the same seeded inputs; text length T means T real tokens (VSL, no padding). The machine
    (CPU, cores, GPU, driver, library versions) is printed beside the table and stored in the JSON.

    \b
    Examples:
      fbcompress bench -m runs/qs/teacher -m runs/qs/student --batch-sizes 1,8 --text-lengths 8,16,32,48
      fbcompress bench -m runs/qs/student -m exported/qs/model.onnx --threads 2 --pad-to 48 \\
          --json bench.json --md bench.md --plots plots/
      fbcompress bench -m runs/qs/student --device cuda --dtype fp16 --cuda-graphs
      fbcompress bench -m exported/qs/model.fp16.plan -m exported/qs/model.onnx --backend auto --device cuda
      fbcompress bench --index runs/qs/index --data runs/qs/data -m runs/qs/retriever \
          -m exported/qs/search/query_encoder.int8.onnx --rerank exported/qs --json search-bench.json
    """
    import torch

    if index_dir is not None:
        if threads:
            torch.set_num_threads(threads)
        _bench_search(models, index_dir, data_dir, rerank, batch_sizes, text_lengths, pad_to, rerank_k, runs, warmup,
                      device, labels, json_path, md_path)
        return
    if data_dir is not None or rerank is not None:
        raise FbError("--data and --rerank belong to the search bench (--index)")

    from fbcompress.benchmark.matrix import BenchSettings, run_bench
    from fbcompress.benchmark.report import format_table, write_outputs
    from fbcompress.benchmark.runners import targets_from_options
    from fbcompress.evaluation.latency import machine_line

    if labels and len(labels) != len(models):
        raise FbError(f"--label given {len(labels)} times for {len(models)} --model: give one per model or none")
    batches = parse_int_list(batch_sizes, "--batch-sizes")
    lengths = parse_int_list(text_lengths, "--text-lengths", minimum=2) if text_lengths else DEFAULT_TEXT_LENGTHS
    if threads:
        torch.set_num_threads(threads)
    targets = targets_from_options(list(models), backend, device, dtype, compile_, cuda_graphs, threads)
    if labels:
        from dataclasses import replace

        targets = [replace(t, label=name) for t, name in zip(targets, labels, strict=True)]
    settings = BenchSettings(batches, lengths, runs, warmup, pad_to, seed, threads)
    result = run_bench(targets, settings, clip_lengths=text_lengths is None, progress=progress_wanted())
    to_err = json_path == "-"
    click.echo(machine_line(result.machine), err=to_err)
    click.echo(format_table(result), err=to_err)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    write_outputs(result, json_path, md_path, plot_dir)
    if result.skipped:  # a shape or backend this machine/model cannot run: said, not a failure (exit 0)
        click.echo(f"{result.skipped} of {len(result.results)} cases skipped (see the table)", err=True)
    if result.failed:
        click.echo(f"{result.failed} of {len(result.results)} cases failed (see the table)", err=True)
        sys.exit(1)


def _bench_search(models, index_dir, data_dir, rerank, batch_sizes, text_lengths, pad_to, rerank_k, runs, warmup,
                  device, labels, json_path, md_path) -> None:
    """`bench --index`: query encoders and whole searches (benchmark/search.py)."""
    from fbcompress.benchmark.search import SearchBenchSettings, format_search_bench, run_search_bench
    from fbcompress.core.artifacts import atomic_write_bytes, write_json_output
    from fbcompress.recipes import resolve_section

    if data_dir is None:
        raise FbError("the search bench (--index) needs --data: its queries are the dataset's")
    if labels and len(labels) != len(models):
        raise FbError(f"--label given {len(labels)} times for {len(models)} --model: give one per model or none")
    settings = SearchBenchSettings(
        batch_sizes=parse_int_list(batch_sizes if batch_sizes != "1,8,32" else "1,8", "--batch-sizes"),
        lengths=parse_int_list(text_lengths, "--text-lengths", minimum=3) if text_lengths else (4, 6, 8),
        pad_to=pad_to if pad_to is not None else 16, rerank_ks=parse_int_list(rerank_k, "--rerank-k"), runs=runs,
        warmup=warmup)
    retriever, _ = resolve_section("retriever", None, (), [m for m in models if m.is_dir()])
    bench = run_search_bench(list(models), index_dir, data_dir, settings, retriever, rerank, device,
                             list(labels) or None)
    table = format_search_bench(bench)
    click.echo(table, err=json_path == "-")
    if md_path:
        atomic_write_bytes(md_path, (f"# Search latency\n\n{table}\n").encode())
    if json_path:
        write_json_output(json_path, bench.to_json())
