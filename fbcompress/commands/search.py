"""The search path's commands: `index build`, `search` and `eval-retrieval`."""

from __future__ import annotations

from pathlib import Path

import click

from fbcompress.commands.group import FbGroup
from fbcompress.commands.options import (
    data_option,
    echo_log,
    json_option,
    out_option,
    progress_wanted,
    recipe_option,
    set_option,
    split_option,
)
from fbcompress.core.errors import FbError

INDEX_HELP = "index dir made by `fbcompress index build`"
QUERY_MODEL_HELP = ("query encoder: a retriever checkpoint (default: the index's own model), a cross-encoder "
                    "checkpoint (zero-shot), or a query_encoder .onnx")


def _sections(recipe: str | None, overrides: tuple[str, ...], model: Path | None):
    """The retriever and index sections: --recipe, else the model's stored recipe, else the defaults."""
    from fbcompress.recipes import resolve_section

    models = [model] if model is not None else []
    retriever, _ = resolve_section("retriever", recipe, overrides, models)
    index, _ = resolve_section("index", recipe, overrides, models)
    return retriever, index


@click.group("index", cls=FbGroup)
def index_group() -> None:
    """Offline product embeddings and their FAISS index."""


@index_group.command("build")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(path_type=Path),
              help="retriever checkpoint (or a cross-encoder checkpoint: the zero-shot baseline)")
@data_option()
@out_option("index dir to write")
@recipe_option()
@click.option("--batch-size", type=click.IntRange(min=1), help="products per forward pass (default: recipe "
                                                                "retriever.encode_batch_size)")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--force", is_flag=True, help="replace an index already at --out")
@set_option("--set index.kind=ivfpq --set index.exact_below=1000")
@json_option("index manifest")
def index_build_cmd(model_path, data_dir, out, recipe, batch_size, device, force, overrides, json_path) -> None:
    """Encode every product of the catalogue (title + image) and build the FAISS index.

    Resumable (an interrupted run keeps its finished shards) and rank-sharded under torchrun.

    \b
    Examples:
      fbcompress index build --model runs/qs/retriever --data runs/qs/data --out runs/qs/index
      fbcompress index build --model runs/qs/teacher --data runs/qs/data --out runs/qs/index-zero-shot
      torchrun --nproc-per-node 8 -m fbcompress index build --model R --data D --out INDEX
    """
    from fbcompress.core.artifacts import write_json_output
    from fbcompress.search.build import IndexOptions, build_index

    retriever, index = _sections(recipe, overrides, model_path)
    summary = build_index(IndexOptions(model_path, data_dir, out, index, retriever,
                                       batch_size or retriever.encode_batch_size, device, force, progress_wanted(),
                                       echo_log))
    if summary.manifest:
        echo_log(summary.line())
        if json_path:
            write_json_output(json_path, summary.manifest)


def _searcher(index_dir: Path, model: Path | None, backend: str, device: str, recipe, overrides, exact: bool,
              rerank: Path | None, data: Path | None):
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher, open_reranker
    from fbcompress.search.store import open_index

    index = open_index(index_dir, faiss_on_gpus=device.startswith("cuda"))
    model = model if model is not None else Path(index.manifest["model"]["path"])
    retriever, _ = _sections(recipe, overrides, model if model.is_dir() else None)
    encoder = open_query_encoder(model, retriever, device, backend)
    reranker = open_reranker(rerank, index, data, device) if rerank is not None else None
    return Searcher(encoder, index, reranker, exact)


def _query_options(function):
    for option in reversed((
        click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help=INDEX_HELP),
        click.option("--model", "-m", "model_path", type=click.Path(path_type=Path), help=QUERY_MODEL_HELP),
        click.option("--backend", type=click.Choice(["auto", "pytorch", "onnxruntime"]), default="auto",
                     show_default=True, help="onnxruntime on a checkpoint exports its query tower first"),
        click.option("--rerank", type=click.Path(path_type=Path), metavar="MODEL",
                     help="cross-encoder (bundle, .onnx or checkpoint) that re-ranks the top products"),
        click.option("--data", "data_dir", type=click.Path(path_type=Path),
                     help="dataset dir of the products' images for --rerank (default: the one the index records)"),
        click.option("--exact", is_flag=True, help="exact inner product over the stored embeddings, not FAISS"),
        click.option("--device", default="cpu", show_default=True, help="cpu | cuda"),
        recipe_option(),
        set_option("--set retriever.max_query_len=12", "a recipe value (zero-shot tower settings)"),
    )):
        function = option(function)
    return function


@click.command("search")
@_query_options
@click.option("--query", "-q", "queries", multiple=True,
              help="what a shopper typed (repeatable); without it, one query per line from standard input")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="products to show")
@click.option("--rerank-k", default=50, show_default=True, type=click.IntRange(min=1),
              help="with --rerank: how many of the nearest products the cross-encoder re-orders")
@json_option("hits")
def search_cmd(index_dir, model_path, backend, rerank, data_dir, exact, device, recipe, overrides, queries, k, rerank_k,
               json_path) -> None:
    """Search the catalogue: the top products (id, title, score) for each query, each stage timed.

    Without --query it reads queries from standard input, one per line, and answers each as it comes (the models
    load once).

    \b
    Examples:
      fbcompress search --index runs/qs/index --query "red floral maxi dress"
      fbcompress search --index runs/qs/index -q "leather jacket zip" -k 5 --rerank exported/quickstart
      fbcompress search --index runs/qs/index        # then type queries, one per line (Ctrl-D ends)
    """
    import sys

    from fbcompress.core.artifacts import write_json_output

    searcher = _searcher(index_dir, model_path, backend, device, recipe, overrides, exact, rerank, data_dir)
    if not queries and sys.stdin.isatty():
        click.echo("type a query and press Enter (Ctrl-D ends)", err=True)
    results = []
    for query in queries or (line.strip() for line in sys.stdin if line.strip()):
        hits, timing = searcher.search(query, k, rerank_k if rerank is not None else 0)
        stages = f"encode {timing.encode * 1e3:.1f} ms, search {timing.search * 1e3:.2f} ms" + (
            f", image tokens {timing.fetch * 1e3:.1f} ms, re-rank {timing.rerank * 1e3:.1f} ms"
            if rerank is not None else "")
        click.echo(f"{query!r} ({stages})", err=json_path == "-")
        for rank, hit in enumerate(hits, 1):
            extra = f"  match {hit.rerank_score:.3f}" if hit.rerank_score is not None else ""
            click.echo(f"{rank:>3}. {hit.product_id}  {hit.score:.4f}{extra}  {hit.title}", err=json_path == "-")
        results.append({"query": query, "hits": [vars(h) for h in hits], "ms": {
            "encode": timing.encode * 1e3, "search": timing.search * 1e3, "fetch": timing.fetch * 1e3,
            "rerank": timing.rerank * 1e3}})
    if json_path:
        write_json_output(json_path, results)


@click.command("eval-retrieval")
@_query_options
@split_option()
@click.option("--rerank-k", default=100, show_default=True, type=click.IntRange(min=1),
              help="with --rerank: the top products of the first stage that the cross-encoder re-orders")
@click.option("--max-queries", type=click.IntRange(min=1), help="score only the first N queries")
@click.option("--markdown", type=click.Path(path_type=Path), help="also write the table as Markdown")
@json_option()
def eval_retrieval_cmd(index_dir, model_path, backend, rerank, data_dir, exact, device, recipe, overrides, split,
                       rerank_k, max_queries, markdown, json_path) -> None:
    """Recall@1/5/10/100, nDCG@10 and MRR of a split's search queries over the whole catalogue; with --rerank, of
    the two-stage system too, with each stage's latency per query.

    \b
    Examples:
      fbcompress eval-retrieval --index runs/qs/index --data runs/qs/data --json retrieval.json
      fbcompress eval-retrieval --index runs/qs/index --data runs/qs/data --rerank exported/quickstart
      fbcompress eval-retrieval --index runs/qs/index --data runs/qs/data --backend onnxruntime
    """
    from fbcompress.core.artifacts import atomic_write_bytes, write_json_output
    from fbcompress.data.dataset_dir import DatasetDir
    from fbcompress.search.evaluate import evaluate_retrieval, format_retrieval

    if data_dir is None:
        raise FbError("eval-retrieval needs --data: the dataset dir whose search queries are scored")
    dataset = DatasetDir.open(data_dir)
    searcher = _searcher(index_dir, model_path, backend, device, recipe, overrides, exact, rerank, data_dir)
    result = evaluate_retrieval(searcher, dataset, split, rerank_k, max_queries, progress_wanted())
    table = format_retrieval(result)
    click.echo(table, err=json_path == "-")
    if markdown:
        atomic_write_bytes(markdown, (table + "\n").encode())
    if json_path:
        write_json_output(json_path, result)
